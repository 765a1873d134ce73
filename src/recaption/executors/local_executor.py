"""`--executor local`: captioning in this process on one device, or one worker process per GPU
(devices.py) when several are given or visible; downloading on this process's event loop."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from ..spine.results import RunSummary, ShardResult
from .base import Executor

if TYPE_CHECKING:
    from ..downloads.downloader import PlannedShard, ShardDownloads
    from ..readers import Shard


class LocalExecutor(Executor):
    def _execute(self, todo: list[Shard]) -> list[ShardResult]:
        from ..captioning.pipeline import CaptionPipeline
        from .run import devices_to_use

        caption = self.caption
        devices = devices_to_use(caption, self.config)
        if len(devices) > 1:
            from .devices import run_on_devices

            return run_on_devices(todo, caption, self.run_config, devices, self.progress)
        if len(devices) == 1:
            caption = replace(caption, device=devices[0])
        return CaptionPipeline(caption, self.run_config, progress=self.progress).run_planned(todo).results


EXECUTOR = LocalExecutor


def download_shards(planned: Iterator[PlannedShard | ShardResult], downloads: ShardDownloads,
                    address: str | None = None) -> RunSummary:
    """Every planned shard in this process, `shards_in_flight` at a time (`address`: unused)."""
    return downloads.run_here(planned)
