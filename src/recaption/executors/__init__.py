"""Where steps run. An executor runs a caption step (every executor the same `CaptionPipeline`
over disjoint shards) and a download step (the same `ShardDownloads` shard by shard), so outputs,
file names, markers and resume are the same whichever one ran:

  local    this process (one device), or one process per GPU on this machine (devices.py);
           downloads on this process's event loop
  ray      Ray actors on a local or remote cluster, shards handed out as actors free up;
           downloads as Ray tasks across the cluster

Executors are found by name: `executors/<name>_executor.py` defines `EXECUTOR` (an `Executor`
subclass, base.py: the caption step) and `download_shards(planned, downloads, address)` (the
download step). This module is the registry only and imports neither step, so the download
path never loads the caption pipeline (or torch). `run.py` runs a caption step.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_SUFFIX = "_executor"


def executor_names() -> list[str]:
    return sorted(m.name[: -len(_SUFFIX)] for m in pkgutil.iter_modules(__path__) if m.name.endswith(_SUFFIX))


def executor_module(name: str) -> ModuleType:
    """The module of executor `name`; ValueError (one line, the choices) for an unknown one."""
    if name not in executor_names():
        raise ValueError(f"--executor {name}: unknown; choose one of {', '.join(executor_names())}")
    return importlib.import_module(f"{__name__}.{name}{_SUFFIX}")


def executor_class(name: str):
    """The caption step's Executor subclass of executor `name`."""
    return executor_module(name).EXECUTOR


__all__ = ["executor_class", "executor_module", "executor_names"]
