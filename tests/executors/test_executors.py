"""Executors: one process per device, and Ray actors, give the local executor's output exactly."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from recaption.captioning.pipeline import DONE, FAILED, SKIPPED, CaptionPipeline
from recaption.config import ExecutorConfig, RunConfig
from recaption.executors.run import devices_to_use, run_caption
from recaption.readers import discover_shards

from ..conftest import write_shards


def shards_with_a_broken_one(tmp_path):
    paths = write_shards(tmp_path / "in", n_shards=3, per_shard=5)
    broken = tmp_path / "in" / "00003.tar"
    broken.write_bytes(open(paths[0], "rb").read()[:3000])  # cut mid-member
    return discover_shards(paths + [str(broken)])


def assert_same_output(ours, reference, names, missing=("00003",)):
    for name in names:
        a, b = pq.read_table(ours / f"{name}.parquet"), pq.read_table(reference / f"{name}.parquet")
        assert a.equals(b), name
        assert (ours / f"{name}.done").exists()
        stats = json.loads((ours / f"{name}_stats.json").read_text())
        assert stats["rows"] == a.num_rows
    for name in missing:  # the broken shard
        assert not (ours / f"{name}.parquet").exists()
    assert not list(ours.glob("*.tmp"))


@pytest.fixture
def local_reference(tmp_path, captioner):
    shards = shards_with_a_broken_one(tmp_path)
    out = tmp_path / "local"
    CaptionPipeline(captioner.config, RunConfig(output=str(out)), captioner).run(shards)
    return shards, out


@pytest.mark.slow
def test_one_process_per_device_matches_local(tmp_path, captioner, local_reference):
    shards, reference = local_reference
    out = tmp_path / "devices"
    summary = run_caption(shards, captioner.config, RunConfig(output=str(out)),
                          ExecutorConfig(devices=["cpu", "cpu"]))
    outcomes = {r.name: r.outcome for r in summary.results}
    assert outcomes == {"00000": DONE, "00001": DONE, "00002": DONE, "00003": FAILED}
    failed = next(r for r in summary.results if r.outcome == FAILED)
    assert failed.source.endswith("00003.tar") and "truncated tar" in failed.error
    assert_same_output(out, reference, ["00000", "00001", "00002"])


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_executor_matches_local_and_resumes(tmp_path, captioner, local_reference, local_ray):
    shards, reference = local_reference
    out = tmp_path / "ray"
    executor = ExecutorConfig(executor="ray", ray_workers=2)
    summary = run_caption(shards, captioner.config, RunConfig(output=str(out)), executor)
    outcomes = {r.name: r.outcome for r in summary.results}
    assert outcomes == {"00000": DONE, "00001": DONE, "00002": DONE, "00003": FAILED}
    failed = next(r for r in summary.results if r.outcome == FAILED)
    assert failed.source.endswith("00003.tar") and "truncated tar" in failed.error
    assert_same_output(out, reference, ["00000", "00001", "00002"])
    # Resume: done shards are skipped, the broken one is tried again.
    (out / "00001.done").unlink()
    again = run_caption(shards, captioner.config, RunConfig(output=str(out)), executor)
    outcomes = {r.name: r.outcome for r in again.results}
    assert outcomes == {"00000": SKIPPED, "00001": DONE, "00002": SKIPPED, "00003": FAILED}
    assert_same_output(out, reference, ["00000", "00001", "00002"])


def test_devices_default_to_one_process_without_several_gpus(captioner, monkeypatch):
    import recaption.executors.run as executors

    monkeypatch.setattr(executors, "visible_gpus", lambda: ["cuda:0"])
    assert devices_to_use(captioner.config, ExecutorConfig()) == []
    monkeypatch.setattr(executors, "visible_gpus", lambda: ["cuda:0", "cuda:1"])
    auto = replace(captioner.config, device="auto")
    assert devices_to_use(auto, ExecutorConfig()) == ["cuda:0", "cuda:1"]
    pinned = replace(captioner.config, device="cuda:1")
    assert devices_to_use(pinned, ExecutorConfig()) == []
    explicit = ExecutorConfig(devices=["cuda:0", "cuda:1"])
    assert devices_to_use(captioner.config, explicit) == ["cuda:0", "cuda:1"]


@pytest.mark.slow
def test_a_caption_actor_killed_mid_run_hands_its_shards_to_another(tmp_path, captioner, local_ray, caplog):
    import logging

    from ..ray_processes import KillOnce

    caplog.set_level(logging.INFO, logger="recaption.executors.ray_executor")
    shards = discover_shards(write_shards(tmp_path / "in", n_shards=5, per_shard=5))
    CaptionPipeline(captioner.config, RunConfig(output=str(tmp_path / "local")), captioner).run(shards)
    out = tmp_path / "ray"
    killer = KillOnce("ray::CaptionWorker", when=lambda: any(out.glob("*.done")))
    killer.start()
    summary = run_caption(shards, captioner.config, RunConfig(output=str(out)),
                          ExecutorConfig(executor="ray", ray_workers=1))
    killer.join(timeout=1)
    assert killer.killed is not None
    assert [r.outcome for r in summary.results] == [DONE] * 5
    assert any("goes back to the queue" in r.getMessage() for r in caplog.records)
    assert_same_output(out, tmp_path / "local", [s.name for s in shards], missing=())
