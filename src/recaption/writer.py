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
from .quality.flags import is_boilerplate, is_degenerate, is_repetitive
from .sample import Sample
from .schema import METADATA_KEY, output_schema, word_count


def sample_row(sample: Sample, conditional: bool) -> dict:
    row = {
        "url": sample.url,
        "re_caption": sample.re_caption,
        "org_caption": sample.org_caption,
        "sha256": sample.sha256,
        "key": sample.key,
        "re_clip_score": sample.scores.get("re_clip_score"),  # unknown until scored: null, never 0
        "org_clip_score": sample.scores.get("org_clip_score"),
        "re_length": word_count(sample.re_caption),
        "org_length": word_count(sample.org_caption),
        "re_gpt4v_score": None,
        "org_gpt4v_score": None,
        "re_truncated": sample.re_truncated,
        "re_repetition": is_repetitive(sample.re_caption),
        "re_boilerplate": is_boilerplate(sample.re_caption),
        "re_degenerate": is_degenerate(sample.re_caption),  # null without a caption; "" is degenerate
        "re_clip_truncated": sample.scores.get("re_clip_truncated"),
        "org_clip_truncated": sample.scores.get("org_clip_truncated"),
        "re_judge_status": None,
        "org_judge_status": None,
        "status": sample.status,
        "error": sample.error,
    }
    if conditional:
        row["re_caption_condition_diverse_topk"] = sample.conditional_caption
        row["re_condition_length"] = word_count(sample.conditional_caption)
    return row


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

    def __init__(self, out: OutputDir, shard: str, conditional: bool, provenance: dict,
                 row_group_rows: int = 1000, metadata: dict[bytes, bytes] | None = None):
        self.out = out
        self.shard = shard
        self.conditional = conditional
        self.provenance = provenance
        self.row_group_rows = row_group_rows
        self.schema = output_schema(conditional).with_metadata(
            {METADATA_KEY: json.dumps(provenance, sort_keys=True).encode(), **(metadata or {})}
        )
        # Unique per process and writer: a second process can never rename this file into place.
        self.tmp_path = temporary_name(out.parquet(shard))
        out.fs.makedirs(out.root, exist_ok=True)
        self._file = out.fs.open(self.tmp_path, "wb")
        self._writer = pq.ParquetWriter(self._file, self.schema)
        self._pending: list[dict] = []
        self.rows_written = 0

    def write(self, samples: list[Sample]) -> None:
        self._pending.extend(sample_row(s, self.conditional) for s in samples)
        if len(self._pending) >= self.row_group_rows:
            self._flush()

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
