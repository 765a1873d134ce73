"""One worker process per device on this machine, each over its own shards (k, k+n, ...).

Workers are spawned (CUDA cannot be forked) and not daemonic, so each keeps its own loader
processes. They report progress and shard results through a queue; a worker that dies is
noticed and its unfinished shards are reported failed (their output is never half-written, so
the next run redoes them).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import traceback
from dataclasses import replace

from ..config import CaptionConfig, RunConfig
from ..pipeline import FAILED, CaptionPipeline, Progress, RunSummary, ShardResult, plan_shards
from ..readers import Shard

log = logging.getLogger(__name__)


class QueueProgress(Progress):
    """Forwards a worker's progress events to the parent process."""

    def __init__(self, events):
        self.events = events

    def shard_started(self, shard: Shard) -> None:
        self.events.put(("started", shard))

    def rows_done(self, rows: int, ok: int) -> None:
        self.events.put(("rows", (rows, ok)))

    def shard_finished(self, result: ShardResult) -> None:
        self.events.put(("finished", result))


def _worker(worker: int, device: str, shards: list[Shard], caption: CaptionConfig, run: RunConfig,
            events) -> None:
    try:
        pipeline = CaptionPipeline(replace(caption, device=device), run, progress=QueueProgress(events))
        pipeline.run(shards)
    except BaseException:
        events.put(("crashed", (worker, traceback.format_exc())))
        raise
    events.put(("exited", worker))


def run_on_devices(shards: list[Shard], caption: CaptionConfig, run: RunConfig, devices: list[str],
                   progress: Progress | None = None) -> RunSummary:
    progress = progress or Progress()
    todo, done = plan_shards(shards, caption, run)  # refuses mixed settings before any process starts
    summary = RunSummary([ShardResult(s.name, s.source, "skipped") for s in done])
    progress.run_started(todo)
    if not todo:
        return summary
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    # Worker k takes shards k, k+n, ...; keyed by index, as a device may be listed twice.
    assignments = {k: todo[k :: len(devices)] for k in range(len(devices))}
    workers = {}
    for k, mine in assignments.items():
        if mine:
            workers[k] = ctx.Process(target=_worker, args=(k, devices[k], mine, caption, run, events),
                                     name=f"recap-{devices[k]}", daemon=False)
            workers[k].start()
    finished: dict[str, ShardResult] = {}
    running = set(workers)
    while running:
        try:
            kind, payload = events.get(timeout=1.0)
        except queue.Empty:
            for k in list(running):
                if not workers[k].is_alive():
                    running.discard(k)
                    _report_lost(devices[k], workers[k].exitcode, assignments[k], finished, progress)
            continue
        if kind == "started":
            progress.shard_started(payload)
        elif kind == "rows":
            progress.rows_done(*payload)
        elif kind == "finished":
            finished[payload.name] = payload
            progress.shard_finished(payload)
        elif kind == "crashed":
            k, trace = payload
            log.error("worker on %s crashed:\n%s", devices[k], trace)
            running.discard(k)
            workers[k].join()
            _report_lost(devices[k], workers[k].exitcode, assignments[k], finished, progress,
                         trace.strip().splitlines()[-1])
        elif kind == "exited":
            running.discard(payload)
    for process in workers.values():
        process.join()
    summary.results += [finished[s.name] for s in todo if s.name in finished]
    return summary


def _report_lost(device: str, exitcode, shards: list[Shard], finished: dict, progress: Progress,
                 reason: str | None = None) -> None:
    for shard in shards:
        if shard.name not in finished:
            error = f"worker on {device} stopped ({reason or f'exit code {exitcode}'}) before finishing"
            finished[shard.name] = ShardResult(shard.name, shard.source, FAILED, error=error)
            progress.shard_finished(finished[shard.name])
