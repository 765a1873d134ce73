"""One parquet file per input shard, written atomically, with stats and a completion marker
(`{shard}.parquet`, `{shard}_stats.json`, `{shard}.done` last), through the shard ledger
(ledger.OutputDir, ledger.ShardCommit)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from ..samples.sample import Sample
from ..schema import METADATA_KEY, output_schema
from ..spine.ledger import OutputDir, ShardCommit, rows_handed
from .rows import sample_row

__all__ = ["OutputDir", "ShardWriter"]


class ShardWriter:
    """Streams rows into the shard's parquet under a temporary name, in row groups; `commit` makes
    it visible with its stats and marker, `abort` drops it."""

    def __init__(self, out: OutputDir, shard: str, passes: list | None, provenance: dict,
                 row_group_rows: int = 1000, metadata: dict[bytes, bytes] | None = None,
                 keep=None):
        self.out = out
        self.shard = shard
        self.passes = passes  # passes.CaptionPass list; None: the paper's one pass
        self.provenance = provenance
        self.row_group_rows = row_group_rows
        self.keep = keep  # sample -> its kept row, for samples carried from an earlier output
        self.schema = output_schema(passes=passes).with_metadata(
            {METADATA_KEY: json.dumps(provenance, sort_keys=True).encode(), **(metadata or {})}
        )
        # Unique per process and writer: a second process can never rename this file into place.
        self.transaction = ShardCommit(out, shard)
        self.tmp_path = self.transaction.path_for("parquet")
        self._file = self.transaction.open("parquet", "wb")
        self._writer = pq.ParquetWriter(self._file, self.schema)
        self._pending: list[dict] = []

    def write(self, samples: list[Sample]) -> list[dict]:
        """Buffer the samples' rows (flushed a row group at a time); returns the rows."""
        rows = [self.keep(s) if s.carried is not None else sample_row(s, self.passes) for s in samples]
        self._pending.extend(rows)
        if len(self._pending) >= self.row_group_rows:
            self._flush()
        rows_handed(len(rows))  # RECAP_CRASH_AFTER_ROWS
        return rows

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_pylist(self._pending, schema=self.schema)
            self._writer.write_table(table)
            self._pending = []

    def commit(self, stats: dict) -> None:
        """Close the file, then the ledger's commit (the marker last)."""
        self._flush()
        self._writer.close()
        self.transaction.commit(stats, self.provenance)

    def abort(self) -> None:
        """Drop the partial file: a failed shard leaves nothing a reader could mistake for output."""
        try:
            self._writer.close()
        finally:
            self.transaction.abort()
