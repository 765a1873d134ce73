"""`--executor ray`: caption workers as Ray actors (an engine set up once, one loader for life,
kept a shard ahead; a dead actor's shards requeued, failed after DEATHS_PER_SHARD deaths), and
downloads as Ray tasks (`download_shards`). Outputs and resume are the local executor's
(docs/scaling.md). Ray is an optional dependency: only this module imports it, and a missing Ray
is one line naming the extra to install."""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..redact import redact
from ..spine.contract import is_output_failure
from ..spine.errors import RecaptionError
from ..spine.results import FAILED, Progress, RunSummary, ShardResult
from .base import Executor

if TYPE_CHECKING:  # the caption step's types; a download never loads the pipeline
    from ..config import CaptionConfig, ExecutorConfig, RunConfig
    from ..downloads.downloader import PlannedShard, ShardDownloads
    from ..readers import Shard

log = logging.getLogger(__name__)

DEATHS_PER_SHARD = 3  # a shard whose actor died under it this often is failed, not retried
WAITING_NOTE_SECONDS = 60.0


class RayMissingError(RecaptionError, RuntimeError):
    """--executor ray without Ray installed."""


@contextmanager
def connected(address: str | None) -> Iterator[object]:
    """Ray, joined for the length of the block: a cluster at `address` ("auto", ray://host:port),
    or a local Ray started here (None). A Ray the caller already joined is used as it is."""
    try:
        import ray
    except ImportError as exc:
        raise RayMissingError("--executor ray needs Ray: pip install 'recaption[ray]'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                 include_dashboard=False)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


class WorkerStopped(RuntimeError):
    """The worker's serving loop ended (its writer failed, say): the worker is of no more use,
    and the shards it held go to another, as when an actor dies."""


class CaptionWorker:
    """The body of a Ray actor: an engine set up once, and one loader fed from a queue of
    shards by a serving thread for the actor's whole life. `caption_shard` (called by several
    Ray threads at once) queues a shard and waits for its result."""

    def __init__(self, caption: CaptionConfig, run: RunConfig, loader_workers: int | None):
        import multiprocessing as mp

        from ..captioning.pipeline import CaptionPipeline

        if loader_workers is None:  # one loader process per CPU Ray gave this actor
            import ray

            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            loader_workers = max(1, int(cpus))
        self.pipeline = CaptionPipeline(caption, replace(run, workers=loader_workers))
        self.refused: str | None = None
        try:
            self.pipeline.captioner.setup()
        except ValueError as exc:  # the model cannot load here (ModelError), a wrong setting
            self.refused = str(exc)
            return
        self.feed = mp.get_context("fork").Queue()  # the loader's processes are forked from here
        self.waiting: dict[str, Future] = {}
        self.lock = threading.Lock()
        self.stopped: str | None = None
        threading.Thread(target=self._serve, name="recap-serve", daemon=True).start()

    def ready(self) -> dict:
        """How many shards to keep in flight here (one per loader process, plus one queued), the
        node, and why the engine could not load (None when it did)."""
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {"slots": self.pipeline.loader_workers() + 1, "node": node, "refused": self.refused}

    def caption_shard(self, shard: Shard) -> ShardResult:
        future: Future = Future()
        with self.lock:
            if self.stopped:
                raise WorkerStopped(self.stopped)
            self.waiting[shard.name] = future
        self.feed.put(shard)
        return future.result()

    def _serve(self) -> None:
        try:
            self.pipeline.serve(self.feed, self._finished)
            message = "the caption worker's loader ended"
        except BaseException as exc:
            log.exception("caption worker stopped")
            message = f"caption worker stopped: {type(exc).__name__}: {exc}"
        with self.lock:
            self.stopped = message
            waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            future.set_exception(WorkerStopped(message))

    def _finished(self, result: ShardResult) -> None:
        with self.lock:
            future = self.waiting.pop(result.name, None)
        if future is not None:
            future.set_result(result)


def worker_count(executor: ExecutorConfig, cluster_gpus: float, shards: int) -> int:
    if executor.ray_workers:  # (then the GPU share is never divided by: it may be 0)
        wanted = executor.ray_workers
    else:
        wanted = int(cluster_gpus / executor.ray_gpus_per_worker) if cluster_gpus >= 1 else 1
    return max(1, min(wanted, shards))


class RayExecutor(Executor):
    """Caption actors on a local or remote Ray cluster, each kept a shard ahead of its loader."""

    def _execute(self, todo: list[Shard]) -> list[ShardResult]:
        with connected(self.config.ray_address) as ray:
            return _Dispatcher(ray, todo, self.caption, self.run_config, self.config, self.progress).run()


EXECUTOR = RayExecutor


@dataclass
class _Actor:
    handle: object
    slots: int = 0  # 0 until the actor is ready
    node: str | None = None
    running: set = field(default_factory=set)  # object refs of its caption_shard calls
    dead: bool = False


class _Dispatcher:
    """Hands shards to actors as their slots free up; puts a dead actor's shards back."""

    def __init__(self, ray, todo: list[Shard], caption: CaptionConfig, run: RunConfig,
                 executor: ExecutorConfig, progress: Progress):
        self.ray, self.todo, self.progress = ray, todo, progress
        self.caption, self.run_config = caption, run
        gpus = ray.cluster_resources().get("GPU", 0)
        self.count = worker_count(executor, gpus, len(todo))
        self.actor_class = ray.remote(CaptionWorker).options(
            num_gpus=executor.ray_gpus_per_worker if gpus else 0, num_cpus=executor.ray_cpus_per_worker,
            max_restarts=0, max_task_retries=0,  # a dead actor's shards are requeued here instead
            max_concurrency=64)  # caption_shard calls wait in threads; slots bound them
        self.queue: deque[Shard] = deque(todo)
        self.deaths: Counter = Counter()  # shard name -> actors that died while holding it
        self.actors: list[_Actor] = []
        self.calls: dict = {}  # object ref -> (actor, shard or None for its ready call)
        self.results: dict[str, ShardResult] = {}
        self.starts_left = 3 * self.count  # actors that may still be started, replacements included
        self.last_death: str | None = None
        self.refused: str | None = None

    def run(self) -> list[ShardResult]:
        log.info("ray: %d caption workers over %d shards", self.count, len(self.todo))
        for _ in range(self.count):
            self._start_actor()
        try:
            while self.queue or any(shard is not None for _, shard in self.calls.values()):
                self._hand_out()
                if not self.calls:  # no actor alive or starting, and none may start
                    self._fail_queued()
                    break
                ready, _ = self.ray.wait(list(self.calls), num_returns=1, timeout=WAITING_NOTE_SECONDS)
                if not ready:
                    if not any(actor.slots and not actor.dead for actor in self.actors):
                        log.warning("ray: waiting for a caption worker to start (%d shards queued); is "
                                    "there room in the cluster for one?", len(self.queue))
                    continue
                self._collect(ready[0])
        finally:
            for actor in self.actors:
                self.ray.kill(actor.handle)
        return [self.results[s.name] for s in self.todo]

    def _start_actor(self) -> None:
        if self.starts_left <= 0:
            return
        self.starts_left -= 1
        actor = _Actor(self.actor_class.remote(self.caption, self.run_config, self.run_config.workers))
        self.actors.append(actor)
        self.calls[actor.handle.ready.remote()] = (actor, None)

    def _hand_out(self) -> None:
        for actor in self.actors:
            while self.queue and not actor.dead and len(actor.running) < actor.slots:
                shard = self.queue.popleft()
                ref = actor.handle.caption_shard.remote(shard)
                actor.running.add(ref)
                self.calls[ref] = (actor, shard)
                self.progress.shard_started(shard)

    def _collect(self, ref) -> None:
        actor, shard = self.calls.pop(ref)
        actor.running.discard(ref)
        try:
            value = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self._actor_died(actor, shard, exc)
            return
        except self.ray.exceptions.RayError as exc:
            if isinstance(exc, WorkerStopped) or isinstance(getattr(exc, "cause", None), WorkerStopped):
                self._actor_died(actor, shard, exc)  # useless from now on: treat it as dead
            else:  # caption_shard raised something else: this shard failed
                self._finish(ShardResult(shard.name, shard.source, FAILED, error=f"ray worker failed: {exc}"))
            return
        if shard is None:  # the actor is ready
            if value["refused"]:
                self.refused = value["refused"]
                self._retire(actor)
                return
            actor.slots, actor.node = value["slots"], value["node"]
            log.info("ray: caption worker on node %s, %d shards in flight", actor.node, actor.slots)
            return
        log.info("ray: %s captioned on node %s", shard.name, actor.node)
        self._finish(value)

    def _actor_died(self, actor: _Actor, shard: Shard | None, exc: Exception) -> None:
        self.last_death = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if shard is not None:
            self.deaths[shard.name] += 1
            if self.deaths[shard.name] >= DEATHS_PER_SHARD:
                error = (f"its Ray worker died {DEATHS_PER_SHARD} times while captioning it "
                         f"({self.last_death})")
                self._finish(ShardResult(shard.name, shard.source, FAILED, error=error))
            else:
                log.warning("ray: worker on node %s died; %s goes back to the queue", actor.node, shard.name)
                self.queue.appendleft(shard)
        if not actor.dead:
            self._retire(actor)
            self._start_actor()  # where the cluster has room; the others go on meanwhile

    def _retire(self, actor: _Actor) -> None:
        actor.dead = True
        self.ray.kill(actor.handle)

    def _finish(self, result: ShardResult) -> None:
        self.results[result.name] = result
        self.progress.rows_done(result.rows, result.status_counts.get("ok", 0))
        self.progress.shard_finished(result)

    def _fail_queued(self) -> None:
        if self.refused and not any(actor.slots for actor in self.actors):
            raise ValueError(self.refused)  # not one actor could load the model: the user's mistake
        reason = self.refused or self.last_death or "no caption worker could start"
        while self.queue:
            shard = self.queue.popleft()
            self._finish(ShardResult(shard.name, shard.source, FAILED, error=f"no Ray worker left: {reason}"))


# -- the download step -------------------------------------------------------------------------------

TASK_RETRIES = 3  # a task whose worker died is run again this often before its shard fails


def _download_one(run: ShardDownloads, shard: PlannedShard) -> tuple[ShardResult, str]:
    import ray

    return run.download_shard(shard), ray.get_runtime_context().get_node_id()


def download_shards(planned: Iterator[PlannedShard | ShardResult], run: ShardDownloads,
                    address: str | None = None) -> RunSummary:
    """Each planned shard downloaded whole by one Ray task (one CPU; at most twice the cluster's
    CPUs in flight: the driver's memory stays bounded), run again when its worker died
    (TASK_RETRIES); results in shard order."""
    with connected(address) as ray:
        task = ray.remote(_download_one).options(num_cpus=1, max_retries=TASK_RETRIES)
        limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        shared = ray.put(run)  # the settings, sent to the object store once
        run.progress.run_started([])
        results: dict[str, ShardResult] = {}
        order: list[str] = []
        running: dict = {}  # object ref -> PlannedShard
        for item in planned:
            order.append(item.name)
            if isinstance(item, ShardResult):  # complete already
                results[item.name] = item
                continue
            while len(running) >= limit:
                _collect_download(ray, running, results, run)
            running[task.remote(shared, item)] = item
        while running:
            _collect_download(ray, running, results, run)
        return RunSummary([results[name] for name in order])


def _collect_download(ray, running: dict, results: dict, run: ShardDownloads) -> None:
    ready, _ = ray.wait(list(running), num_returns=1)
    shard = running.pop(ready[0])
    try:
        result, node = ray.get(ready[0])
        log.info("ray: shard %s downloaded on node %s", shard.name, node)
    except ray.exceptions.RayError as exc:  # its workers kept dying, or the task could not run
        if is_output_failure(getattr(exc, "cause", None), run.out.url):
            raise exc.cause from None  # the output's disk, not this shard: the contract's one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.error("ray: shard %s failed: %s", shard.name, reason)
        result = ShardResult(shard.name, shard.name, FAILED, error=redact(f"ray worker failed: {reason}"))
    results[shard.name] = result
    run.progress.rows_done(result.rows, result.status_counts.get("ok", 0))
    run.progress.shard_finished(result)
