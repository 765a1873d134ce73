"""Where captioning runs. Every executor runs the same `CaptionPipeline` over disjoint shards,
so outputs, file names, completion markers and resume are the same whichever one is used:

  local    this process (one device), or one process per GPU on this machine (devices.py)
  ray      Ray actors on a local or remote cluster, shards handed out as actors free up

Executors are found by name: `executors/<name>_executor.py` defines `EXECUTOR` (base.py).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..atomic import output_lock, remove_stale_temporaries
from ..config import CaptionConfig, ExecutorConfig, RunConfig
from ..pipeline import forget_vanished_slices, refuse_output_among_inputs
from ..readers import Shard
from ..results import Progress, RunSummary
from ..writer import OutputDir

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
    """Caption `shards` into `run.output` while holding the output folder's lock: one run writes
    to a folder at a time (a second one gets OutputLockedError), whichever executor runs it."""
    executor = executor or ExecutorConfig()
    check_run(caption, run, executor)
    refuse_output_among_inputs(shards, run.output)  # before the lock makes the output folder
    with output_lock(run.output, "recap caption"):
        out = OutputDir(run.output)
        remove_stale_temporaries(out.fs, out.root)  # ours alone now: left by crashed runs
        forget_vanished_slices(shards, out)  # once, with every shard of the run
        try:
            return _run_unlocked(shards, caption, run, executor, progress)
        finally:
            # However the run ends, none of its temporary files outlives it: a stop signal can
            # land between a writer opening its file and the pipeline taking note of it.
            remove_stale_temporaries(out.fs, out.root)


def _run_unlocked(shards: list[Shard], caption: CaptionConfig, run: RunConfig,
                  executor: ExecutorConfig, progress: Progress | None) -> RunSummary:
    return executor_class(executor.executor)(caption, run, executor, progress).run(shards)


__all__ = ["check_run", "devices_to_use", "executor_class", "executor_names", "run_caption", "visible_gpus"]
