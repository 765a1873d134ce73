"""Every file recaption writes goes through here: written under a temporary name unique to this
process, then renamed, so a reader sees the old file or the new one, never half of one, and two
processes never rename each other's files. An output folder has one writer at a time
(`output_lock`)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from fsspec.core import url_to_fs

from .errors import RecaptionError
from .files import NotRegularFile, kind_of, open_file

TMP_SUFFIX = ".tmp"
LOCK_NAME = ".recap.lock"


log = logging.getLogger(__name__)


_TEMPORARY = re.compile(r"\.\d+-[0-9a-f]{8}" + re.escape(TMP_SUFFIX) + "$")


def temporary_name(path: str) -> str:
    """`path` + a suffix no other process (or other writer in this one) uses."""
    return f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"


def is_temporary(name: str) -> bool:
    """A name `temporary_name` made (`x.parquet.<pid>-<8 hex>.tmp`): never a user's `draft.tmp`."""
    return bool(_TEMPORARY.search(name))


@contextmanager
def open_atomic(fs, path: str, mode: str = "wb") -> Iterator:
    """Write `path` through a file object; it appears whole when the block ends without error,
    and not at all otherwise."""
    tmp = temporary_name(path)
    try:
        with fs.open(tmp, mode) as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_bytes_atomic(fs, path: str, data: bytes) -> None:
    with open_atomic(fs, path, "wb") as f:
        f.write(data)


def write_text_atomic(fs, path: str, text: str) -> None:
    write_bytes_atomic(fs, path, text.encode("utf-8"))


def write_json_atomic(fs, path: str, payload) -> None:
    write_text_atomic(fs, path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def write_to_url_atomic(url: str, data: bytes | str) -> None:
    """One file at a local path or fsspec URL (reports, stats exports)."""
    fs, path = url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    write_bytes_atomic(fs, path, data.encode("utf-8") if isinstance(data, str) else data)


class _NoFlock(OSError):
    """flock is not supported where the output folder lives."""


class OutputLockedError(RecaptionError, RuntimeError):
    """Another process is writing to this output folder."""


def _lock_owner(info: dict) -> str:
    return (
        f"pid {info.get('pid', '?')} on {info.get('host', '?')}, "
        f"`{info.get('command', 'recap')}` since {info.get('started', '?')}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def output_lock(url: str, command: str = "recap") -> Iterator[None]:
    """Hold the output folder's lock for the block; raise OutputLockedError if another process holds
    it. Released on any exit. Local folders use flock, which the OS releases when a process dies,
    so a crash never leaves a stale lock. On object stores (no flock) the lock is a file created
    exclusively; a lock left by a dead process on this host is taken over, one from another host
    is named with how to remove it."""
    fs, root = url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    path = f"{root.rstrip('/')}/{LOCK_NAME}"
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        try:
            with _flock(path, info, url):
                yield
            return
        except _NoFlock:  # raised before the block runs: no flock here (NFS mounted nolock, ...)
            log.warning("%s: no flock on this file system; locking with an exclusive file instead", url)
            path += ".excl"
    with _exclusive_file_lock(fs, path, info, url):
        yield


@contextmanager
def _flock(path: str, info: dict, url: str) -> Iterator[None]:
    import fcntl

    # Never through a link (a planted `.recap.lock -> /etc/x` would be truncated), never a FIFO.
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):  # a link (O_NOFOLLOW), a socket
            raise
        fd = None
    try:
        st = os.fstat(fd) if fd is not None else os.lstat(path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    # A hard link would be another file's name too: truncating it would truncate that file.
    if fd is None or not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        if fd is not None:
            os.close(fd)
        what = ("a link" if stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)
                else kind_of(st.st_mode))
        raise OutputLockedError(f"{path} is {what}, not the lock file this toolkit writes: remove it, "
                                "then run again")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise _NoFlock(exc.errno, str(exc)) from None
            if not isinstance(exc, BlockingIOError):
                raise
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except json.JSONDecodeError:
                holder = {}
            raise OutputLockedError(
                f"another run is writing to {url} ({_lock_owner(holder)}); "
                "wait for it to finish or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _exclusive_file_lock(fs, path: str, info: dict, url: str) -> Iterator[None]:
    for _attempt in range(2):
        try:
            with fs.open(path, "xb") as f:
                f.write(json.dumps(info).encode())
            break
        except FileExistsError:
            try:
                with open_file(fs, path) as f:  # a FIFO in its place is refused, never waited on
                    holder = json.loads(f.read() or b"{}")
            except (FileNotFoundError, NotRegularFile, json.JSONDecodeError):
                holder = {}
            stale = holder.get("host") == info["host"] and not _pid_alive(int(holder.get("pid", 0) or 0))
            if stale:
                fs.rm(path)
                continue
            raise OutputLockedError(
                f"another run is writing to {url} ({_lock_owner(holder)}); wait for it, or if it "
                f"crashed, delete {fs.unstrip_protocol(path)}"
            ) from None
    try:
        yield
    finally:
        if fs.exists(path):
            fs.rm(path)


def remove_stale_temporaries(fs, root: str) -> list[str]:
    """Delete temporary files left in an output folder by crashed runs. Call only while holding
    the folder's lock: then no other process has a temporary file there."""
    stale = [p for p in fs.find(root, maxdepth=1, withdirs=True) if is_temporary(p.rstrip("/"))]
    for path in stale:
        fs.rm(path, recursive=True)
    return stale
