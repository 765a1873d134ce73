"""A folder of images with optional sidecar captions (`cat.jpg` + `cat.txt`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from ..samples.sample import READ_ERROR, Sample, as_text, caption_text
from .base import (
    DEFAULT_MAX_IMAGE_BYTES,
    Shard,
    UniqueKeys,
    UnreadableImage,
    failed_sample,
    full_url,
    inside,
    is_local,
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
    """A fixed slice of a folder's sorted image list (names stable across reruns); keys are paths
    relative to the folder without the extension (`sub/cat`), made unique (UniqueKeys)."""

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

    def fingerprint(self) -> dict:
        return self._fingerprint

    def _compute_fingerprint(self) -> dict:
        """Relative path, size and version of every image and caption file of the slice, hashed."""
        listing = [[posixpath.relpath(f.path, self.root), f.size, f.version]
                   for f in [*self.images, *self.sidecars.values()]]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        return {"images": len(self.images), "sha256": digest}

    def __iter__(self) -> Iterator[Sample]:
        unique = UniqueKeys(as_text(posixpath.relpath(_stem(f), self.root)) for f in self.images)
        for image in self.images:
            # (a name that is not UTF-8 is kept as text with U+FFFD: keys and URLs are written)
            key = unique(as_text(posixpath.relpath(_stem(image), self.root)))
            url = as_text(full_url(self.fs, image.path))
            caption = self._caption(_stem(image))
            try:
                data = self._read(image)
            except UnreadableImage as problem:
                yield failed_sample(key, url, caption, problem)
                continue
            yield Sample(key=key, url=url, org_caption=caption, sha256=sha256_hex(data), image_bytes=data)

    def _read(self, file: FolderFile) -> bytes:
        """A file of the folder, never one a link leads to outside it."""
        if is_local(self.fs) and os.path.exists(file.path) and not inside(self.root, file.path, local=True):
            raise UnreadableImage(READ_ERROR, f"{as_text(file.path)} links to a file outside "
                                  f"{as_text(self.root)}: not read; copy the file into the folder")
        return read_bounded(self.fs, file.path, self.max_image_bytes, file.size)

    def _caption(self, stem: str) -> str | None:
        sidecar = self.sidecars.get(stem)
        if sidecar is None:
            return None
        try:
            data = self._read(sidecar)
        except UnreadableImage as problem:
            log.warning("%s: caption not used: %s", as_text(self.source), problem)
            return None
        source, name = as_text(self.source), as_text(stem)
        return caption_text(data, lambda why: log.warning("%s: caption of %s %s", source, name, why))


def _stem(file: FolderFile) -> str:
    return posixpath.splitext(file.path)[0]
