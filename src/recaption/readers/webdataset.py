"""WebDataset tar shards in img2dataset's layout: {key}.jpg, {key}.txt, {key}.json."""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator

import fsspec

from ..sample import Sample
from .base import ColumnConfig, Shard, ShardError, sha256_hex

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm")


def split_member_name(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) the way webdataset does: at the first dot of
    the basename, so `dir/000001.seg.png` is key `dir/000001`, extension `seg.png`."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem) if directory else stem, ext.lower()


def _has_end_of_archive(tar: tarfile.TarFile) -> bool:
    """tarfile stops quietly at a cut-off header, so a tar truncated between members would lose
    its tail unnoticed. A complete tar has a zero block where the member headers end."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


class TarShard(Shard):
    """Reads the tar's headers first (cheap: data blocks are skipped by seeking), then yields
    one sample per key in order of first appearance, reading members on demand. So members of
    a sample may appear in any order while memory stays bounded by one sample."""

    def __init__(self, source: str, name: str, columns: ColumnConfig = ColumnConfig()):
        self.source = source
        self.name = name
        self.columns = columns

    def __iter__(self) -> Iterator[Sample]:
        try:
            with fsspec.open(self.source, "rb") as raw:
                try:
                    tar = tarfile.open(fileobj=raw, mode="r:*")
                    members = tar.getmembers()
                    ends_cleanly = _has_end_of_archive(tar)
                except (tarfile.TarError, EOFError, OSError) as exc:
                    raise ShardError(self.source, f"unreadable or truncated tar: {exc}") from exc
                if not ends_cleanly:
                    raise ShardError(
                        self.source,
                        f"truncated tar: no end-of-archive block after {len(members)} members "
                        "(was it still being written, or cut short?)",
                    )
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                for member in members:
                    if not member.isfile():
                        continue
                    key, ext = split_member_name(member.name)
                    if key.startswith(".") or posixpath.basename(key).startswith("._"):
                        continue  # macOS resource forks and hidden files are not samples
                    groups.setdefault(key, {})[ext] = member
                for key, parts in groups.items():
                    yield self._sample(tar, key, parts)
        except FileNotFoundError as exc:
            raise ShardError(self.source, f"file not found: {exc}") from exc

    def _read(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        try:
            handle = tar.extractfile(member)
            data = handle.read() if handle else b""
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ShardError(self.source, f"cannot read member {member.name}: {exc}") from exc
        if len(data) != member.size:
            raise ShardError(self.source, f"member {member.name} is truncated")
        return data

    def _sample(self, tar: tarfile.TarFile, key: str, parts: dict[str, tarfile.TarInfo]) -> Sample:
        meta: dict = {}
        if "json" in parts:
            try:
                meta = json.loads(self._read(tar, parts["json"]))
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = {}
        # A caption field the user named wins; else img2dataset's {key}.txt; else json "caption".
        caption = None
        if self.columns.caption and meta.get(self.columns.caption) is not None:
            caption = str(meta[self.columns.caption])
        elif "txt" in parts:
            caption = self._read(tar, parts["txt"]).decode("utf-8", errors="replace")
        elif meta.get("caption") is not None:
            caption = str(meta["caption"])
        image_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        if self.columns.image and self.columns.image in parts:
            image_ext = self.columns.image
        image = self._read(tar, parts[image_ext]) if image_ext else None
        return Sample(
            key=str(meta.get(self.columns.key) or posixpath.basename(key)),
            url=meta.get(self.columns.url),
            org_caption=caption,
            sha256=meta.get(self.columns.sha256) or sha256_hex(image),
            image_bytes=image,
            extra={c: meta.get(c) for c in self.columns.extra},
        )
