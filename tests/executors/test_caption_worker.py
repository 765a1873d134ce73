"""The long-lived caption worker (the body of a Ray actor): one loader for its whole life, fed
shards from a queue, decoding the next batches while the engine generates."""

from __future__ import annotations

import json
import threading

import pyarrow.parquet as pq
import pytest

import recaption.engines as engines
from recaption.captioning.pipeline import DONE, CaptionPipeline
from recaption.config import CaptionConfig, RunConfig
from recaption.executors.ray_executor import CaptionWorker, WorkerStopped
from recaption.readers import discover_shards

from ..conftest import write_shards
from ..plugins import drop_in, forget

# A stand-in engine whose preparing (in loader processes) and generating (in the worker) each
# take a known time and write down when they ran.
TIMED_ENGINE = '''
import json
import os
import time

from recaption.engines.base import Engine, Generation, Preparer

LOG = os.environ["RECAP_TIMED_LOG"]
SECONDS = 0.15


def note(kind, started):
    with open(LOG, "a") as f:
        f.write(json.dumps([kind, started, time.time(), os.getpid()]) + "\\n")


class TimedPreparer(Preparer):
    def prepare(self, images, prompts):
        started = time.time()
        time.sleep(SECONDS)
        note("prepare", started)
        return [image.size for image in images]


class TimedEngine(Engine):
    loads_weights = False

    def setup(self):
        self.preparer = TimedPreparer()
        super().setup()

    def generate(self, inputs, decoding=None):
        if os.environ.get("RECAP_TIMED_STOP"):  # what no batch retry catches: the loop ends
            raise KeyboardInterrupt("stopped from outside")
        started = time.time()
        time.sleep(SECONDS)
        note("generate", started)
        return [Generation(f"{w}x{h}", 1, False) for w, h in inputs]


ENGINE = TimedEngine
'''


@pytest.fixture
def timed_engine(tmp_path, monkeypatch):
    plugin = drop_in(monkeypatch, engines, tmp_path / "plugins", "timed_engine", TIMED_ENGINE)
    log = tmp_path / "timed.jsonl"
    monkeypatch.setenv("RECAP_TIMED_LOG", str(log))
    yield log
    forget(plugin)


def overlapping(intervals_a, intervals_b) -> int:
    return sum(1 for a0, a1 in intervals_a for b0, b1 in intervals_b if a0 < b1 and b0 < a1)


def test_the_worker_prepares_in_its_loader_while_the_engine_generates(tmp_path, timed_engine):
    shards = discover_shards(write_shards(tmp_path / "in", n_shards=3, per_shard=8))
    caption = CaptionConfig(engine="timed", model="none", batch_size=2)
    run = RunConfig(output=str(tmp_path / "out"))
    worker = CaptionWorker(caption, run, loader_workers=2)
    assert worker.ready()["slots"] == 3  # one shard per loader process, and one queued

    results = {}
    callers = [threading.Thread(target=lambda s=s: results.update({s.name: worker.caption_shard(s)}))
               for s in shards]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=60)
    assert sorted(results) == ["00000", "00001", "00002"]
    assert all(r.outcome == DONE and r.rows == 8 for r in results.values())

    events = [json.loads(line) for line in timed_engine.read_text().splitlines()]
    prepared = [(start, end) for kind, start, end, _ in events if kind == "prepare"]
    generated = [(start, end) for kind, start, end, _ in events if kind == "generate"]
    assert len(prepared) == len(generated) == 12  # 3 shards x 4 batches of 2
    # Preparing ran in other processes than generating, at the same time as it.
    assert {pid for kind, *_, pid in events if kind == "prepare"}.isdisjoint(
        {pid for kind, *_, pid in events if kind == "generate"})
    assert overlapping(prepared, generated) >= 6
    # The shards' own timings say so too: the engine waited on the loader for far less than
    # the loader spent preparing.
    waited = sum(r.stage_seconds["loader_wait"] for r in results.values())
    spent = sum(r.stage_seconds["prepare"] for r in results.values())
    assert waited < 0.6 * spent


def test_the_worker_writes_what_the_pipeline_writes(tmp_path, timed_engine):
    shards = discover_shards(write_shards(tmp_path / "in", n_shards=2, per_shard=5))
    caption = CaptionConfig(engine="timed", model="none", batch_size=2)
    CaptionPipeline(caption, RunConfig(output=str(tmp_path / "ref"))).run(shards)
    worker = CaptionWorker(caption, RunConfig(output=str(tmp_path / "out")), loader_workers=1)
    for shard in shards:
        assert worker.caption_shard(shard).outcome == DONE
    for shard in shards:
        ours = pq.read_table(tmp_path / "out" / f"{shard.name}.parquet")
        assert ours.equals(pq.read_table(tmp_path / "ref" / f"{shard.name}.parquet"))
        assert (tmp_path / "out" / f"{shard.name}.done").exists()


def test_a_worker_whose_loop_ended_says_so_for_every_shard_it_held(tmp_path, timed_engine, monkeypatch):
    shards = discover_shards(write_shards(tmp_path / "in", n_shards=2, per_shard=3))
    monkeypatch.setenv("RECAP_TIMED_STOP", "1")
    worker = CaptionWorker(CaptionConfig(engine="timed", model="none", batch_size=2),
                           RunConfig(output=str(tmp_path / "out")), loader_workers=1)
    with pytest.raises(WorkerStopped, match="KeyboardInterrupt"):
        worker.caption_shard(shards[0])
    with pytest.raises(WorkerStopped):  # and at once for the next: the driver retires it
        worker.caption_shard(shards[1])
    assert not list((tmp_path / "out").glob("*.parquet")) and not list((tmp_path / "out").glob("*.tmp"))
