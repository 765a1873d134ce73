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
from ..readers import Shard
from ..spine.results import FAILED, Progress, ShardResult

log = logging.getLogger(__name__)


class DeviceError(ValueError):
    """Devices asked for that this machine does not have, in one line."""


def check_devices(devices: list[str], option: str = "--devices") -> None:
    """Refuse, before any worker starts, devices torch does not see: cuda:N with N at or past
    the GPU count, any CUDA device without a GPU, mps without Apple's GPU. cpu is always there
    (tests list it several times to stand in for several GPUs)."""
    shown = f"{option} {','.join(devices)}"
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"{shown}: torch sees no CUDA GPU here; leave {option} out to run on the CPU")
        missing = [d for d in cuda if d.partition(":")[2].isdigit() and int(d.partition(":")[2]) >= count]
        if missing:
            have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise DeviceError(
                f"{shown}: torch sees only {count} GPU{'s' if count > 1 else ''} ({have}); "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not there"
            )
    if "mps" in devices:
        import torch

        if not torch.backends.mps.is_available():
            raise DeviceError(f"{shown}: torch sees no Apple GPU (mps) here")


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
