"""Where steps run, found by name: `executors/<name>_executor.py` defines `EXECUTOR` (an `Executor`
subclass, base.py: the caption step) and `download_shards(planned, downloads, address)` (the
download step). Every executor writes the same files. This registry imports neither step, so a
download never loads the caption pipeline (or torch)."""

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
