"""`recap download --executor ray`: shards fetched by Ray tasks across a cluster.

The driver streams the metadata (one shard's rows read ahead, never the whole input) and plans
each shard against the output folder exactly as the local run does (complete shards skipped,
`--retry-failed` and loosened policies fetching rows again); the planned shards go to Ray tasks,
one CPU each, at most twice the cluster's CPUs in flight, so the driver's memory is bounded
whatever the input's size. Each task downloads its whole shard with its own connections and
commits it atomically to the shared output folder (a local path on one machine, an fsspec URL
on a cluster): the same names, keys, tar members, markers and resume as the local executor.

A worker killed mid-shard (kill -9, a node lost) leaves no shard half-written: Ray runs the task
again elsewhere (up to 3 times), and whatever is left undone is redone by the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from ..ray_cluster import cluster_cpus, connected
from ..redact import redact
from ..spine.results import FAILED, RunSummary, ShardResult
from .downloader import PlannedShard, ShardDownloads

log = logging.getLogger(__name__)

TASK_RETRIES = 3  # a task whose worker died is run again this often before its shard fails


def _download_shard(run: ShardDownloads, shard: PlannedShard) -> tuple[ShardResult, str]:
    import ray

    return run.download_shard(shard), ray.get_runtime_context().get_node_id()


def download_on_ray(planned: Iterator[PlannedShard | ShardResult], run: ShardDownloads,
                    address: str | None) -> RunSummary:
    """Download the planned shards on Ray tasks; results in shard order."""
    with connected(address) as ray:
        task = ray.remote(_download_shard).options(num_cpus=1, max_retries=TASK_RETRIES)
        limit = 2 * cluster_cpus(ray)
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
                _collect(ray, running, results, run)
            running[task.remote(shared, item)] = item
        while running:
            _collect(ray, running, results, run)
        return RunSummary([results[name] for name in order])


def _collect(ray, running: dict, results: dict, run: ShardDownloads) -> None:
    ready, _ = ray.wait(list(running), num_returns=1)
    shard = running.pop(ready[0])
    try:
        result, node = ray.get(ready[0])
        log.info("ray: shard %s downloaded on node %s", shard.name, node)
    except ray.exceptions.RayError as exc:  # its workers kept dying, or the task could not run
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.error("ray: shard %s failed: %s", shard.name, reason)
        result = ShardResult(shard.name, shard.name, FAILED, error=redact(f"ray worker failed: {reason}"))
    results[shard.name] = result
    run.progress.rows_done(result.rows, result.status_counts.get("ok", 0))
    run.progress.shard_finished(result)
