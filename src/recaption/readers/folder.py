"""A folder of images with optional sidecar captions (`cat.jpg` + `cat.txt`)."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from ..samples.sample import Sample
from .base import (
    DEFAULT_MAX_IMAGE_BYTES,
    Shard,
    UniqueKeys,
    UnreadableImage,
    failed_sample,
    full_url,
    listed_version,
    read_bounded,
    sha256_hex,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FolderFile:
    """One file as the folder listing saw it."""

    path: str
    size: int | None
    version: str | None  # mtime (or an object store's equivalent): changes when the file does

    @classmethod
    def from_info(cls, info: dict) -> FolderFile:
        return cls(info["name"], info.get("size"), listed_version(info))


class FolderShard(Shard):
    """A fixed slice of a folder's sorted image list, so shard names stay stable across reruns.

    Keys are paths relative to the folder without the extension (`sub/cat`); a second image of
    one stem (`cat.png` beside `cat.jpg`) gets a suffix (`cat_1`), see UniqueKeys."""

    def __init__(self, fs, root: str, images: list[FolderFile], name: str,
                 sidecars: dict[str, FolderFile] | None = None,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        self.fs = fs
        self.root = root
        self.images = images
        self.name = name
        # With its protocol (s3://...), so `recap score` can open the folder again.
        self.source = f"{full_url(fs, root)} [{name}]"
        # stem -> its .txt caption, as listed; only those of this slice's images
        sidecars = sidecars or {}
        self.sidecars = {s: sidecars[s] for s in map(_stem, images) if s in sidecars}
        self.max_image_bytes = max_image_bytes
        self._fingerprint = self._compute_fingerprint()

    @property
    def files(self) -> list[str]:
        return [f.path for f in self.images]

    def fingerprint(self) -> dict:
        return self._fingerprint

    def _compute_fingerprint(self) -> dict:
        """Relative path, size and version of every image and caption file of the slice, hashed."""
        listing = [[posixpath.relpath(f.path, self.root), f.size, f.version]
                   for f in [*self.images, *self.sidecars.values()]]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        return {"images": len(self.images), "sha256": digest}

    def __iter__(self) -> Iterator[Sample]:
        unique = UniqueKeys(posixpath.relpath(_stem(f), self.root) for f in self.images)
        for image in self.images:
            key = unique(posixpath.relpath(_stem(image), self.root))
            url = full_url(self.fs, image.path)
            caption = self._caption(_stem(image))
            try:
                data = read_bounded(self.fs, image.path, self.max_image_bytes, image.size)
            except UnreadableImage as problem:
                yield failed_sample(key, url, caption, problem)
                continue
            yield Sample(key=key, url=url, org_caption=caption, sha256=sha256_hex(data), image_bytes=data)

    def _caption(self, stem: str) -> str | None:
        sidecar = self.sidecars.get(stem)
        if sidecar is None:
            return None
        try:
            data = read_bounded(self.fs, sidecar.path, self.max_image_bytes, sidecar.size)
        except UnreadableImage as problem:
            log.warning("%s: caption not used: %s", self.source, problem)
            return None
        return data.decode("utf-8", errors="replace").strip()


def _stem(file: FolderFile) -> str:
    return posixpath.splitext(file.path)[0]
