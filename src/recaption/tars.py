"""The one tar writer: WebDataset shards (`{key}.{ext}` members, a sample's members together),
written under a temporary name and renamed into place on commit.

The stdlib writes webdataset's convention directly (webdataset's own TarWriter would import
torch into the downloader); `webdataset`, open_clip, img2dataset and `recap caption` read the
result unchanged."""

from __future__ import annotations

import io
import tarfile
import time

from .atomic import temporary_name


class TarShardWriter:
    """Members go to `{path}` under a temporary name; `commit()` renames it into place, `abort()`
    removes it. `fs` is an fsspec filesystem (local or remote)."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        parent = path.rsplit("/", 1)[0] if "/" in path else "."
        fs.makedirs(parent, exist_ok=True)
        self.tmp_path = temporary_name(path)
        self._file = fs.open(self.tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w|")
        self.samples = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: `{"jpg": ..., "txt": ..., "json": ...}` become `{key}.jpg`, `{key}.txt`, ..."""
        if "/" in key or key.startswith("."):
            raise ValueError(f"tar key {key!r}: must not hold '/' or start with '.'")
        for ext, data in members.items():
            self.add_member(f"{key}.{ext}", data)
        self.samples += 1

    def add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def copy_member(self, member: tarfile.TarInfo, data: bytes) -> None:
        self._tar.addfile(member, io.BytesIO(data))

    def close(self) -> None:
        """Finish the tar file under its temporary name (commit renames it)."""
        if not self._file.closed:
            self._tar.close()
            self._file.close()

    def commit(self) -> None:
        self.close()
        self.fs.mv(self.tmp_path, self.path)

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            if self.fs.exists(self.tmp_path):
                self.fs.rm(self.tmp_path)
