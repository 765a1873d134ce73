"""Captioning engines, found by name: `engines/<name>_engine.py` defines `ENGINE`.

Built in: transformers (in-process), vllm (in-process), openai (OpenAI-compatible servers). Only
the chosen engine's module is imported (vLLM and transformers are heavy)."""

from __future__ import annotations

import importlib
import pkgutil

from .base import Engine, Generation, Preparer

_SUFFIX = "_engine"


def engine_names() -> list[str]:
    return sorted(m.name[: -len(_SUFFIX)] for m in pkgutil.iter_modules(__path__) if m.name.endswith(_SUFFIX))


def engine_class(name: str) -> type[Engine]:
    if name not in engine_names():
        raise ValueError(f"--engine {name}: unknown; choose one of {', '.join(engine_names())}")
    return importlib.import_module(f"{__name__}.{name}{_SUFFIX}").ENGINE


def make_engine(config) -> Engine:
    """The engine named by config.engine, not yet set up (so it can be pickled to a worker)."""
    return engine_class(config.engine)(config)


ENGINES = tuple(engine_names())

__all__ = ["ENGINES", "Engine", "Generation", "Preparer", "engine_class", "engine_names", "make_engine"]
