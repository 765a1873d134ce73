"""A two-node Ray cluster simulated on this machine (ray.cluster_utils.Cluster): caption and
download spread over both nodes give the local executor's output exactly, and a node removed
mid-run leaves every shard done, once, by the node that is left."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest

from recaption.captioning.pipeline import DONE, CaptionPipeline
from recaption.config import ExecutorConfig, RunConfig
from recaption.downloads import download
from recaption.executors.run import run_caption
from recaption.readers import discover_shards

from ..conftest import write_shards
from ..downloads.test_download import config as download_config
from ..downloads.test_download_ray import assert_same_download, metadata
from ..image_server import ImageServer
from .test_executors import assert_same_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and one more, one CPU each; the driver (this process) joins the head."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def nodes_named(caplog, verb: str) -> set[str]:
    return {m.group(1) for r in caplog.records if (m := re.search(rf"{verb} on node (\w+)", r.getMessage()))}


@pytest.fixture
def shards_and_reference(tmp_path, captioner):
    shards = discover_shards(write_shards(tmp_path / "in", n_shards=6, per_shard=5))
    CaptionPipeline(captioner.config, RunConfig(output=str(tmp_path / "local")), captioner).run(shards)
    return shards, tmp_path / "local"


def test_caption_on_two_nodes_matches_local(tmp_path, captioner, shards_and_reference, two_nodes, caplog):
    shards, reference = shards_and_reference
    caplog.set_level(logging.INFO, logger="recaption.executors.ray_executor")
    out = tmp_path / "ray"
    summary = run_caption(shards, captioner.config, RunConfig(output=str(out)),
                          ExecutorConfig(executor="ray", ray_workers=2))
    assert [r.outcome for r in summary.results] == [DONE] * 6
    assert len(nodes_named(caplog, "captioned")) == 2  # both nodes captioned shards
    assert_same_output(out, reference, [s.name for s in shards], missing=())


def test_download_on_two_nodes_matches_local(tmp_path, two_nodes, caplog):
    caplog.set_level(logging.INFO, logger="recaption.executors.ray_executor")
    with ImageServer() as server:
        urls = metadata(tmp_path, server, rows=24, prefix="/delay/")
        options = dict(shard_size=6, concurrency=2)
        download([urls], download_config(tmp_path / "local", **options))
        summary = download([urls], download_config(tmp_path / "ray", **options), executor="ray")
    assert [r.outcome for r in summary.results] == [DONE] * 4
    assert len(nodes_named(caplog, "downloaded")) == 2
    assert_same_download(tmp_path / "ray", tmp_path / "local", [f"{i:05d}" for i in range(4)])


def test_a_node_removed_mid_caption_leaves_every_shard_done_once(tmp_path, captioner, shards_and_reference,
                                                                 two_nodes, caplog):
    """Last in this file: it takes the second node away."""
    cluster, worker = two_nodes
    shards, reference = shards_and_reference
    caplog.set_level(logging.INFO, logger="recaption.executors.ray_executor")
    out = tmp_path / "ray"

    def remove_after_first_shard():
        deadline = time.monotonic() + 120
        while not list(out.glob("*.done")) and time.monotonic() < deadline:
            time.sleep(0.02)
        cluster.remove_node(worker)

    remover = threading.Thread(target=remove_after_first_shard, daemon=True)
    remover.start()
    summary = run_caption(shards, captioner.config, RunConfig(output=str(out)),
                          ExecutorConfig(executor="ray", ray_workers=2))
    remover.join(timeout=60)
    assert [r.outcome for r in summary.results] == [DONE] * 6
    assert [r.name for r in summary.results] == [s.name for s in shards]  # each reported once
    assert any("goes back to the queue" in r.getMessage() for r in caplog.records)
    assert_same_output(out, reference, [s.name for s in shards], missing=())
