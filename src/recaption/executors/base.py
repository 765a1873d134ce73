"""The executor contract: `run` plans the shards against the output folder's markers (refusing
mixed settings), reports the finished ones as skipped, and hands the rest to `_execute`, which
runs `CaptionPipeline.run_planned` wherever it likes. `EXECUTOR = MyExecutor` in
executors/<name>_executor.py makes `--executor <name>` find it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..spine.results import SKIPPED, Progress, RunSummary, ShardResult

if TYPE_CHECKING:
    from ..config import CaptionConfig, ExecutorConfig, RunConfig
    from ..readers import Shard


class Executor:
    def __init__(self, caption: CaptionConfig, run: RunConfig, config: ExecutorConfig,
                 progress: Progress | None = None):
        self.caption, self.run_config, self.config = caption, run, config
        self.progress = progress or Progress()

    def run(self, shards: list[Shard]) -> RunSummary:
        from ..captioning.pipeline import plan_shards  # the caption step; a download never loads it

        todo, done = plan_shards(shards, self.caption, self.run_config)
        summary = RunSummary([ShardResult(s.name, s.source, SKIPPED) for s in done])
        self.progress.run_started(todo)
        if todo:
            summary.results += self._execute(todo)
        return summary

    def _execute(self, todo: list[Shard]) -> list[ShardResult]:
        raise NotImplementedError
