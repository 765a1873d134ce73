"""WebDataset tar shards in img2dataset's layout: {key}.jpg, {key}.txt, {key}.json."""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from collections import Counter
from collections.abc import Iterator

from ..samples.sample import MISSING_IMAGE, Sample, as_text, caption_text
from ..samples.tars import normalise_member_name, split_member_name
from ..spine.files import open_input
from .base import (
    FileShard,
    Shard,
    ShardError,
    UniqueKeys,
    UnreadableImage,
    failed_sample,
    image_extensions,
    is_hidden,
    sha256_hex,
    too_large,
    unreadable_types_note,
)

log = logging.getLogger(__name__)


def _has_end_of_archive(tar: tarfile.TarFile) -> bool:
    """A zero block where the member headers end (tarfile stops quietly at a cut-off header)."""
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


class TarShard(FileShard):
    """Reads the tar's headers first (data blocks skipped by seeking), then yields one sample per
    key in order of first appearance, reading members on demand: a sample's members may come in
    any order, memory stays bounded by one sample. Every image member gives a row (a second
    `x.jpg` is a second sample), keys made unique (UniqueKeys); a member over the read limit is
    never read (a too_large row)."""

    def _read_file(self, raw) -> Iterator[Sample]:
        tar, members = self._headers(raw)
        groups = _group_members(members)
        unique = UniqueKeys(posixpath.basename(key) for key, _ in groups)
        self._bad_meta: list[str] = []  # .json members that hold no fields: said once per read
        for key, parts in groups:
            yield from self._samples(tar, key, parts, unique)
        if self._bad_meta:
            log.warning("%s: %d .json member(s) are not JSON objects (first: %s): their fields (url, key, "
                        "sha256, caption) are not read", self.source, len(self._bad_meta), self._bad_meta[0])

    def _headers(self, raw) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
        try:
            tar = tarfile.open(fileobj=raw, mode="r:*")
            members = tar.getmembers()
            ends_cleanly = _has_end_of_archive(tar)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ShardError(self.source, f"unreadable or truncated tar: {exc}") from exc
        if not ends_cleanly:
            raise ShardError(self.source, f"truncated tar: no end-of-archive block after {len(members)} "
                                          "members (was it still being written, or cut short?)")
        return tar, members

    def _read(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        if member.issym() or member.islnk():  # a link's target may be anything, anywhere
            raise UnreadableImage(MISSING_IMAGE, f"tar member {member.name} is a link to {member.linkname}; "
                                                 "links are not read")
        if member.size > self.columns.max_image_bytes:  # from the header: nothing read yet
            raise too_large(f"tar member {member.name}", member.size, self.columns.max_image_bytes)
        try:
            handle = tar.extractfile(member)
            data = handle.read() if handle else b""
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ShardError(self.source, f"cannot read member {member.name}: {exc}") from exc
        if len(data) != member.size:
            raise ShardError(self.source, f"member {member.name} is truncated")
        return data

    def _image_members(self, parts: dict[str, tarfile.TarInfo]) -> list[str]:
        """The sample's image extensions, in tar order: --image-col's if present, else every
        member whose last dot-part is an image type (`jpg`, `edited.jpg`)."""
        if self.columns.image and self.columns.image in parts:
            return [self.columns.image]
        return [ext for ext in parts if ext.rpartition(".")[2] in image_extensions()]

    def _samples(self, tar: tarfile.TarFile, key: str, parts: dict[str, tarfile.TarInfo],
                 unique: UniqueKeys) -> Iterator[Sample]:
        """One sample per image member (the second under a suffixed key), or one missing_image
        row naming what the key has instead."""
        try:
            meta = self._meta(tar, parts)
            caption = self._caption(tar, parts, meta)
        except UnreadableImage as problem:
            yield failed_sample(unique(posixpath.basename(key)), None, None, problem)
            return
        base_key = as_text(meta.get(self.columns.key)) or posixpath.basename(key)
        url = as_text(meta.get(self.columns.url))
        image_exts = self._image_members(parts)
        if not image_exts:
            has = ", ".join(ext or "(no extension)" for ext in parts)
            note = unreadable_types_note(ext.rpartition(".")[2] for ext in parts)
            problem = UnreadableImage(MISSING_IMAGE, f"sample has no image member (has: {has}){note}")
            yield failed_sample(unique(base_key), url, caption, problem)
            return
        for n, image_ext in enumerate(image_exts):
            sample_key = unique(base_key)
            try:
                image = self._read(tar, parts[image_ext])
            except UnreadableImage as problem:
                yield failed_sample(sample_key, url, caption, problem)
                continue
            # the .json's sha256 is the downloaded image's: the first image member's
            given_sha = as_text(meta.get(self.columns.sha256)) if n == 0 else None
            yield Sample(
                key=sample_key,
                url=url,
                org_caption=caption,
                sha256=given_sha or sha256_hex(image),
                image_bytes=image,
                extra={c: meta.get(c) for c in self.columns.extra},
            )

    def _meta(self, tar: tarfile.TarFile, parts: dict[str, tarfile.TarInfo]) -> dict:
        if "json" not in parts:
            return {}
        try:
            meta = json.loads(self._read(tar, parts["json"]))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            meta = None
        if not isinstance(meta, dict):  # a JSON list or number holds no fields either
            self._bad_meta.append(parts["json"].name)
            return {}
        return meta

    def _caption(self, tar: tarfile.TarFile, parts: dict[str, tarfile.TarInfo], meta: dict) -> str | None:
        """A caption field the user named wins; else img2dataset's {key}.txt; else json "caption"."""
        if self.columns.caption and meta.get(self.columns.caption) is not None:
            return as_text(meta[self.columns.caption])
        if "txt" in parts:  # read as a folder's .txt sidecar is
            member = parts["txt"].name
            return caption_text(self._read(tar, parts["txt"]),
                                lambda why: log.warning("%s: caption %s %s", self.source, member, why))
        if meta.get("caption") is not None:
            return as_text(meta["caption"])
        return None


def _group_members(members: list[tarfile.TarInfo]) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, {extension: member}) per sample, in order of first appearance; a repeated
    (key, extension) starts the key's next sample."""
    groups: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    of_key: dict[str, list[dict[str, tarfile.TarInfo]]] = {}
    seen: Counter = Counter()
    for member in members:
        if not (member.isfile() or member.issym() or member.islnk()):
            continue  # folders, devices: not samples (a link is one, read as missing_image)
        if is_hidden(normalise_member_name(member.name)):
            continue  # .DS_Store, macOS resource forks (._x.jpg): not samples
        key, ext = split_member_name(member.name)
        index = seen[key, ext]
        seen[key, ext] += 1
        samples = of_key.setdefault(key, [])
        if index == len(samples):
            samples.append({})
            groups.append((key, samples[-1]))
        samples[index][ext] = member
    return groups


def rows_without_image(shards: list[Shard]) -> Counter:
    """Rows the download parquet beside each tar (`00000.parquet`) lists with no image in the tar,
    by status: rows a caption run never sees, counted so every input row is accounted for."""
    import pyarrow.parquet as pq

    counts: Counter = Counter()
    for shard in shards:
        if not isinstance(shard, TarShard) or not shard.source.endswith(".tar"):
            continue
        try:
            with open_input(shard.source[: -len(".tar")] + ".parquet") as f:
                parquet = pq.ParquetFile(f)
                if "status" not in parquet.schema_arrow.names:
                    continue
                names = parquet.schema_arrow.names
                columns = ["status", "outcome"] if "outcome" in names else ["status"]
                rows = parquet.read(columns=columns).to_pylist()
        except Exception:  # noqa: BLE001 - a note about other files: none beside it, or unreadable
            continue
        counts.update(r.get("outcome") or r["status"] for r in rows if r["status"] != "success")
    return counts
