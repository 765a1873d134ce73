"""The engine and executor contracts: a new one is one file (the toys of docs/architecture.md)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import recaption.engines as engines
import recaption.executors as executors
from recaption.config import CaptionConfig, ExecutorConfig, RunConfig
from recaption.executors.run import run_caption
from recaption.readers import discover_shards

from ..conftest import write_shards
from ..plugins import drop_in, forget

ECHO_ENGINE = '''
from recaption.engines.base import Engine, Generation, Preparer

TORN_DOWN = []


class EchoPreparer(Preparer):
    def prepare(self, images, prompts):
        return [(image.size, prompt) for image, prompt in zip(images, prompts)]


class EchoEngine(Engine):
    """Says what it was asked and how big the image was: no model at all."""

    loads_weights = False

    def setup(self):
        self.preparer = EchoPreparer()
        super().setup()

    def teardown(self):
        TORN_DOWN.append(True)
        super().teardown()

    def generate(self, inputs, decoding=None):
        limit = self.decoding(decoding).max_new_tokens
        return [Generation(f"{w}x{h}: {prompt}"[:limit], 1, False) for (w, h), prompt in inputs]


ENGINE = EchoEngine
'''

SERIAL_EXECUTOR = '''
from recaption.executors.base import Executor
from recaption.captioning.pipeline import CaptionPipeline

RAN = []


class SerialExecutor(Executor):
    """A fresh pipeline (and engine) per shard, in this process."""

    def _execute(self, todo):
        results = []
        for shard in todo:
            RAN.append(shard.name)
            results += CaptionPipeline(self.caption, self.run_config).run_planned([shard]).results
        return results


EXECUTOR = SerialExecutor
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The toy engine and executor dropped in as one file each, on the packages' search paths."""
    engine = drop_in(monkeypatch, engines, tmp_path / "plugins", "echo_engine", ECHO_ENGINE)
    executor = drop_in(monkeypatch, executors, tmp_path / "plugins", "serial_executor", SERIAL_EXECUTOR)
    yield
    forget(engine, executor)


def test_a_new_engine_and_executor_are_one_file_each(tmp_path, plugins):
    assert "echo" in engines.engine_names() and "serial" in executors.executor_names()
    shards = discover_shards(write_shards(tmp_path / "in", 2, 3))
    caption = CaptionConfig(engine="echo", model="none", prompt="What is here?", max_new_tokens=40,
                            passes=["short=Say it short."])
    summary = run_caption(shards, caption, RunConfig(output=str(tmp_path / "out")), ExecutorConfig("serial"))
    assert [r.outcome for r in summary.results] == ["done", "done"]

    import recaption.engines.echo_engine as echo
    import recaption.executors.serial_executor as serial

    assert serial.RAN == ["00000", "00001"]
    assert echo.TORN_DOWN == [True, True]  # each pipeline closed the engine it set up
    rows = pq.read_table(tmp_path / "out" / "00001.parquet").to_pylist()
    first = next(iter(shards[1]))
    assert rows[0]["re_caption"].endswith(": What is here?")
    assert rows[0]["re_caption_short"].endswith(": Say it short.")
    assert rows[0]["key"] == first.key


def test_unknown_engine_and_executor_name_the_choices():
    with pytest.raises(ValueError, match="transformers"):
        engines.engine_class("nope")
    with pytest.raises(ValueError, match="--executor nope: unknown; choose one of local, ray"):
        executors.executor_class("nope")
    from recaption.executors.run import check_run

    with pytest.raises(ValueError, match="--executor nope: unknown"):  # before any model or lock
        check_run(CaptionConfig(model="tiny"), RunConfig(output="unused"), ExecutorConfig("nope"))
