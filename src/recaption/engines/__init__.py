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


def _engine_module(name: str, label: str):
    if name not in engine_names():
        raise ValueError(f"{label}: unknown; choose one of {', '.join(engine_names())}")
    return importlib.import_module(f"{__name__}.{name}{_SUFFIX}")


def engine_class(name: str) -> type[Engine]:
    return _engine_module(name, f"--engine {name}").ENGINE


def make_engine(config) -> Engine:
    """The engine named by config.engine, not yet set up (so it can be pickled to a worker)."""
    return engine_class(config.engine)(config)


def text_engine_class(name: str, pass_name: str = "") -> type[Engine]:
    """The text-only generator of engine `name` (its module's TEXT_ENGINE): for passes with `model:`."""
    module = _engine_module(name, f"pass {pass_name}: engine {name}")
    if not hasattr(module, "TEXT_ENGINE"):
        raise ValueError(f"pass {pass_name}: engine {name} has no text-only generator; choose one of "
                         f"{', '.join(n for n in engine_names() if n != name)}")
    return module.TEXT_ENGINE


def text_config(config, caption_pass):
    """The settings a text-only pass's engine is built from: the run's, with the pass's model,
    engine and endpoint."""
    from dataclasses import replace

    server = config.server
    if caption_pass.endpoint and [caption_pass.endpoint] != list(server.endpoints):
        # An endpoint a passes file names is not the one the run's key was given for: the key
        # (OPENAI_API_KEY or --api-key-env) is never sent there.
        server = replace(server, endpoints=[caption_pass.endpoint], api_key_env=None)
    return replace(config, model=caption_pass.model, engine=caption_pass.engine or config.engine, passes=[],
                   conditional=False, processor_options={}, server=server)


def make_text_engines(config) -> dict[str, Engine]:
    """pass name -> the (not yet set up) engine of each text-only pass of `config`; passes on the
    same model, engine and endpoint share one."""
    engines: dict[str, Engine] = {}
    shared: dict[tuple, Engine] = {}
    for p in config.caption_passes:
        if not p.text_only:
            continue
        settings = text_config(config, p)
        key = (settings.engine, settings.model, tuple(settings.server.endpoints))
        if key not in shared:
            shared[key] = text_engine_class(settings.engine, p.name)(settings)
        engines[p.name] = shared[key]
    return engines


ENGINES = tuple(engine_names())

__all__ = ["ENGINES", "Engine", "Generation", "Preparer", "engine_class", "engine_names", "make_engine",
           "make_text_engines", "text_config", "text_engine_class"]
