"""`--executor ray`: caption workers as Ray actors, on a local Ray or a cluster.

Each actor holds one engine (one model on its GPU share: `num_gpus=1`, or 0.5 / 0.25 to pack a
small model several times on one GPU) and runs the same `CaptionPipeline` as the local executor
on one shard at a time: reading, decoding and preprocessing in loader processes beside it on
the same node (so pixels never cross the network), generation on its GPU, and the shard's
parquet, stats and `.done` marker written by it to the shared output folder (local path on one
machine, an fsspec URL such as s3:// or gs:// on a cluster). The driver plans (skips done
shards, refuses mixed settings), hands shards to actors as they free up, and collects results.

Only this module imports ray; the stages know nothing of it. An actor that dies is restarted by
Ray and its shard retried (`max_task_retries`); a shard that fails for good is reported failed.
"""

from __future__ import annotations

import logging

from ..config import CaptionConfig, ExecutorConfig, RunConfig
from ..pipeline import CaptionPipeline
from ..readers import Shard
from ..results import FAILED, Progress, ShardResult
from .base import Executor

log = logging.getLogger(__name__)


class CaptionWorker:
    """The body of a Ray actor: one pipeline, loaded once, fed one shard per call."""

    def __init__(self, caption: CaptionConfig, run: RunConfig):
        self.pipeline = CaptionPipeline(caption, run)

    def caption_shard(self, shard: Shard) -> ShardResult:
        return self.pipeline.run_planned([shard]).results[0]


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("--executor ray needs Ray: pip install 'recaption[ray]'") from exc
    return ray


def worker_count(executor: ExecutorConfig, cluster_gpus: float, shards: int) -> int:
    if executor.ray_workers:
        wanted = executor.ray_workers
    elif cluster_gpus >= 1:
        wanted = int(cluster_gpus / executor.ray_gpus_per_worker)
    else:
        wanted = 1
    return max(1, min(wanted, shards))


class RayExecutor(Executor):
    """Caption actors on a local or remote Ray cluster, shards handed out as actors free up."""

    def _execute(self, todo: list[Shard]) -> list[ShardResult]:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.config.ray_address, log_to_driver=False,
                     logging_level=logging.WARNING, include_dashboard=False)
        try:
            return _caption_on_actors(ray, todo, self.caption, self.run_config, self.config, self.progress)
        finally:
            if started_here:
                ray.shutdown()


EXECUTOR = RayExecutor


def _caption_on_actors(ray, todo: list[Shard], caption: CaptionConfig, run: RunConfig,
                       executor: ExecutorConfig, progress: Progress) -> list[ShardResult]:
    gpus = ray.cluster_resources().get("GPU", 0)
    count = worker_count(executor, gpus, len(todo))
    actor_class = ray.remote(CaptionWorker).options(
        num_gpus=executor.ray_gpus_per_worker if gpus else 0,
        num_cpus=executor.ray_cpus_per_worker,
        max_restarts=2, max_task_retries=2,
    )
    # On a GPU, device "auto" inside an actor is the GPU Ray assigned to it.
    idle = [actor_class.remote(caption, run) for _ in range(count)]
    log.info("ray: %d caption workers over %d shards", count, len(todo))
    waiting = list(reversed(todo))
    running: dict = {}  # object ref -> (shard, actor)
    results: dict[str, ShardResult] = {}
    while waiting or running:
        while waiting and idle:
            shard, actor = waiting.pop(), idle.pop()
            running[actor.caption_shard.remote(shard)] = (shard, actor)
        ready, _ = ray.wait(list(running), num_returns=1)
        shard, actor = running.pop(ready[0])
        idle.append(actor)
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            log.error("ray: %s failed: %s", shard.source, exc)
            result = ShardResult(shard.name, shard.source, FAILED, error=f"ray worker failed: {exc}")
        results[shard.name] = result
        progress.rows_done(result.rows, result.status_counts.get("ok", 0))
        progress.shard_finished(result)
    for actor in idle:
        ray.kill(actor)
    return [results[s.name] for s in todo]
