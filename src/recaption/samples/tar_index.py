"""Where each member of a tar shard lies: key -> (tar file, member, offset, size), so one image
is read with one seek instead of a scan of the whole tar. Built once from the member headers
(and each sample's small `.json`, for the key it records), kept as parquet in an index folder,
used while the tar's size and times are those it was built from. Only uncompressed tars."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tarfile
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..spine.atomic import open_atomic
from ..spine.files import open_file, open_input
from .tars import normalise_member_name, split_member_name

log = logging.getLogger(__name__)

INDEX_VERSION = 1
_MAX_JSON = 1 << 16  # a sample's .json read for its key: bigger ones are not metadata we wrote
SCHEMA = pa.schema([("key", pa.string()), ("member", pa.string()), ("ext", pa.string()),
                    ("offset", pa.int64()), ("size", pa.int64())])


class TarIndexError(OSError):
    """The tar cannot be indexed (compressed, unreadable, truncated)."""


@dataclass(frozen=True)
class Member:
    """One member of a tar: where its bytes are."""

    tar: str
    name: str
    ext: str
    offset: int
    size: int

    def read(self) -> bytes:
        """The member's bytes: one seek and one read, the tar header just before them checked."""
        with open_input(self.tar) as f:
            f.seek(self.offset - tarfile.BLOCKSIZE)
            block = f.read(tarfile.BLOCKSIZE + self.size)
        header, data = block[: tarfile.BLOCKSIZE], block[tarfile.BLOCKSIZE :]
        if len(data) != self.size or not self._is_header(header):
            raise TarIndexError(f"{self.tar}: member {self.name} is not where its index says (the tar "
                                "changed since it was indexed); open it again to index it again")
        return data

    def _is_header(self, block: bytes) -> bool:
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.TarError:  # bad checksum, empty block: not a header at all
            return False
        # The plain header keeps 100 bytes of a longer name, a non-ASCII one as ASCII with `?` (pax).
        named = normalise_member_name(info.name)
        spellings = {self.name, self.name.encode("ascii", "replace").decode("ascii")}
        return info.size == self.size and any(n == named or n.startswith(named[:90]) for n in spellings)


def fingerprint(tar: str) -> dict:
    """What says a tar is the one an index was built from: size, modification time, and for a
    local file inode and change time (a rewrite with old size and mtime put back still differs)."""
    fs, path = fsspec.core.url_to_fs(tar)
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    stamp = {"size": int(info.get("size") or 0), "mtime": str(mtime)}
    if info.get("ino") is not None:  # fsspec's local filesystem: os.stat's st_ino and st_ctime
        stamp.update(ino=int(info["ino"]), changed=str(info.get("created")))
    return stamp


def scan(tar: str) -> pa.Table:
    """Every regular member's key, name, extension, data offset and size, in tar order. The key
    is the sample's `.json` "key" when it records one, else the member name's key (webdataset's
    rule, `split_member_name`) without its folder, as the tar reader keys rows."""
    recorded: dict[str, str] = {}
    try:
        with open_input(tar) as raw:
            with tarfile.open(fileobj=raw, mode="r:") as archive:  # links, folders: never followed
                members = [(m.name, m.offset_data, m.size) for m in archive if m.isfile()]
            # The samples' .json after the headers, each by its offset (20x faster than
            # extracting them during the header scan).
            for name, offset, size in members:
                prefix, ext = split_member_name(name)
                if ext == "json" and size <= _MAX_JSON:
                    raw.seek(offset)
                    found = _json_key(raw.read(size))
                    if found:
                        recorded[prefix] = found
    except tarfile.ReadError as exc:
        raise TarIndexError(f"{tar}: {_unreadable(tar, exc)}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise TarIndexError(f"{tar}: unreadable tar ({exc})") from None
    return of_members(members, recorded)


def of_members(written: list[tuple[str, int, int]], recorded: dict[str, str] | None = None) -> pa.Table:
    """`scan`'s table from members (name, data offset, size): each keyed by the key `recorded`
    gives its member name's key, else by that key without its folder."""
    rows = []
    for name, offset, size in written:
        prefix, ext = split_member_name(name)
        key = (recorded or {}).get(prefix) or posixpath.basename(prefix)
        rows.append((key, normalise_member_name(name), ext, offset, size))
    return pa.Table.from_pylist([dict(zip(SCHEMA.names, row, strict=True)) for row in rows], schema=SCHEMA)


_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip, bzip2, xz, zstd


def _unreadable(tar: str, exc: tarfile.ReadError) -> str:
    """Why tarfile could not read it: compressed (only plain tars have offsets), or cut short."""
    try:
        with open_input(tar) as f:
            start = f.read(6)
    except OSError:
        start = b""
    if start.startswith(_COMPRESSED):
        return "a compressed tar; only plain .tar shards are indexed"
    return f"truncated or corrupt tar ({exc})"


def _json_key(data: bytes) -> str | None:
    """The "key" a sample's .json records (None: none, or not JSON)."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    key = meta.get("key") if isinstance(meta, dict) else None
    return str(key) if isinstance(key, (str, int)) and str(key) else None


def index_file(folder: str, tar: str) -> str:
    """The index of `tar` in `folder`: the tar's name and a hash of its full path."""
    stem = posixpath.basename(tar.rstrip("/")).rsplit(".", 1)[0]
    digest = hashlib.sha256(tar.encode("utf-8")).hexdigest()[:12]
    return f"{folder.rstrip('/')}/{stem}-{digest}.parquet"


def _forget_moved(fs, written: str) -> None:
    """Remove the indexes beside `written` of same-named tars that no longer exist (moved folders)."""
    stem = posixpath.basename(written).rsplit("-", 1)[0]
    for other in fs.glob(f"{fs._parent(written)}/{stem}-*.parquet"):
        if posixpath.basename(other) == posixpath.basename(written):
            continue
        try:
            with open_file(fs, other) as f:
                metadata = pq.read_schema(f).metadata or {}
            tar = json.loads(metadata.get(b"recaption_tar_index", b"{}")).get("tar")
            if not tar:
                continue
            tar_fs, tar_path = fsspec.core.url_to_fs(tar)
            if not tar_fs.exists(tar_path):
                fs.rm(other)
        except (OSError, ValueError, pa.ArrowInvalid):
            continue  # someone else's file, or one being written: left alone


def _within(table: pa.Table, tar_size: int) -> bool:
    """A stored index is used only if it could be one of this tar: our columns, and every member
    after its header and inside the tar (a tampered cache is rebuilt, never believed)."""
    if table.schema.remove_metadata() != SCHEMA or any(column.null_count for column in table.columns):
        return False
    if not table.num_rows:
        return True
    offsets, sizes = table.column("offset"), table.column("size")
    return (pc.min(offsets).as_py() >= tarfile.BLOCKSIZE and pc.min(sizes).as_py() >= 0
            and pc.max(pc.add(offsets, sizes)).as_py() <= tar_size)


class TarIndex:
    """The members of one tar by key; `load` builds the index or reuses the stored one."""

    def __init__(self, tar: str, table: pa.Table):
        self.tar = tar
        self.stamp: tuple | None = None  # what a holder recorded of the tar when it took this index
        self.rows = table.num_rows
        self._by_key: dict[str, list[tuple[str, str, int, int]]] = {}
        columns = [table.column(c).to_pylist() for c in ("key", "member", "ext", "offset", "size")]
        for key, name, ext, offset, size in zip(*columns, strict=True):
            self._by_key.setdefault(key, []).append((name, ext, offset, size))

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self._by_key)

    def members(self, key: str) -> list[Member]:
        """The members of the sample `key`, in tar order ([] for a key the tar does not hold)."""
        return [Member(self.tar, *entry) for entry in self._by_key.get(key, ())]

    @classmethod
    def load(cls, tar: str, folder: str | None = None,
             written: list[tuple[str, int, int]] | None = None) -> TarIndex:
        """The index of `tar`: read from `folder` when built from this very file, else built and
        written there atomically (in memory only, with a warning, when it cannot be; `folder`
        None: in memory). `written`: the members as this tar's writer wrote them, each sample
        keyed by its member names: the index is made from them instead of reading the tar."""
        stamp = {"version": INDEX_VERSION, "tar": tar, **fingerprint(tar)}
        linked = folder is not None and "://" not in folder and os.path.islink(folder.rstrip("/"))
        if linked:  # planted in the output: an index is written in the folder itself, never elsewhere
            log.warning("the index of %s is kept in memory only: %s is a link, not followed", tar, folder)
        if folder is None or linked:
            return cls(tar, scan(tar) if written is None else of_members(written))
        path = index_file(folder, tar)
        fs, local = fsspec.core.url_to_fs(path)
        try:
            with open_file(fs, local) as f:  # a FIFO in its place is refused, never waited on
                table = pq.read_table(f)
            if (json.loads((table.schema.metadata or {}).get(b"recaption_tar_index", b"{}")) == stamp
                    and _within(table, stamp["size"])):
                return cls(tar, table)
        except (OSError, ValueError, pa.ArrowInvalid):
            pass  # none yet, unreadable, or not an index of this tar: build it again
        table = scan(tar) if written is None else of_members(written)
        table = table.replace_schema_metadata({b"recaption_tar_index": json.dumps(stamp).encode()})
        try:
            fs.makedirs(fs._parent(local), exist_ok=True)
            with open_atomic(fs, local, "wb") as f:
                pq.write_table(table, f)
        except OSError as exc:
            log.warning("the index of %s is kept in memory only: %s cannot be written (%s)", tar, path, exc)
        else:
            _forget_moved(fs, local)
        return cls(tar, table)
