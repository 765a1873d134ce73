"""The output contract: the one way every command that writes a folder opens it.

    with open_output(destination, CAPTION, inputs=[...]) as out:   # an OutputDir
        ...  # plan units (ledger.plan), write them through ledger.ShardCommit

`open_output`, in this order, before anything is written:
  1. refuses an output that is, contains, or lies inside one of the inputs (writing there would
     overwrite input files, or be read back as input by the next run);
  2. refuses a folder holding files recaption did not write (an img2dataset folder, a folder of
     photos), and recaption output of another step (an export into a caption folder), unless the
     step adopts it (`recap score` works in caption output);
  3. takes the folder's lock (one writer at a time) and removes temporaries crashed runs left;
  4. stamps a new folder with the step that made it (`.recap-output.json`).
Every OS error about the output (read-only, full disk, no permission, a parent that is a file)
raised in the block becomes one `OutputWriteError` line naming the path and the fix, exit code 2,
or 1 when shards of this run were already committed (a rerun resumes from them).

Output written before stamps existed is recognised by the step's own test (`Step.recognise`:
its markers say which step made it), so older output still resumes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from fsspec.core import url_to_fs

from .atomic import (
    LOCK_NAME,
    is_temporary,
    output_lock,
    remove_stale_temporaries,
    write_json_atomic,
    write_to_url_atomic,
)
from .errors import RecaptionError
from .files import NotRegularFile, is_local
from .ledger import MARKER_SUFFIX, STATS_SUFFIX, OutputDir, commits_in

log = logging.getLogger(__name__)

STAMP_NAME = ".recap-output.json"


@dataclass(frozen=True)
class Step:
    """What a command writes, as the contract and the planner need to know it.

    `adopts`: other steps whose folders this one works in (score and judge rewrite caption
    output in place). `recognise(out)`: is a folder without a stamp (older output) this step's?
    `added_later`: settings its markers record only since a later version, with the value older
    output was made with (a marker without one compares equal when the run uses that value).
    `creates`: False for steps that only work in an existing output (score, judge).
    `always_recognise`: the stamp is not enough, `recognise` must hold too (steps that replace
    a whole folder, generate and shapes: a file dropped into it is not theirs to remove)."""

    name: str
    adopts: tuple[str, ...] = ()
    recognise: Callable[[OutputDir], bool] | None = None
    added_later: Mapping[str, object] = field(default_factory=dict)
    creates: bool = True
    always_recognise: bool = False

    @property
    def command(self) -> str:
        return f"recap {self.name}"


class OutputError(RecaptionError, ValueError):
    """The output folder cannot be used as asked; the message names it and the fix."""

    exit_code = 2


class OutputAmongInputsError(OutputError):
    """The output is, contains, or lies inside an input."""


class ForeignOutputError(OutputError):
    """The output holds files recaption did not write, or another step's output."""


class OutputWriteError(OutputError):
    """An OS error at the output (read-only, full, no permission, a missing parent)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


# -- where things are -------------------------------------------------------------------------------


def location(url: str) -> str:
    """A folder's or file's identity for comparisons: an absolute, link-resolved local path, or
    a URL with its protocol (no trailing slash)."""
    try:
        fs, path = url_to_fs(url)
    except (ImportError, ValueError):  # a protocol whose file system is not installed: as written
        return url.rstrip("/")
    if is_local(fs):
        return os.path.realpath(path)
    return fs.unstrip_protocol(path.rstrip("/"))


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/" + os.sep) + ("/" if "://" in folder else os.sep))


def refuse_among_inputs(output: str, inputs: Iterable[str]) -> None:
    """OutputAmongInputsError when `output` is, contains, or lies inside one of `inputs` (files or
    folders, local or URLs)."""
    target = location(output)
    for given in dict.fromkeys(i for i in inputs if i):
        place = location(given)
        if place == target:
            how = "is"
        elif _inside(place, target):
            how = "contains"
        elif _inside(target, place):
            how = "lies inside"
        else:
            continue
        raise OutputAmongInputsError(
            f"the output folder {output} {how} the input {given}: writing there would overwrite input "
            "files or be read back as input; choose another output folder"
        )


# -- whose folder it is -----------------------------------------------------------------------------


_OURS = (STAMP_NAME, LOCK_NAME, f"{LOCK_NAME}.excl")
REPORT_NAME = "report.html"  # `recaption.report(OUT)` writes it beside the shards: still our folder
INDEX_NAME = ".recap-index"  # tar indexes (samples/tar_index.py) `recap view` keeps beside the shards


def _entries(out: OutputDir) -> list[str]:
    """Names in the folder ([] when it does not exist)."""
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in out.fs.ls(out.root, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _not_ours(names: list[str]) -> list[str]:
    """What a folder holds beside our stamp, lock and our own temporaries: a user's `draft.tmp`
    or `.git` counts (never adopted, never removed)."""
    return [n for n in names if n not in (*_OURS, REPORT_NAME, INDEX_NAME) and not is_temporary(n)]


def read_stamp(out: OutputDir) -> dict | None:
    """The folder's stamp ({"step": ...}), None when it has none or an unreadable one."""
    try:
        with out.open(out.path(STAMP_NAME), "r") as f:
            stamp = json.load(f)
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError, IsADirectoryError,
            NotRegularFile, RecursionError):  # RecursionError: JSON nested past Python's limit
        return None
    return stamp if isinstance(stamp, dict) and isinstance(stamp.get("step"), str) else None


def first_marker(out: OutputDir) -> dict | None:
    """The settings in the folder's first readable `.done` marker (older output's fingerprint)."""
    for name in out.done_names():
        marker = out.done_provenance(name)
        if marker is not None:
            return marker
    return None


def marker_has(*keys: str, without: tuple[str, ...] = ()) -> Callable[[OutputDir], bool]:
    """A `Step.recognise` for older output: its first marker records every one of `keys` and
    none of `without` (caption output that `recap filter` made records `filter` too)."""

    def recognise(out: OutputDir) -> bool:
        marker = first_marker(out)
        return marker is not None and all(k in marker for k in keys) and not any(k in marker for k in without)

    return recognise


def holds_only(*names: str) -> Callable[[OutputDir], bool]:
    """A `Step.recognise` for a folder of folders (`recap run`: images/ and captions/): it holds
    nothing but these."""

    def recognise(out: OutputDir) -> bool:
        return set(_not_ours(_entries(out))) <= set(names)

    return recognise


def refuse_foreign(out: OutputDir, step: Step) -> None:
    """ForeignOutputError unless the folder is new, empty, this step's (or one it adopts) by its
    stamp, or older output that `step.recognise` takes for its own."""
    names = _entries(out)
    visible = _not_ours(names)
    stamp = read_stamp(out)
    own = (step.name, *step.adopts)
    if stamp is not None and stamp["step"] not in own:
        raise ForeignOutputError(
            f"{out.url} holds the output of `recap {stamp['step']}`, not of `{step.command}`: "
            "choose another output folder"
        )
    if stamp is not None:
        if step.always_recognise and visible and not step.recognise(out):
            raise ForeignOutputError(
                f"{out.url} holds files `{step.command}` did not write beside its own; "
                "move them out or give a new or empty output folder"
            )
        return
    if not visible:
        if not step.creates:
            raise ForeignOutputError(f"{out.url} holds no finished shards of `recap {step.adopts[0]}` "
                                     "({name}.done): give the folder that command wrote")
        return
    if step.recognise is not None and step.recognise(out):
        return
    # An older folder with our lock or markers but not recognised: another step's, or one that
    # stopped before its first marker beside files that may be anyone's. Never written over.
    if LOCK_NAME in names or any(n.endswith(MARKER_SUFFIX) for n in visible):
        raise ForeignOutputError(
            f"{out.url} holds the output of another recaption step, not of `{step.command}` (or files "
            "beside one that never finished): choose another output folder"
        )
    raise ForeignOutputError(
        f"{out.url} holds files recaption did not write (e.g. {sorted(visible)[0]}); "
        "give a new or empty output folder"
    )


# -- OS errors at the output ------------------------------------------------------------------------

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FIXES = {
    errno.EROFS: "the file system is read-only: choose a writable output folder",
    errno.ENOSPC: "the disk is full: free space there or choose another output folder",
    errno.EDQUOT: "the disk quota is used up: free space there or choose another output folder",
    errno.EFBIG: "the file is too large for that file system: choose another output folder",
    errno.EACCES: "no permission to write there: choose a folder you can write to",
    errno.EPERM: "no permission to write there: choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another output folder",
    errno.ENOENT: "a folder on the path is missing: create it or choose another output folder",
    errno.EEXIST: "something that is not a folder is in the way: choose another output folder",
    errno.EISDIR: "a folder is where a file should be: choose another output folder",
    errno.ENAMETOOLONG: "the name is too long for the file system: choose a shorter output path",
    errno.ELOOP: "the path loops through links: choose another output folder",
}
_ANY = "choose another output folder"


def _about_output(exc: OSError, root: str) -> bool:
    """Is this OS error about the output folder: a path in it (or the folder itself, or a parent
    it could not be made in), or, for a write that names no file, its own disk full or read-only?"""
    names = [os.path.abspath(str(n)) for n in (exc.filename, getattr(exc, "filename2", None)) if n]
    here = os.path.abspath(root)
    if not names:  # a write on an open file: full disks and read-only mounts say no name
        return exc.errno in (*_FULL, errno.EROFS) and _disk_says(here, exc.errno)
    made = [n for n in names if n == here or _temporary_of(n, here)]  # the output itself, being made
    if exc.errno == errno.ENOENT and not made and all(os.path.isdir(os.path.dirname(n)) for n in names):
        return False  # a file that is not there was read (a shard's parquet gone): not the disk's fault
    missing = not os.path.exists(here)
    return any(n == here or _inside(n, here) or _temporary_of(n, here)
               or (missing and _inside(here, n) and not os.path.exists(n))
               or (missing and n == _existing_parent(here)) for n in names)


def _temporary_of(name: str, path: str) -> bool:
    """`name` is a temporary of the file `path` (written beside it, then renamed onto it)."""
    return (name.startswith(path + ".") and is_temporary(name)
            and os.path.dirname(name) == os.path.dirname(path))


def _existing_parent(path: str) -> str:
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        path = parent if parent != path else ""
    return path


def _disk_says(path: str, err: int) -> bool:
    """The output's own file system is full (under 64 MiB free) or mounted read-only."""
    try:
        stat = os.statvfs(_existing_parent(path) or ".")
    except OSError:
        return False
    if err == errno.EROFS:
        return bool(stat.f_flag & os.ST_RDONLY)
    return stat.f_bavail * stat.f_frsize < 64 << 20


@contextmanager
def output_errors(url: str, *, writes_shards: bool = True) -> Iterator[None]:
    """OS errors about `url` raised in the block as one OutputWriteError line (exit code 2, or 1
    when shards were committed there before it failed: a rerun resumes from them; counted only
    for blocks that `writes_shards`)."""
    fs, root = url_to_fs(url)
    before, markers_before = commits_in(root), _markers(url) if writes_shards else 0
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        if not _about_output(exc, root):
            raise
        written = max(commits_in(root) - before, _markers(url) - markers_before if writes_shards else 0)
        path = exc.filename or url
        if _temporary_of(os.path.abspath(str(path)), os.path.abspath(root)):
            path = url  # a file written whole, then renamed: named as the user did
        fix = _FIXES.get(exc.errno, _ANY)
        if exc.errno == errno.ENOENT and os.path.isdir(os.path.dirname(os.path.abspath(str(path)))):
            fix = ("that file system makes no files or folders there (/proc, /sys): "
                   "choose another output folder")
        if written:
            fix += f"; {written} shard(s) were written before this: a rerun resumes from them"
        raise OutputWriteError(f"cannot write to {path}: {exc.strerror or exc}; {fix}",
                               exit_code=1 if written else 2) from None


def is_output_failure(exc: BaseException, url: str) -> bool:
    """An OS error about the output folder `url` itself (full, read-only, gone): a step's per-shard
    handler re-raises it rather than fail one shard of many, and `output_errors` says it in one line."""
    return isinstance(exc, OSError) and _about_output(exc, url_to_fs(url)[1])


def _markers(url: str) -> int:
    """Finished shards in the folder now (worker processes commit too); 0 when it cannot be read."""
    try:
        return len(OutputDir(url).done_names())
    except OSError:
        return 0


# -- the contract -----------------------------------------------------------------------------------


def check_output(url: str, step: Step, inputs: Iterable[str] = ()) -> OutputDir:
    """The contract's checks alone (not among the inputs, not another step's folder), with OS
    errors as one line; nothing is written. Steps that work long before they write (a model
    to load, images to sample) call this first, then `open_output` to write."""
    with output_errors(url, writes_shards=False):
        out = OutputDir(url)
        _refuse_unusable_path(out)
        refuse_among_inputs(url, inputs)
        refuse_foreign(out, step)
        return out


def _refuse_unusable_path(out: OutputDir) -> None:
    """A dangling link, a file where the folder (or a folder on its path) should be, or a
    folder that cannot be written (a read-only mount): one line, before any work."""
    if not is_local(out.fs):
        return
    path = os.path.abspath(out.root)
    if os.path.islink(path) and not os.path.exists(path):
        raise OutputError(f"the output folder {out.url} is a link to nothing ({os.readlink(path)}); "
                          "choose another output folder")
    place = _existing_parent(path)
    if place and not os.path.isdir(place):
        where = "is a file" if place == path else f"lies under {place}, which is a file"
        raise OutputError(f"the output folder {out.url} {where}, not a folder; choose another output folder")
    if place and not os.access(place, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {out.url}: {place} is not writable (read-only or no permission); "
                          "choose a folder you can write to")


@contextmanager
def open_output(url: str, step: Step, inputs: Iterable[str] = ()) -> Iterator[OutputDir]:
    """The output folder `url` for `step`, checked, locked and cleared of stale temporaries (see
    the module's docstring); temporaries this run leaves are removed when the block ends."""
    out = check_output(url, step, inputs)
    with output_errors(url), output_lock(url, step.command):
        refuse_foreign(out, step)  # again under the lock: another run may have written meanwhile
        _stamp(out, step)
        remove_stale_temporaries(out.fs, out.root)  # ours alone now: left by crashed runs
        try:
            yield out
        finally:
            # However the run ends, none of its temporaries outlives it (a stop signal can land
            # between a writer opening its file and taking note of it).
            try:
                remove_stale_temporaries(out.fs, out.root)
            except OSError as exc:
                log.warning("%s: temporaries not removed (%s)", url, exc)


def write_file_output(url: str, data: bytes | str, *, what: str, suffixes: tuple[str, ...],
                      inputs: Iterable[str] = ()) -> None:
    """One file a command writes (a report, a stats export), through the same rules as folders:
    never a folder, special file or input; never a file of another kind (`suffixes`: a report is
    `.html`) or one the ledger keeps (a shard's stats, marker, stamp); OS errors as one line."""
    with output_errors(url, writes_shards=False):
        place = location(url)
        name = place.rstrip("/").rsplit("/", 1)[-1]
        taken = next((given for given in inputs if location(given) == place), None)
        if taken is not None:
            raise OutputAmongInputsError(f"{url} is the input {taken}; choose another file")
        if not name.lower().endswith(suffixes) or _ledger_file(name):
            raise OutputError(f"{url}: a {what} is written to a {' or '.join(suffixes)} file of its own; "
                              "choose another file name")
        fs, path = url_to_fs(url)
        if fs.exists(path) and not fs.isfile(path):  # a folder, a FIFO, a device
            raise OutputError(f"{url} is not a regular file: choose another file name")
        write_to_url_atomic(url, data)


def _ledger_file(name: str) -> bool:
    return name.endswith((MARKER_SUFFIX, STATS_SUFFIX)) or name in _OURS or is_temporary(name)


def _stamp(out: OutputDir, step: Step) -> None:
    """Mark a folder this step makes (or older output of it) as its own; adopted folders keep
    the stamp of the step that made them."""
    if step.creates and read_stamp(out) is None:
        out.fs.makedirs(out.root, exist_ok=True)
        write_json_atomic(out.fs, out.path(STAMP_NAME), {"step": step.name})
