"""One download shard in img2dataset's layout (tar, parquet, stats, marker: docs/download.md),
committed as one ledger.ShardCommit: a reader never sees half a file, and a shard without its
marker is redone from scratch."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from ..samples.tars import TarShardWriter
from ..spine.atomic import temporary_name
from ..spine.ledger import OutputDir, ShardCommit, rows_handed

INT_FIELDS = ("width", "height", "original_width", "original_height", "http_status", "attempts")
BASE_FIELDS = [(name, pa.int32() if name in INT_FIELDS else pa.string()) for name in (
    "key", "url", "caption", "status", "error_message", "width", "height", "original_width",
    "original_height", "sha256", "outcome", "http_status", "attempts")]


class DownloadShardWriter:
    def __init__(self, out: OutputDir, name: str, extra_cols: list[str], save_caption: bool):
        self.out, self.name = out, name
        self.tar_path = out.path(f"{name}.tar")
        self.extra_cols = extra_cols
        self.save_caption = save_caption
        self.transaction = ShardCommit(out, name)
        self._tar_file = self.transaction.open("tar", "wb")
        self._tar = TarShardWriter.into(self._tar_file)
        self.rows: dict[str, dict] = {}

    def add(self, row: dict, image: bytes | None = None, ext: str | None = None) -> None:
        """Record a row; a success also goes into the tar with its caption and metadata."""
        self.rows[row["key"]] = row
        if image is not None:
            members = {ext: image}
            if self.save_caption and row.get("caption") is not None:
                members["txt"] = row["caption"].encode()
            members["json"] = json.dumps(row, default=str, ensure_ascii=False).encode()
            self._tar.add(row["key"], members)
        rows_handed(1)  # RECAP_CRASH_AFTER_ROWS

    def mark(self, why: dict[str, str], outcome: str, status: str) -> None:
        """Turn these successes into failures with `outcome` (key -> the message) and take their
        samples out of the tar (a copy without them replaces it, before the commit)."""
        if not why:
            return
        for key, message in why.items():
            self.rows[key].update(outcome=outcome, status=status, error_message=message)
        self._tar.close()
        self._tar_file.close()  # (closed again by the commit: a no-op)
        written = self.transaction.path_for("tar")
        kept = temporary_name(self.tar_path)
        # (a crash meanwhile leaves `kept` as a temporary, which the next run clears)
        with self.out.fs.open(kept, "wb") as f:
            copy = TarShardWriter.into(f)
            copy.copy_samples(self.out.fs, written, {k for k, r in self.rows.items() if r["outcome"] == "ok"})
            copy.close()
        self.out.fs.mv(kept, written)
        self._tar = copy  # (closed: what the shard's tar holds now, member by member)

    @property
    def members(self) -> list[tuple[str, int, int]]:
        """Each tar member's name, data offset and size, as written (for the tar index)."""
        return self._tar.members

    def copy_samples(self, tar_path: str, keys: set[str]) -> None:
        """Carry over the members of these keys from an existing tar (for --retry-failed)."""
        self._tar.copy_samples(self.out.fs, tar_path, keys)

    def commit(self, stats: dict, provenance: dict) -> None:
        """Tar, parquet, stats, then the marker. A shard redone in place (--retry-failed, a
        loosened setting) loses its marker first: until the new one is written it is
        incomplete, never a new tar beside an old parquet."""
        self._tar.close()
        with self.transaction.open("parquet", "wb") as f:
            pq.write_table(self.table(), f)
        self.transaction.commit(stats, provenance)

    def table(self) -> pa.Table:
        rows = [self.rows[k] for k in sorted(self.rows)]
        columns = {name: pa.array([r.get(name) for r in rows], type=kind) for name, kind in BASE_FIELDS}
        for name in self.extra_cols:
            columns[name] = pa.array([r.get(name) for r in rows])
        return pa.table(columns)

    def abort(self) -> None:
        try:
            self._tar.abort()
        finally:
            self.transaction.abort()
