"""Where captioning runs. Every executor runs the same `CaptionPipeline` over disjoint shards,
so outputs, file names, completion markers and resume are the same whichever one is used:

  local    this process (one device), or one process per GPU on this machine (devices.py)
  ray      Ray actors on a local or remote cluster, shards handed out as actors free up

Executors are found by name: `executors/<name>_executor.py` defines `EXECUTOR` (base.py).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..config import CaptionConfig, ExecutorConfig, RunConfig
from ..pipeline import CAPTION, forget_vanished_slices
from ..readers import Shard, input_locations
from ..spine.contract import open_output
from ..spine.results import Progress, RunSummary

_SUFFIX = "_executor"


def executor_names() -> list[str]:
    return sorted(m.name[: -len(_SUFFIX)] for m in pkgutil.iter_modules(__path__) if m.name.endswith(_SUFFIX))


def executor_class(name: str):
    if name not in executor_names():
        raise ValueError(f"--executor {name}: unknown; choose one of {', '.join(executor_names())}")
    return importlib.import_module(f"{__name__}.{name}{_SUFFIX}").EXECUTOR


def visible_gpus() -> list[str]:
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def devices_to_use(caption: CaptionConfig, executor: ExecutorConfig) -> list[str]:
    """Explicit --devices, else every visible GPU when there are several and --device is auto."""
    if executor.devices:
        return list(executor.devices)
    if caption.engine == "transformers" and caption.device == "auto":
        gpus = visible_gpus()
        if len(gpus) > 1:
            return gpus
    return []


def check_run(caption: CaptionConfig, run: RunConfig, executor: ExecutorConfig) -> None:
    """What can be checked in seconds, before the output lock, worker processes and model
    loading: the model (not for --engine openai, where it is a name the server serves), the
    devices asked for, the CLIP of --score. Each failure is one line (a ValueError)."""
    from ..engines import engine_class

    if engine_class(caption.engine).loads_weights:
        from ..models.loading import check_model
        from .devices import check_devices

        check_model(caption.model)
        if executor.executor == "local":  # Ray places its workers on the cluster's GPUs
            if executor.devices:
                check_devices(list(executor.devices), "--devices")
            elif caption.device != "auto":
                check_devices([caption.device], "--device")
    if run.clip_model:  # a CLIP that is not here fails now, not after the captioner has loaded
        from ..quality.scorers import check_scorer

        check_scorer(run.clip_model)


def run_caption(shards: list[Shard], caption: CaptionConfig, run: RunConfig,
                executor: ExecutorConfig | None = None, progress: Progress | None = None) -> RunSummary:
    """Caption `shards` into `run.output` through the output contract (spine/contract.py: not
    among the inputs, not another step's folder, one run at a time, OS errors as one line),
    whichever executor runs it."""
    executor = executor or ExecutorConfig()
    check_run(caption, run, executor)
    with open_output(run.output, CAPTION, input_locations(shards)) as out:
        forget_vanished_slices(shards, out)  # once, with every shard of the run
        return _run_unlocked(shards, caption, run, executor, progress)


def _run_unlocked(shards: list[Shard], caption: CaptionConfig, run: RunConfig,
                  executor: ExecutorConfig, progress: Progress | None) -> RunSummary:
    return executor_class(executor.executor)(caption, run, executor, progress).run(shards)


__all__ = ["check_run", "devices_to_use", "executor_class", "executor_names", "run_caption", "visible_gpus"]
