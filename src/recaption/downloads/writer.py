"""One download shard in img2dataset's layout, written atomically.

  00000.tar           {key}.{jpg|png|webp}, {key}.txt (caption), {key}.json (the row) per success
  00000.parquet       one row per input row, failures included, in input order
  00000_stats.json    counts by status and outcome, timing
  00000.done          completion marker, written last (holds the settings)
Every file is written under a temporary name unique to this process (atomic.temporary_name) and
renamed into place, so a reader never sees half a file and two processes never rename each
other's files; a shard without its marker is redone from scratch. Temporaries left by a crash
are removed by the next run, under the output folder's lock.
"""

from __future__ import annotations

import io
import json
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import open_atomic, temporary_name, write_json_atomic
from ..writer import OutputDir

BASE_FIELDS = [
    ("key", pa.string()),
    ("url", pa.string()),
    ("caption", pa.string()),
    ("status", pa.string()),
    ("error_message", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("sha256", pa.string()),
    ("outcome", pa.string()),
    ("http_status", pa.int32()),
    ("attempts", pa.int32()),
]


def shard_paths(out: OutputDir, name: str) -> dict[str, str]:
    return {
        "tar": out.path(f"{name}.tar"),
        "parquet": out.parquet(name),
        "stats": out.stats(name),
        "done": out.marker(name),
    }


def forget_shard(out: OutputDir, name: str) -> None:
    """Remove a shard's marker first, then whatever else of it exists (before redoing it).
    Temporary files are not touched: they belong to whichever writer is writing them."""
    out.invalidate(name)  # marker, stats, parquet
    tar = shard_paths(out, name)["tar"]
    if out.fs.exists(tar):
        out.fs.rm(tar)


class DownloadShardWriter:
    def __init__(self, out: OutputDir, name: str, extra_cols: list[str], save_caption: bool):
        self.out, self.name = out, name
        self.paths = shard_paths(out, name)
        self.extra_cols = extra_cols
        self.save_caption = save_caption
        out.fs.makedirs(out.root, exist_ok=True)
        self._tar_tmp = temporary_name(self.paths["tar"])
        self._file = out.fs.open(self._tar_tmp, "wb")
        # The stdlib writes webdataset's convention ({key}.{ext} members, a sample's members
        # together) directly; webdataset's TarWriter would import torch into the downloader.
        self._tar = tarfile.open(fileobj=self._file, mode="w|")
        self.rows: dict[str, dict] = {}

    def add(self, row: dict, image: bytes | None = None, ext: str | None = None) -> None:
        """Record a row; a success also goes into the tar with its caption and metadata."""
        self.rows[row["key"]] = row
        if image is not None:
            key = row["key"]
            self._member(f"{key}.{ext}", image)
            if self.save_caption and row.get("caption") is not None:
                self._member(f"{key}.txt", row["caption"].encode())
            self._member(f"{key}.json", json.dumps(row, default=str, ensure_ascii=False).encode())

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def copy_samples(self, tar_path: str, keys: set[str]) -> None:
        """Carry over the members of these keys from an existing tar (for --retry-failed)."""
        with self.out.fs.open(tar_path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as old:
            for member in old:
                key = member.name.split("/")[-1].split(".", 1)[0]
                if member.isfile() and key in keys:
                    self._tar.addfile(member, io.BytesIO(old.extractfile(member).read()))

    def commit(self, stats: dict, provenance: dict) -> None:
        """Tar, parquet, stats, then the marker. A shard redone in place (--retry-failed, a
        loosened setting) loses its marker first: until the new one is written it is
        incomplete, never a new tar beside an old parquet."""
        fs = self.out.fs
        self._tar.close()
        self._file.close()
        if fs.exists(self.paths["done"]):
            fs.rm(self.paths["done"])
        fs.mv(self._tar_tmp, self.paths["tar"])
        with open_atomic(fs, self.paths["parquet"], "wb") as f:
            pq.write_table(self.table(), f)
        write_json_atomic(fs, self.paths["stats"], stats)
        write_json_atomic(fs, self.paths["done"], provenance)

    def table(self) -> pa.Table:
        rows = [self.rows[k] for k in sorted(self.rows)]
        columns = {name: pa.array([r.get(name) for r in rows], type=kind) for name, kind in BASE_FIELDS}
        for name in self.extra_cols:
            columns[name] = pa.array([r.get(name) for r in rows])
        return pa.table(columns)

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            if self.out.fs.exists(self._tar_tmp):
                self.out.fs.rm(self._tar_tmp)
