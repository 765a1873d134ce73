"""Terminal progress for the CLI: shards and images done, images/s (from the first shard's start,
so a model's loading is not in it), ETA."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .spine.results import FAILED, ShardResult
from .spine.results import Progress as PipelineProgress


class RichProgress(PipelineProgress):
    def __init__(self, console: Console | None = None, description: str = "captioning", unit: str = "images"):
        self.console = console or Console(stderr=True)
        self.description = description
        counts = TextColumn(f"shards  {{task.fields[images]}} {unit}  {{task.fields[rate]}} {unit}/s")
        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             counts, TimeRemainingColumn(), console=self.console)
        self._task = None
        self._images = self._ok = 0
        # From the run's start, moved to the first shard's start when the step reports one (the
        # caption step, after its model loaded): loading a model is not part of the rate.
        self._started = time.perf_counter()
        self._first_shard = True

    def run_started(self, shards) -> None:
        self._bar.start()
        self._started = time.perf_counter()
        self._task = self._bar.add_task(self.description, total=len(shards) or None, images=0, rate="-")

    def shard_started(self, shard) -> None:
        if self._first_shard:
            self._first_shard = False
            self._started = time.perf_counter()

    def rows_done(self, rows: int, ok: int) -> None:
        self._images += rows
        self._ok += ok
        elapsed = time.perf_counter() - self._started
        rate = f"{self._ok / elapsed:.1f}" if elapsed > 0 else "-"
        self._bar.update(self._task, images=self._images, rate=rate)

    def shard_finished(self, result: ShardResult) -> None:
        self._bar.advance(self._task)
        if result.outcome == FAILED:
            from rich.markup import escape

            from .redact import redact

            message = escape(redact(f"{result.source}: {result.error}"))
            self._bar.console.print(f"[red]shard failed[/red] {message}", soft_wrap=True)

    def stop(self) -> None:
        self._bar.stop()
