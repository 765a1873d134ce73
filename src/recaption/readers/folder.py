"""A folder of images with optional sidecar captions (`cat.jpg` + `cat.txt`)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from ..sample import Sample
from .base import Shard, ShardError, full_url, sha256_hex

FOLDER_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class FolderShard(Shard):
    """A fixed slice of a folder's sorted image list, so shard names stay stable across reruns."""

    def __init__(self, fs, root: str, files: list[str], name: str):
        self.fs = fs
        self.root = root
        self.files = files
        self.name = name
        self.source = f"{root} [{name}]"

    def __iter__(self) -> Iterator[Sample]:
        for path in self.files:
            rel = posixpath.relpath(path, self.root)
            stem = posixpath.splitext(path)[0]
            try:
                data = self.fs.cat_file(path)
            except FileNotFoundError as exc:
                raise ShardError(self.source, f"image vanished while reading: {path}") from exc
            caption = None
            if self.fs.exists(stem + ".txt"):
                caption = self.fs.cat_file(stem + ".txt").decode("utf-8", errors="replace").strip()
            yield Sample(
                key=posixpath.splitext(rel)[0],
                url=full_url(self.fs, path),
                org_caption=caption,
                sha256=sha256_hex(data),
                image_bytes=data,
            )
