"""The download run: plan shards from the metadata stream, fetch concurrently, write, resume.

Row i of the input (all files, in order) goes to shard i // shard_size with img2dataset's key
(shard id, then index in the shard, zero-padded), so a rerun plans the same shards: complete
ones (marker present, same settings) are skipped, the rest redone from scratch. With
`retry_failed`, complete shards have their transient failures (timeouts, connection errors,
429, 5xx) fetched again and merged in by key: no duplicates, nothing else touched.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import pyarrow.parquet as pq

from .. import __version__
from ..pipeline import DONE, FAILED, SKIPPED, Progress, RunSummary, ShardResult, require_same_settings
from ..shards import img2dataset_key
from ..writer import OutputDir
from . import outcomes as oc
from .config import DownloadConfig
from .fetch import Fetcher
from .metadata import MetadataReader, UrlRow
from .process import ProcessError, process_image
from .writer import DownloadShardWriter, forget_shard, shard_paths

# A download shard reports like a caption shard: ShardResult.status_counts counts outcomes.
DownloadSummary = RunSummary


def download(inputs: list[str], config: DownloadConfig, progress: Progress | None = None) -> DownloadSummary:
    """Download every URL of `inputs` into `config.output`; see the module docstring."""
    return asyncio.run(_Run(inputs, config, progress or Progress()).run())


def plan(rows: Iterator[UrlRow], shard_size: int) -> Iterator[tuple[int, list[UrlRow]]]:
    shard_id = 0
    while chunk := list(islice(rows, shard_size)):
        yield shard_id, chunk
        shard_id += 1


class _Run:
    def __init__(self, inputs: list[str], config: DownloadConfig, progress: Progress):
        self.inputs = inputs
        self.cfg = config
        self.progress = progress
        self.out = OutputDir(config.output)
        self.reader = MetadataReader(config.url_col, config.caption_col, config.sha256_col, config.extra_cols)
        self.index_digits = max(1, math.ceil(math.log10(config.shard_size))) if config.shard_size > 1 else 1
        self.provenance = {**config.provenance(), "recaption_version": __version__}

    async def run(self) -> DownloadSummary:
        summary = DownloadSummary()
        self.progress.run_started([])
        self.rows_in_flight = asyncio.Semaphore(2 * self.cfg.concurrency)  # bounds images in memory
        shard_slots = asyncio.Semaphore(self.cfg.shards_in_flight)
        self.pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="recap-image")
        tasks: list[asyncio.Task] = []
        try:
            async with Fetcher(self.cfg) as self.fetcher:
                for shard_id, rows in plan(self.reader.rows(self.inputs), self.cfg.shard_size):
                    name = f"{shard_id:05d}"
                    if self.out.is_done(name) and not self.cfg.overwrite:  # --overwrite redoes it
                        require_same_settings(self.out, name, self.provenance)
                        if not self.cfg.retry_failed:
                            summary.results.append(ShardResult(name, name, SKIPPED))
                            continue
                    await shard_slots.acquire()  # at most shards_in_flight shards' rows in memory
                    task = asyncio.create_task(self._shard(shard_id, rows))
                    task.add_done_callback(lambda _t: shard_slots.release())
                    tasks.append(task)
                summary.results += await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
        return summary

    async def _shard(self, shard_id: int, rows: list[UrlRow]) -> ShardResult:
        name = f"{shard_id:05d}"
        started = time.perf_counter()
        retrying = self.cfg.retry_failed and self.out.is_done(name) and not self.cfg.overwrite
        if not retrying:
            forget_shard(self.out, name)
        writer = DownloadShardWriter(self.out, name, self.cfg.extra_cols, self.cfg.caption_col is not None)
        try:
            keys = [img2dataset_key(shard_id, i, index_digits=self.index_digits) for i in range(len(rows))]
            todo = list(zip(keys, rows, strict=True))
            if retrying:
                todo = self._carry_over(writer, name, todo)
                if todo is None:
                    writer.abort()
                    return ShardResult(name, name, SKIPPED)
            await asyncio.gather(*(self._one(writer, key, row) for key, row in todo))
            counts = Counter(r["outcome"] for r in writer.rows.values())
            seconds = time.perf_counter() - started
            stats = self._stats(writer, counts, started, seconds, retried=len(todo) if retrying else None)
            writer.commit(stats, self.provenance)
        except BaseException as exc:
            writer.abort()
            if isinstance(exc, Exception):
                result = ShardResult(
                    name,
                    name,
                    FAILED,
                    error=f"{type(exc).__name__}: {exc}",
                    seconds=time.perf_counter() - started,
                )
                self.progress.shard_finished(result)
                return result
            raise
        result = ShardResult(name, name, DONE, len(writer.rows), dict(counts), seconds)
        self.progress.shard_finished(result)
        return result

    def _carry_over(self, writer: DownloadShardWriter, name: str, todo: list) -> list | None:
        """Keep a done shard's rows; return the (key, row) pairs whose failure was transient."""
        paths = shard_paths(self.out, name)
        with self.out.fs.open(paths["parquet"], "rb") as f:
            previous = {r["key"]: r for r in pq.read_table(f).to_pylist()}
        again = {k for k, r in previous.items() if oc.is_transient(r["outcome"], r["http_status"])}
        if not again:
            return None
        for key, row in previous.items():
            if key not in again:
                writer.rows[key] = row
        writer.copy_samples(paths["tar"], {k for k, r in previous.items() if r["outcome"] == oc.OK})
        return [(key, row) for key, row in todo if key in again]

    async def _one(self, writer: DownloadShardWriter, key: str, row: UrlRow) -> None:
        async with self.rows_in_flight:
            fetched = await self.fetcher.fetch(row.url)
            record = {
                "key": key,
                "url": row.url,
                "caption": row.caption,
                "status": None,
                "error_message": None,
                "width": None,
                "height": None,
                "original_width": None,
                "original_height": None,
                "sha256": None,
                "outcome": fetched.outcome,
                "http_status": fetched.http_status,
                "attempts": fetched.attempts,
                **{c: row.extra.get(c) for c in self.cfg.extra_cols},
            }
            image = ext = None
            if fetched.outcome == oc.OK:
                loop = asyncio.get_running_loop()
                try:
                    stored = await loop.run_in_executor(
                        self.pool, process_image, fetched.data, row.sha256, self.cfg, fetched.content_type
                    )
                except ProcessError as exc:
                    record.update(outcome=exc.outcome, error_message=str(exc), sha256=exc.sha256)
                else:
                    image, ext = stored.data, stored.ext
                    record.update(
                        width=stored.width,
                        height=stored.height,
                        sha256=stored.sha256,
                        original_width=stored.original_width,
                        original_height=stored.original_height,
                    )
            else:
                record["error_message"] = fetched.error
            record["status"] = oc.status_of(record["outcome"])
            writer.add(record, image, ext)
            self.progress.rows_done(1, int(image is not None))

    def _stats(
        self,
        writer: DownloadShardWriter,
        counts: Counter,
        started: float,
        seconds: float,
        retried: int | None,
    ) -> dict:
        statuses = Counter(r["status"] for r in writer.rows.values())
        errors = Counter(r["error_message"] for r in writer.rows.values() if r["error_message"])
        return {
            "count": len(writer.rows),
            "successes": statuses.get(oc.SUCCESS, 0),
            "failed_to_download": statuses.get(oc.FAILED_TO_DOWNLOAD, 0),
            "failed_to_resize": statuses.get(oc.FAILED_TO_RESIZE, 0),
            "duration": round(seconds, 3),
            "outcomes": dict(sorted(counts.items())),
            "status_dict": dict(errors.most_common(20)),
            "retried_rows": retried,
            **self.provenance,
        }
