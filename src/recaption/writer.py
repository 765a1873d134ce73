"""One parquet file per input shard, written atomically, with stats and a completion marker.

Layout in OUTDIR for input shard `00042.tar`:
  00042.parquet        the rows (visible only once complete: written as .parquet.tmp, renamed)
  00042_stats.json     counts by status, throughput, tokens
  00042.done           completion marker, written last; holds the run's provenance
A shard is complete iff its marker exists. Anything else is redone on the next run.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from .atomic import temporary_name, write_json_atomic
from .rows import sample_row
from .sample import Sample
from .schema import METADATA_KEY, output_schema


class OutputDir:
    """Paths and markers of an output folder (local or any fsspec URL)."""

    def __init__(self, url: str):
        self.fs, self.root = url_to_fs(url)
        self.url = url

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def parquet(self, shard: str) -> str:
        return self.path(f"{shard}.parquet")

    def marker(self, shard: str) -> str:
        return self.path(f"{shard}.done")

    def stats(self, shard: str) -> str:
        return self.path(f"{shard}_stats.json")

    def is_done(self, shard: str) -> bool:
        return self.fs.exists(self.marker(shard))

    def done_provenance(self, shard: str) -> dict | None:
        try:
            with self.fs.open(self.marker(shard), "r") as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_json_atomic(self, path: str, payload: dict) -> None:
        write_json_atomic(self.fs, path, payload)

    def invalidate(self, shard: str) -> None:
        """Forget a shard's completion (before redoing it), marker first. Temporary files are
        not touched: they belong to whichever process is writing them (the folder's lock holder
        clears those left by crashed runs, see atomic.remove_stale_temporaries)."""
        for path in (self.marker(shard), self.stats(shard), self.parquet(shard)):
            if self.fs.exists(path):
                self.fs.rm(path)


class ShardWriter:
    """Streams rows into `{shard}.parquet.tmp` in row groups; `commit` makes it visible."""

    def __init__(self, out: OutputDir, shard: str, passes: list | None, provenance: dict,
                 row_group_rows: int = 1000, metadata: dict[bytes, bytes] | None = None):
        self.out = out
        self.shard = shard
        self.passes = passes  # passes.CaptionPass list; None: the paper's one pass
        self.provenance = provenance
        self.row_group_rows = row_group_rows
        self.schema = output_schema(passes=passes).with_metadata(
            {METADATA_KEY: json.dumps(provenance, sort_keys=True).encode(), **(metadata or {})}
        )
        # Unique per process and writer: a second process can never rename this file into place.
        self.tmp_path = temporary_name(out.parquet(shard))
        out.fs.makedirs(out.root, exist_ok=True)
        self._file = out.fs.open(self.tmp_path, "wb")
        self._writer = pq.ParquetWriter(self._file, self.schema)
        self._pending: list[dict] = []
        self.rows_written = 0

    def write(self, samples: list[Sample]) -> list[dict]:
        """Buffer the samples' rows (flushed a row group at a time); returns the rows."""
        rows = [sample_row(s, self.passes) for s in samples]
        self._pending.extend(rows)
        if len(self._pending) >= self.row_group_rows:
            self._flush()
        return rows

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_pylist(self._pending, schema=self.schema)
            self._writer.write_table(table)
            self.rows_written += len(self._pending)
            self._pending = []

    def commit(self, stats: dict) -> None:
        """Close the file, rename it into place, then write stats, then the marker (last)."""
        self._flush()
        self._writer.close()
        self._file.close()
        # Replacing an earlier output: its marker goes first, so no moment shows the new rows
        # as complete under the old settings.
        if self.out.fs.exists(self.out.marker(self.shard)):
            self.out.fs.rm(self.out.marker(self.shard))
        self.out.fs.mv(self.tmp_path, self.out.parquet(self.shard))
        self.out.write_json_atomic(self.out.stats(self.shard), stats)
        self.out.write_json_atomic(self.out.marker(self.shard), self.provenance)

    def abort(self) -> None:
        """Drop the partial file: a failed shard leaves nothing a reader could mistake for output."""
        try:
            self._writer.close()
            self._file.close()
        finally:
            if self.out.fs.exists(self.tmp_path):
                self.out.fs.rm(self.tmp_path)
