"""One spawned (CUDA cannot be forked), non-daemonic worker process per device, each over its
own shards (k, k+n, ...), reporting through a queue; a worker that dies has its unfinished shards
reported failed (never half-written: the next run redoes them)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import traceback
from dataclasses import replace

from ..captioning.pipeline import CaptionPipeline
from ..config import CaptionConfig, RunConfig
from ..hardware import check_devices
from ..readers import Shard
from ..spine.results import FAILED, Progress, ShardResult

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
        try:
            pipeline.captioner.setup()
        except ValueError as exc:  # the model cannot load here (ModelError), a wrong setting: one line
            events.put(("refused", (worker, str(exc))))
            return
        pipeline.run_planned(shards)
    except BaseException:
        events.put(("crashed", (worker, traceback.format_exc())))
        raise
    events.put(("exited", worker))


def run_on_devices(todo: list[Shard], caption: CaptionConfig, run: RunConfig, devices: list[str],
                   progress: Progress) -> list[ShardResult]:
    """Caption planned shards in one process per device; their results in `todo`'s order."""
    check_devices(devices)  # before any process starts: a worker on a missing GPU is no shard failure
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
    try:
        finished, refused = _follow(workers, devices, assignments, events, progress)
    finally:
        # However this process leaves (Ctrl-C, SIGTERM reach only it), no worker outlives it:
        # the output folder's lock is released and its temporary files cleared after this.
        for process in workers.values():
            if process.is_alive():
                process.terminate()
        for process in workers.values():
            process.join()
    if refused and len(refused) == len(workers):
        # Not one worker could load the model (a folder that is no model, missing weights...):
        # the user's mistake, one line and exit code 2, as with a single device.
        raise ValueError(next(iter(refused.values())))
    return [finished[s.name] for s in todo if s.name in finished]


def _follow(workers: dict, devices: list[str], assignments: dict, events, progress: Progress
            ) -> tuple[dict[str, ShardResult], dict[int, str]]:
    """Relay the workers' events to the progress display until every worker is done; a worker
    that dies is noticed and its unfinished shards reported failed."""
    finished: dict[str, ShardResult] = {}
    refused: dict[int, str] = {}
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
        elif kind in ("crashed", "refused"):
            k, message = payload
            if kind == "crashed":
                log.error("worker on %s crashed:\n%s", devices[k], message)
                message = message.strip().splitlines()[-1]  # the traceback's last line
            else:
                refused[k] = message
            running.discard(k)
            workers[k].join()
            if kind == "crashed" or len(refused) < len(workers):  # the others go on; its shards failed
                _report_lost(devices[k], workers[k].exitcode, assignments[k], finished, progress, message)
        elif kind == "exited":
            running.discard(payload)
    return finished, refused


def _report_lost(device: str, exitcode, shards: list[Shard], finished: dict, progress: Progress,
                 reason: str | None = None) -> None:
    for shard in shards:
        if shard.name not in finished:
            error = f"worker on {device} stopped ({reason or f'exit code {exitcode}'}) before finishing"
            finished[shard.name] = ShardResult(shard.name, shard.source, FAILED, error=error)
            progress.shard_finished(finished[shard.name])
