"""The one tar writer: WebDataset shards (`{key}.{ext}` members, a sample's members together),
written under a temporary name and renamed into place on commit; with the stdlib (webdataset's
own TarWriter would import torch into the downloader)."""

from __future__ import annotations

import posixpath
import re
import tarfile
import time
from typing import IO

from ..spine.atomic import temporary_name
from ..spine.files import open_file

# What a member key cannot hold: a path separator, a dot (webdataset splits at the first one),
# control characters, invisible or direction-changing code points (a listed name would lie).
_UNSAFE_KEY = re.compile(r"[./\\\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def member_key(key: str) -> str:
    """A key fit for tar member names (`sub/cat.v2\n` -> `sub_cat_v2_`): the one rule for every
    tar this toolkit writes; the original key goes in the sample's .json."""
    return _UNSAFE_KEY.sub("_", key) or "_"


def normalise_member_name(name: str) -> str:
    """The member's path inside the tar as a sample name: `./000001.jpg` (what `tar -C dir .`
    writes) and `/abs/x.jpg` lose their leading `./` and `/`."""
    name = posixpath.normpath(name)
    return "" if name == "." else name.lstrip("/")


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) as webdataset splits a member name: at the basename's first dot
    (`dir/000001.seg.png` -> `dir/000001`, `seg.png`); the one rule for the reader and the index."""
    directory, base = posixpath.split(normalise_member_name(name))
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem) if directory else stem, ext.lower()


def _header(member: tarfile.TarInfo) -> bytes:
    """The header tarfile writes by default (pax, UTF-8): plain ustar for a short ASCII name, pax
    records before it for what ustar cannot hold (a long or non-ASCII name, an 8 GiB member)."""
    if member.name.isascii() and len(member.name) <= tarfile.LENGTH_NAME:
        try:  # (the pax writer's own result for such a member, at a third of its cost)
            return member.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        except ValueError:  # a number past a ustar field
            pass
    return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class TarShardWriter:
    """Members go to `{path}` (on fsspec `fs`) under a temporary name; `commit()` renames it into
    place, `abort()` removes it. `into(stream)` writes into a file its owner renames (one of a
    ledger.ShardCommit's files): `close()` finishes the tar there."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        parent = path.rsplit("/", 1)[0] if "/" in path else "."
        fs.makedirs(parent, exist_ok=True)
        self.tmp_path = temporary_name(path)
        self._start(fs.open(self.tmp_path, "wb"), owns_file=True)

    @classmethod
    def into(cls, stream: IO[bytes]) -> TarShardWriter:
        """Members into an open binary file the caller owns (closes, renames, removes)."""
        writer = cls.__new__(cls)
        writer.fs = writer.path = writer.tmp_path = None
        writer._start(stream, owns_file=False)
        return writer

    def _start(self, stream: IO[bytes], owns_file: bool) -> None:
        self._file = stream
        self._owns_file = owns_file
        self._written = 0  # bytes so far: the end is padded to tarfile's record size
        self.members: list[tuple[str, int, int]] = []  # (name, data offset, size): a tar index
        self._finished = False
        self.samples = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """One sample: `{"jpg": ..., "txt": ..., "json": ...}` become `{key}.jpg`, `{key}.txt`, ...
        in this order."""
        if member_key(key) != key:
            raise ValueError(f"tar key {key!r}: holds characters a member name cannot (see member_key)")
        for ext, data in members.items():
            self.add_member(f"{key}.{ext}", data)
        self.samples += 1

    def add_member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o444
        self._add(name, _header(info), data)

    def copy_member(self, member: tarfile.TarInfo, data: bytes) -> None:
        """A member read from another tar, as it was (its pax records kept)."""
        self._add(member.name, member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), data)

    def _add(self, name: str, header: bytes, data: bytes) -> None:
        # What TarFile.addfile writes, byte for byte (tested), without its per-member TarInfo
        # copy and buffering (a tenth of the download's event-loop time).
        self._write(header)
        self.members.append((name, self._written, len(data)))
        self._write(data)
        if len(data) % tarfile.BLOCKSIZE:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._written += len(data)

    def copy_samples(self, fs, tar_path: str, keys: set[str]) -> int:
        """Copy the members of these keys from an existing tar, as they are; returns how many
        members were copied."""
        copied = 0
        with open_file(fs, tar_path) as f, tarfile.open(fileobj=f, mode="r|") as old:
            for member in old:
                key = member.name.split("/")[-1].split(".", 1)[0]
                if member.isfile() and key in keys:
                    self.copy_member(member, old.extractfile(member).read())
                    copied += 1
        return copied

    def close(self) -> None:
        """Finish the tar (its end blocks); a file this writer opened is closed too (under its
        temporary name: commit renames it)."""
        if not self._finished:
            self._finished = True
            self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))  # the end-of-archive blocks
            if self._written % tarfile.RECORDSIZE:
                self._write(tarfile.NUL * (tarfile.RECORDSIZE - self._written % tarfile.RECORDSIZE))
            if self._owns_file:
                self._file.close()

    def commit(self) -> None:
        if not self._owns_file:
            raise RuntimeError("this tar is renamed by the owner of its file (a ShardCommit)")
        self.close()
        self.fs.mv(self.tmp_path, self.path)

    def abort(self) -> None:
        """Drop the tar: its temporary file is removed (a file owned elsewhere is left to its
        owner, whose abort removes it)."""
        self._finished = True
        if not self._owns_file:
            return
        try:
            self._file.close()
        finally:
            if self.fs.exists(self.tmp_path):
                self.fs.rm(self.tmp_path)
