"""The download run: plan shards from the metadata stream, fetch concurrently, write, resume.

Row i of the input (all files, in order) goes to shard i // shard_size, so a rerun plans the same
shards: complete ones (marker present, same settings) are skipped, the rest redone. Rows of a
complete shard that may now succeed (--retry-failed's, or those a since loosened fetch-policy
setting refused) are fetched again and merged in by key; tightening a setting is refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import TypeVar

import cv2
import pyarrow.parquet as pq

from ..executors import executor_module
from ..readers.base import UniqueKeys
from ..readers.lookup import index_shard
from ..redact import redact, strip_url_secrets
from ..samples.placeholders import (
    list_provenance,
    listed_message,
    read_placeholder_list,
    repeated_placeholders,
)
from ..samples.shards import img2dataset_key
from ..samples.tars import member_key
from ..spine import __version__
from ..spine.contract import Step, check_output, is_output_failure, marker_has, open_output
from ..spine.ledger import OutputDir, require_same_settings
from ..spine.results import DONE, FAILED, SKIPPED, ConfigMismatchError, Progress, RunSummary, ShardResult
from . import outcomes as oc
from .config import DownloadConfig
from .fetch import Fetcher
from .metadata import ChosenColumns, MetadataReader, UrlRow, expand_metadata_inputs
from .process import ProcessError, process_image
from .writer import DownloadShardWriter

T = TypeVar("T")


def run_event_loop(main: Coroutine[object, object, T]) -> T:
    """`asyncio.run` on uvloop's loop where installed: 4-6% off a download (docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# A download shard reports like a caption shard: ShardResult.status_counts counts outcomes.
DownloadSummary = RunSummary


def download(inputs: list[str], config: DownloadConfig, progress: Progress | None = None,
             columns: ChosenColumns | None = None, executor: str = "local",
             ray_address: str | None = None) -> DownloadSummary:
    """Download every URL of `inputs` into `config.output` (`columns`: `choose_columns`'s, else
    chosen here), on any executor with a `download_shards` (local, ray at `ray_address`): the same
    files either way. Raises InputError (bad input, a named column missing), ConfigMismatchError
    (shards made with other settings) and atomic.OutputLockedError (another run writes there)."""
    download_shards = getattr(executor_module(executor), "download_shards", None)  # unknown: one line
    if download_shards is None:
        raise ValueError(f"--executor {executor}: runs no downloads; use local or ray")
    reader = MetadataReader(config.url_col, config.caption_col, config.sha256_col, config.extra_cols)
    paths = expand_metadata_inputs(inputs)
    reader.chosen = columns or reader.choose(paths)
    placeholders = read_placeholder_list(config.placeholders)  # a bad list: one line, no folder made
    # The output contract: never among the metadata files or in another step's folder, one run at a
    # time; temporaries a worker killed mid-shard (Ray) leaves are removed when the run ends.
    with open_output(config.output, DOWNLOAD, paths):
        run = ShardDownloads(config, reader.chosen, progress or Progress(), placeholders)
        planned = run.plan(reader.read(paths))
        return download_shards(planned, run, ray_address)


# What `recap download` writes (the output contract). Downloads made before --key-format were keyed
# the img2dataset way; before --resample, Lanczos from a full decode (within a dB or two of auto's).
DOWNLOAD = Step("download", recognise=marker_has("url_col", "shard_size"),
                added_later={"key_format": "img2dataset", "id_col": "uid", "resample": "auto",
                             "placeholders": None})


def choose_columns(inputs: list[str], config: DownloadConfig) -> ChosenColumns:
    """The columns `download` will read (InputError when a named one is missing), after the output
    contract's checks, so a refused output is the only line a refused run prints."""
    paths = expand_metadata_inputs(inputs)
    check_output(config.output, DOWNLOAD, paths)
    reader = MetadataReader(config.url_col, config.caption_col, config.sha256_col, config.extra_cols)
    return reader.choose(paths)


DEFAULT_POLICY = DownloadConfig(output="").fetch_policy()  # what markers without one were made with
_POLICY_FLAGS = {
    "allow_private_network": lambda v: "--allow-private-network" if v else "private addresses refused",
    "disallowed_directives": lambda v: "--respect-opt-out" if v else "--no-respect-opt-out",
    "max_bytes": lambda v: f"--max-bytes {v}",
    "placeholder_min_urls": lambda v: f"--placeholder-min-urls {v}",
}


def policy_change(previous: dict, current: dict) -> tuple[list[str], list[str]]:
    """(loosened, tightened) fetch-policy settings between a shard's marker and this run."""
    loosened, tightened = [], []
    for key, now in current.items():
        before = previous.get(key, now)
        if before == now:
            continue
        if key == "disallowed_directives":
            looser = set(now) < set(before)
        elif isinstance(now, bool):
            looser = now and not before
        elif key == "placeholder_min_urls":  # 0: never a placeholder, the loosest
            looser = now == 0 or (before != 0 and now > before)
        else:
            looser = before is not None and (now is None or now > before)
        (loosened if looser else tightened).append(key)
    return loosened, tightened


@dataclass(frozen=True)
class Refetch:
    """Which rows of a complete shard a rerun fetches again (plain data: it travels to Ray)."""

    outcomes: frozenset
    retry_failed: bool

    def __call__(self, row: dict) -> bool:
        return row["outcome"] in self.outcomes or (
            self.retry_failed and oc.retry_on_rerun(row["outcome"], row["http_status"]))


@dataclass
class PlannedShard:
    shard_id: int
    rows: list[UrlRow]
    again: Refetch | None  # None: download the whole shard

    @property
    def name(self) -> str:
        return f"{self.shard_id:05d}"


class ShardDownloads:
    """Plans shards against the output folder and downloads them, in this process (`run_here`)
    or, pickled, in Ray workers (`download_shard`)."""

    def __init__(self, config: DownloadConfig, columns: ChosenColumns, progress: Progress,
                 placeholders: frozenset[str] = frozenset()):
        self.cfg = config
        self.progress = progress
        self.out = OutputDir(config.output)
        self.columns = columns
        self.placeholders = placeholders  # sha256 digests of --placeholders, read by `download`
        self.index_digits = len(str(config.shard_size - 1))
        # The columns actually read (a found caption column under its name), so a rerun that
        # finds another column is refused rather than mixing captions from two columns.
        self.provenance = {**config.provenance(), "caption_col": columns.caption,
                           "sha256_col": columns.sha256, "placeholders": list_provenance(placeholders),
                           "recaption_version": __version__}
        self.policy = config.fetch_policy()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "progress": Progress()}  # a Ray worker reports by its result

    def plan(self, rows: Iterator[UrlRow]) -> Iterator[PlannedShard | ShardResult]:
        """Each shard of the metadata stream, in order: planned to download, or the SKIPPED
        result of a complete one. Lazy: at most one shard's rows are read ahead."""
        for shard_id, chunk in enumerate(iter(lambda: list(islice(rows, self.cfg.shard_size)), [])):
            shard = PlannedShard(shard_id, chunk, None)
            if self.out.is_done(shard.name) and not self.cfg.overwrite:  # --overwrite redoes it
                shard.again = self._rows_to_fetch_again(shard.name)
                if shard.again is None:
                    yield ShardResult(shard.name, shard.name, SKIPPED)
                    continue
            yield shard

    def run_here(self, planned: Iterator[PlannedShard | ShardResult]) -> DownloadSummary:
        """Every planned shard in this process, `shards_in_flight` at a time."""
        return run_event_loop(self._run_here(planned))

    async def _run_here(self, planned: Iterator[PlannedShard | ShardResult]) -> DownloadSummary:
        summary = DownloadSummary()
        self.progress.run_started([])
        shard_slots = asyncio.Semaphore(self.cfg.shards_in_flight)
        tasks: list[asyncio.Task] = []
        async with self._session():
            try:
                for item in planned:
                    if isinstance(item, ShardResult):
                        summary.results.append(item)
                        continue
                    await shard_slots.acquire()  # at most shards_in_flight shards' rows in memory
                    if any(t.done() and not t.cancelled() and t.exception() for t in tasks):
                        break  # the output failed under a shard (a full disk): start no more
                    task = asyncio.create_task(self._shard(item))
                    task.add_done_callback(lambda _t: shard_slots.release())
                    tasks.append(task)
                summary.results += await asyncio.gather(*tasks)
            finally:  # while the connections and threads are still open
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return summary

    def download_shard(self, shard: PlannedShard) -> ShardResult:
        """One shard, start to finish, with its own connections (a Ray worker's task)."""

        async def alone() -> ShardResult:
            async with self._session():
                return await self._shard(shard)

        return run_event_loop(alone())

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[None]:
        """Connections, the image-processing threads and the bound on rows in flight."""
        self.rows_in_flight = asyncio.Semaphore(2 * self.cfg.concurrency)  # bounds images in memory
        self.pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="recap-image")
        # These threads are the parallelism: OpenCV's own threads inside each resize only
        # oversubscribed the cores (2-4% slower, measured alternating), as img2dataset found.
        cv2.setNumThreads(1)
        self.committer = ThreadPoolExecutor(1, thread_name_prefix="recap-commit")
        try:
            async with Fetcher(self.cfg) as self.fetcher:
                yield
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.committer.shutdown(wait=True)

    def _rows_to_fetch_again(self, name: str) -> Refetch | None:
        """For a complete shard: which of its rows this run fetches again (None: none, skip it).
        Raises ConfigMismatchError when it was made with other settings, or a stricter policy
        setting than this run's."""
        marker = self.out.done_provenance(name)
        if marker is None:
            require_same_settings(self.out, name, self.provenance, marker)  # unreadable: said so
        marker = dict(marker)
        previous_policy = marker.pop("fetch_policy", None)
        if previous_policy is None:  # made before markers held the policy (and found columns)
            previous_policy = DEFAULT_POLICY
            found_none = self.cfg.caption_col is None and self.columns.caption is None
            if found_none and marker.get("caption_col") == "text":
                marker["caption_col"] = None  # the old default, on metadata without it: no captions
        require_same_settings(self.out, name, self.provenance, marker, DOWNLOAD.added_later)
        loosened, tightened = policy_change(previous_policy, self.policy)
        if tightened:
            key = tightened[0]
            said = _POLICY_FLAGS.get(key, lambda v, key=key: f"{key}={v}")
            before = said(previous_policy[key])
            raise ConfigMismatchError(
                f"{redact(self.out.url)} holds shard {name} downloaded with {before} (this run: "
                f"{said(self.policy[key])}); rerun with {before}, or use --overwrite to download again"
            )
        outcomes = frozenset(oc.POLICY_OUTCOMES[k] for k in loosened if k in oc.POLICY_OUTCOMES)
        if not outcomes and not self.cfg.retry_failed:
            return None
        return Refetch(outcomes, self.cfg.retry_failed)

    async def _shard(self, shard: PlannedShard) -> ShardResult:
        name, again, started = shard.name, shard.again, time.perf_counter()
        retrying = again is not None
        if not retrying:  # marker first, then stats, parquet and tar (temporaries are their writers')
            self.out.invalidate(name, also=("tar",))
        writer = DownloadShardWriter(self.out, name, list(self.columns.extra),
                                     save_caption=self.columns.caption is not None)
        try:
            todo = list(zip(self._keys(shard.shard_id, shard.rows), shard.rows, strict=True))
            if retrying:
                todo = self._carry_over(writer, name, todo, again)
                if todo is None:
                    writer.abort()
                    return ShardResult(name, name, SKIPPED)
            await asyncio.gather(*(self._one(writer, key, row) for key, row in todo))
            # Off the event loop (the tar rewrite, the parquet, the first one's imports: 0.3 s), so
            # the other shard in flight keeps fetching meanwhile.
            counts, seconds = await self._off_loop(
                partial(self._commit, writer, started, retried=len(todo) if retrying else None)
            )
        except BaseException as exc:
            writer.abort()
            if isinstance(exc, Exception) and not is_output_failure(exc, self.out.url):
                result = ShardResult(name, name, FAILED, error=redact(f"{type(exc).__name__}: {exc}"),
                                     seconds=time.perf_counter() - started)
                self.progress.shard_finished(result)
                return result
            raise
        # Where each sample lies in the tar, for `recap lookup`: after the commit (a cache, whose
        # failure never touches the shard), from the offsets the writer wrote at.
        await self._off_loop(partial(index_shard, self.cfg.output, name, writer.members))
        result = ShardResult(name, name, DONE, len(writer.rows), dict(counts), seconds)
        self.progress.shard_finished(result)
        return result

    def _commit(self, writer: DownloadShardWriter, started: float, retried: int | None
                ) -> tuple[Counter, float]:
        """Placeholders out of the tar, then the shard's files and marker (in a thread)."""
        repeated = repeated_placeholders(list(writer.rows.values()), self.cfg.placeholder_min_urls)
        writer.mark(repeated, oc.PLACEHOLDER, oc.status_of(oc.PLACEHOLDER))
        counts = Counter(r["outcome"] for r in writer.rows.values())
        seconds = time.perf_counter() - started
        statuses = Counter(r["status"] for r in writer.rows.values())
        errors = Counter(r["error_message"] for r in writer.rows.values() if r["error_message"])
        stats = {
            "count": len(writer.rows),
            "successes": statuses.get(oc.SUCCESS, 0),
            "failed_to_download": statuses.get(oc.FAILED_TO_DOWNLOAD, 0),
            "failed_to_resize": statuses.get(oc.FAILED_TO_RESIZE, 0),
            "duration": round(seconds, 3),
            "outcomes": dict(sorted(counts.items())),
            "status_dict": dict(errors.most_common(20)),
            "retried_rows": retried,
            "url_secrets": "kept" if self.cfg.keep_url_secrets else "removed",
            **self.provenance,
        }
        writer.commit(stats, {**self.provenance, "fetch_policy": self.policy})
        return counts, seconds

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """`work` in the commit thread. Cancelled meanwhile (Ctrl-C), it is waited for first: a
        commit is never aborted half-way by the caller's clean-up."""
        future = self.committer.submit(work)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            concurrent.futures.wait([future])
            raise

    def _carry_over(self, writer: DownloadShardWriter, name: str, todo: list, again: Refetch) -> list | None:
        """Keep a done shard's rows; return the (key, row) pairs to fetch again (None: none)."""
        with self.out.open(self.out.parquet(name)) as f:
            previous = {r["key"]: r for r in pq.read_table(f).to_pylist()}
        redo = {k for k, r in previous.items() if again(r)}
        if not redo:
            return None
        for key, row in previous.items():
            if key not in redo:
                writer.rows[key] = {**row, "error_message": redact(row.get("error_message"))}
        writer.copy_samples(writer.tar_path, {k for k, r in previous.items() if r["outcome"] == oc.OK})
        return [(key, row) for key, row in todo if key in redo]

    def _keys(self, shard_id: int, rows: list[UrlRow]) -> list[str]:
        """Each row's key (--key-format): img2dataset's by position, or one that survives
        resharding (the row's id, a hash of its URL), unique within the shard and fit for a tar
        member name (samples.tars.member_key)."""
        fmt = self.cfg.key_format
        if fmt == "img2dataset":
            return [img2dataset_key(shard_id, i, index_digits=self.index_digits) for i in range(len(rows))]
        unique = UniqueKeys()
        keys = []
        for i, row in enumerate(rows):
            value = row.extra.get(self.cfg.id_col) if fmt == "id" else row.url
            if value in (None, ""):  # no id (or no url): the position, said by its prefix
                base = f"row-{img2dataset_key(shard_id, i, index_digits=self.index_digits)}"
            elif fmt == "id":
                base = member_key(str(value))
            else:
                base = hashlib.sha256(str(value).encode()).hexdigest()[:20]
            keys.append(unique(base))
        return keys

    async def _one(self, writer: DownloadShardWriter, key: str, row: UrlRow) -> None:
        async with self.rows_in_flight:
            fetched = await self.fetcher.fetch(row.url)
            record = {
                "key": key,
                "url": row.url if self.cfg.keep_url_secrets else strip_url_secrets(row.url),
                "caption": row.caption,
                **dict.fromkeys(("status", "error_message", "width", "height", "original_width",
                                 "original_height", "sha256")),
                "outcome": fetched.outcome,
                "http_status": fetched.http_status,
                "attempts": fetched.attempts,
                **{c: row.extra.get(c) for c in self.columns.extra},
            }
            image = ext = None
            if fetched.outcome == oc.OK:
                try:
                    stored = await asyncio.get_running_loop().run_in_executor(
                        self.pool, process_image, fetched.data, row.sha256, self.cfg, fetched.content_type)
                except ProcessError as exc:
                    record.update(outcome=exc.outcome, error_message=redact(str(exc)), sha256=exc.sha256)
                else:
                    if stored.sha256 not in self.placeholders:
                        image, ext = stored.data, stored.ext
                    else:
                        record.update(outcome=oc.PLACEHOLDER, error_message=listed_message(stored.sha256))
                    record.update(width=stored.width, height=stored.height, sha256=stored.sha256,
                                  original_width=stored.original_width,
                                  original_height=stored.original_height)
            else:
                record["error_message"] = redact(fetched.error)  # URL credentials, signed queries
            record["status"] = oc.status_of(record["outcome"])
            writer.add(record, image, ext)
            self.progress.rows_done(1, int(image is not None))
