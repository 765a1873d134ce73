"""`--executor local`: this process on one device, or one worker process per GPU (devices.py)
when several are given or visible."""

from __future__ import annotations

from dataclasses import replace

from ..pipeline import CaptionPipeline
from ..readers import Shard
from ..spine.results import ShardResult
from .base import Executor


class LocalExecutor(Executor):
    def _execute(self, todo: list[Shard]) -> list[ShardResult]:
        from . import devices_to_use

        caption = self.caption
        devices = devices_to_use(caption, self.config)
        if len(devices) > 1:
            from .devices import run_on_devices

            return run_on_devices(todo, caption, self.run_config, devices, self.progress)
        if len(devices) == 1:
            caption = replace(caption, device=devices[0])
        return CaptionPipeline(caption, self.run_config, progress=self.progress).run_planned(todo).results


EXECUTOR = LocalExecutor
