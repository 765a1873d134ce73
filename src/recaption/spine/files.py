"""Open a file by name the one safe way: only a regular file, never blocking on a FIFO.

Every file read by a name that came from a user or from data (input shards, folder images,
parquet image paths, metadata, --passes, prompt files) is opened here. A local path is opened
non-blocking (a FIFO's open would wait forever for a writer), checked with fstat on the open
descriptor (no window between the check and the read), and only then read: a FIFO, socket,
device or folder is refused in one line naming what it is. Remote URLs go to fsspec.
"""

from __future__ import annotations

import io
import os
import stat
from typing import IO

import fsspec

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


class NotRegularFile(OSError):
    """A name that is not a regular file (FIFO, socket, device, folder): refused, not opened."""


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def is_local(fs) -> bool:
    """An fsspec file system of this machine's files."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def local_path(url: str) -> str | None:
    """The local path a name refers to (plain path or file://), None for a remote URL."""
    if "://" not in url:
        return url
    return url.removeprefix("file://") if url.startswith("file://") else None


def check_regular(path: str | os.PathLike) -> None:
    """NotRegularFile unless `path` is a regular file now (for readers that take only a name:
    safetensors maps the file itself); FileNotFoundError / OSError as the OS says."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(f"{os.fspath(path)} is {kind_of(mode)}, not a file; name a regular file")


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """A local regular file opened for binary reading; NotRegularFile for anything else (raised
    without blocking), FileNotFoundError / PermissionError / OSError as the OS says."""
    check_regular(path)  # first by name: a socket's open fails (ENXIO) before any fstat
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)  # non-blocking: swapped for a FIFO since the stat, it still returns
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{os.fspath(path)} is {kind_of(mode)}, not a file; name a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_input(url: str | os.PathLike, mode: str = "rb", compression: str | None = None):
    """A user- or data-named file for reading, local or remote, as a context manager: local
    paths through `open_regular`, URLs through fsspec. `compression="infer"` unpacks .gz etc."""
    url = os.fspath(url)
    path = local_path(url)
    if path is None:
        return fsspec.open(url, mode, compression=compression)
    raw = open_regular(path)
    codec = fsspec.core.get_compression(path, compression) if compression else None
    stream = fsspec.compression.compr[codec](raw, mode="rb") if codec else raw
    return io.TextIOWrapper(stream, encoding="utf-8") if "b" not in mode else stream


def open_file(fs, path: str, mode: str = "rb"):
    """A file of an fsspec file system for reading: a local one through `open_input` (regular
    files only, never blocking), any other through fsspec. For the files a folder of ours holds
    (markers, stats, parquet, lock, index), which anyone could have replaced."""
    return open_input(path, mode) if is_local(fs) else fs.open(path, mode)


def read_input(url: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a user- or data-named file, at most `limit` + 1 of them (the caller checks)."""
    with open_input(url) as f:
        return f.read() if limit is None else f.read(limit + 1)


