"""The shard ledger: which shards of an output folder are finished, and the one way a step makes
a shard's files visible.

For shard `00042`: its files (`00042.parquet`, `00042.tar`, ...), `00042_stats.json`, and
`00042.done`, the marker holding the settings, written last. A shard is finished iff its marker
exists; anything else of it is redone on the next run.

`ShardCommit` is one shard's transaction: files written under temporary names unique to the
writer, then the old marker removed, the files renamed in, stats and marker written last. A crash
leaves the old finished shard or a shard without a marker, never a marker beside files it does not
describe. Two writers of one shard never touch each other's temporaries; a crash's are removed
by the folder's next lock holder (atomic.remove_stale_temporaries). `plan` is the one planner;
`require_same_settings` the one settings comparison. `RECAP_CRASH_AFTER_ROWS=N` (tests) exits
like `kill -9` after N rows (docs/failures.md).

Light on purpose: the downloader imports it, and it must not load engines, batching or torch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import IO

from fsspec.core import url_to_fs

from .atomic import temporary_name, write_json_atomic
from .files import NotRegularFile, open_file
from .results import ConfigMismatchError

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".done"
STATS_SUFFIX = "_stats.json"

INPUT_FINGERPRINT = "input_fingerprint"  # in a .done marker: what the shard's input covered
# Marker entries that are no setting: they may differ between shards and runs.
NOT_SETTINGS = ("recaption_version", INPUT_FINGERPRINT)

_commits: Counter = Counter()  # output root -> shards committed there by this process


def commits_in(root: str) -> int:
    """How many shards this process has committed into the folder at `root` (the contract tells
    a run that failed after writing some from one that wrote nothing)."""
    return _commits[root.rstrip("/")]


class OutputDir:
    """Paths and markers of an output folder (local or any fsspec URL)."""

    def __init__(self, url: str):
        self.fs, self.root = url_to_fs(url)
        self.url = url

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def parquet(self, shard: str) -> str:
        return self.path(f"{shard}.parquet")

    def marker(self, shard: str) -> str:
        return self.path(f"{shard}{MARKER_SUFFIX}")

    def stats(self, shard: str) -> str:
        return self.path(f"{shard}{STATS_SUFFIX}")

    def is_done(self, shard: str) -> bool:
        return self.fs.exists(self.marker(shard))

    def open(self, path: str, mode: str = "rb"):
        """A file of this folder for reading; a local one only if it is a regular file (a FIFO
        dropped in place of a marker or stats file is refused, never waited on: spine/files.py)."""
        return open_file(self.fs, path, mode)

    def done_provenance(self, shard: str) -> dict | None:
        """What the shard's marker records (None: not finished, or an unreadable marker)."""
        try:
            with self.open(self.marker(shard), "r") as f:
                marker = json.load(f)
        except (FileNotFoundError, IsADirectoryError, NotRegularFile, ValueError, UnicodeDecodeError,
                RecursionError):  # RecursionError: JSON nested past what Python parses
            return None
        return marker if isinstance(marker, dict) else None  # `[1, 2]`: not a marker we wrote

    def done_names(self) -> list[str]:
        """Names of the finished shards, sorted ([] for a folder that does not exist)."""
        try:
            paths = self.fs.glob(self.path(f"*{MARKER_SUFFIX}"))
        except FileNotFoundError:
            return []
        return sorted(p.rsplit("/", 1)[-1][: -len(MARKER_SUFFIX)] for p in paths)

    def invalidate(self, shard: str, also: tuple[str, ...] = ()) -> None:
        """Forget a shard's completion (before redoing it), marker first, then its stats, parquet
        and the files named in `also` (`"tar"`: `{shard}.tar`, or a file name). Temporary files
        are not touched: they belong to whichever process is writing them (the folder's lock
        holder clears those left by crashed runs, see atomic.remove_stale_temporaries)."""
        files = [self.marker(shard), self.stats(shard), self.parquet(shard)]
        files += [self.path(_file_name(shard, f)) for f in also]
        for path in files:
            if self.fs.exists(path):
                self.fs.rm(path)


def _file_name(shard: str, file: str) -> str:
    """A role (`"parquet"`, `"tar"`: `{shard}.{role}`) or a file name in the folder."""
    name = file if "." in file else f"{shard}.{file}"
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"{file!r}: not a file name in the output folder")
    return name


class ShardCommit:
    """One shard's transaction in `out`: files under temporary names until `commit`.

        commit = ShardCommit(out, "00042")
        with commit.open("parquet") as f:   # written as 00042.parquet.<pid>-<id>.tmp
            pq.write_table(table, f)
        commit.commit(stats, provenance)    # marker removed, renamed, stats, marker last

    `abort()` removes the temporaries (and is a no-op after `commit`). Used as a context
    manager, a block left without `commit` aborts. Until `commit`, an earlier finished output
    of the shard stays as it was."""

    def __init__(self, out: OutputDir, name: str):
        self.out, self.name = out, name
        self._temporaries: dict[str, str] = {}  # final path -> temporary path, in the order made
        self._files: list[IO] = []  # opened through open(): closed before renaming
        self.committed = False
        self.aborted = False
        out.fs.makedirs(out.root, exist_ok=True)

    def final_path(self, file: str) -> str:
        """Where `file` (`"parquet"`, `"tar"` or a file name) appears on commit."""
        name = _file_name(self.name, file)
        if name in (f"{self.name}{MARKER_SUFFIX}", f"{self.name}{STATS_SUFFIX}"):
            raise ValueError(f"{name}: commit() writes the stats and the marker")
        return self.out.path(name)

    def path_for(self, file: str) -> str:
        """The temporary path to write `file` to (the same one each time it is asked for)."""
        self._require_open()
        final = self.final_path(file)
        if final not in self._temporaries:
            self._temporaries[final] = temporary_name(final)
        return self._temporaries[final]

    def open(self, file: str, mode: str = "wb") -> IO:
        """An open file at `path_for(file)`; commit and abort close it if it still is."""
        f = self.out.fs.open(self.path_for(file), mode)
        self._files.append(f)
        return f

    @property
    def temporaries(self) -> list[str]:
        return list(self._temporaries.values())

    def commit(self, stats: dict, provenance: dict) -> None:
        """Make the shard finished: close the files, remove an earlier marker (so no moment
        shows new files as finished under old settings), rename the files into place in the
        order they were first asked for, write the stats, then the marker (last)."""
        self._require_open()
        for f in self._files:
            f.close()
        fs = self.out.fs
        marker = self.out.marker(self.name)
        if fs.exists(marker):
            fs.rm(marker)
        for final, temporary in list(self._temporaries.items()):
            fs.mv(temporary, final)
            del self._temporaries[final]
        write_json_atomic(fs, self.out.stats(self.name), stats)
        write_json_atomic(fs, marker, provenance)
        self.committed = True
        _commits[self.out.root.rstrip("/")] += 1

    def abort(self) -> None:
        """Close and remove the temporaries: nothing a reader could take for output is left.
        Files a failed commit already renamed stay, unmarked: the next run redoes the shard."""
        if self.committed:
            return
        self.aborted = True
        try:
            for f in self._files:
                try:
                    f.close()
                except Exception:  # a file that cannot even be closed is removed all the same
                    log.debug("%s: closing a temporary file failed", self.name, exc_info=True)
        finally:
            for temporary in self._temporaries.values():
                if self.out.fs.exists(temporary):
                    self.out.fs.rm(temporary)
            self._temporaries.clear()

    def _require_open(self) -> None:
        if self.committed or self.aborted:
            state = "committed" if self.committed else "aborted"
            raise RuntimeError(f"shard {self.name}: this commit is already {state}")

    def __enter__(self) -> ShardCommit:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.abort()


def require_same_settings(out: OutputDir, name: str, current: Mapping, marker: Mapping | None = None,
                          added_later: Mapping | None = None, *, only_current: bool = False) -> None:
    """The one comparison of a unit's settings with its marker: ConfigMismatchError when shard
    `name` in `out` was made with other settings (its .done marker, read here unless given). The
    recaption version and the input fingerprint may differ; a setting of `added_later` missing
    from the marker counts as the value given there (output made before it was recorded).
    `only_current`: compare just the settings named in `current` (a step whose markers also
    carry its input's settings, as filter's and export's do)."""
    marker = out.done_provenance(name) if marker is None else marker
    if marker is None:
        raise ConfigMismatchError(
            f"{out.url}: the marker of shard {name} ({name}{MARKER_SUFFIX}) is unreadable; "
            "use --overwrite to redo the shard, or another output folder"
        )
    marker = {**{k: v for k, v in (added_later or {}).items() if k in current}, **marker}
    previous = {k: v for k, v in marker.items() if k not in NOT_SETTINGS}
    current = {k: v for k, v in current.items() if k not in NOT_SETTINGS}
    if only_current:
        previous = {k: previous.get(k) for k in current}
    if previous != current:
        changed = sorted(k for k in current.keys() | previous.keys() if current.get(k) != previous.get(k))
        shown = "; ".join(describe_differences(previous, current, changed)[:3])
        raise ConfigMismatchError(
            f"{out.url} holds shard {name} made with other settings "
            f"({', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'}: {shown}); "
            "use --overwrite or another output folder"
        )


def describe_differences(previous: Mapping, current: Mapping, keys: list[str] | None = None,
                         prefix: str = "") -> list[str]:
    """`key X there, Y now` per differing setting (of `keys`, else all); nested ones by their keys."""
    if keys is None:
        keys = sorted(k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k))
    said = []
    for k in keys:
        then, now = previous.get(k), current.get(k)
        if isinstance(then, Mapping) and isinstance(now, Mapping):
            inner = sorted(j for j in then.keys() | now.keys() if then.get(j) != now.get(j))
            said += describe_differences(then, now, inner, f"{prefix}{k}.")
        else:
            said.append(f"{prefix}{k} {_short(then)} there, {_short(now)} now")
    return said


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plan(out: OutputDir, names: Iterable[str], current: Mapping | Callable[[str], Mapping], *,
         added_later: Mapping | None = None, only_current: bool = False, overwrite: bool = False,
         redo: Callable[[str, dict], str | None] | None = None) -> tuple[list[str], list[str]]:
    """The one planner: split `names` into (to do, done) against their markers in `out`.

    A unit without a marker is to do; one with a marker made with other settings is refused
    (ConfigMismatchError: mixing them would corrupt the folder); `redo(name, marker)` may give a
    reason to do a finished unit again (its input changed, it holds failed rows), logged.
    `current` may be a function of the name, for settings that differ by unit. With
    `overwrite` everything is to do. A unit being redone keeps its output until the new commit."""
    names = list(names)
    if overwrite:
        return names, []
    todo, done = [], []
    for name in names:
        if not out.is_done(name):
            todo.append(name)
            continue
        marker = out.done_provenance(name)
        settings = current(name) if callable(current) else current
        require_same_settings(out, name, settings, marker, added_later, only_current=only_current)
        reason = redo(name, marker) if redo else None
        if reason:
            log.warning("%s: %s", name, reason)  # (the reason says what is done again)
            todo.append(name)
        else:
            done.append(name)
    return todo, done


# Crash points: RECAP_CRASH_AFTER_ROWS=N ends the process the way kill -9 does, at a known point.
CRASH_AFTER_ROWS = "RECAP_CRASH_AFTER_ROWS"
CRASH_EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL
_rows_handed = 0
_rows_lock = threading.Lock()


def rows_handed(n: int) -> None:
    """Shard writers call this right after taking `n` rows. With RECAP_CRASH_AFTER_ROWS=N in the
    environment, the process exits at once (os._exit(137): no cleanup, no flush, no lock
    release but the OS's) as soon as N rows have been handed to shard writers in it; the rows
    of the batch that reaches N are handed, nothing after them. Without it, this does nothing."""
    limit = os.environ.get(CRASH_AFTER_ROWS)
    if not limit:
        return
    try:
        after = int(limit)
    except ValueError:
        raise ValueError(f"{CRASH_AFTER_ROWS}={limit!r}: not a whole number of rows") from None
    global _rows_handed
    with _rows_lock:
        _rows_handed += n
        if _rows_handed >= after:
            os._exit(CRASH_EXIT_CODE)
