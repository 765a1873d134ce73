"""Captioning engines: transformers (in-process), vLLM (in-process), OpenAI-compatible servers."""

from __future__ import annotations

from ..config import CaptionConfig
from .base import Generation

ENGINES = ("transformers", "vllm", "openai")


def make_engine(config: CaptionConfig):
    """The engine named by config.engine, not yet set up (so it can be pickled to a worker)."""
    if config.engine == "transformers":
        from .transformers_engine import TransformersCaptioner

        return TransformersCaptioner(config)
    if config.engine == "vllm":
        from .vllm_engine import VLLMCaptioner

        return VLLMCaptioner(config)
    if config.engine == "openai":
        from .openai_engine import OpenAICaptioner

        return OpenAICaptioner(config)
    raise ValueError(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Generation", "make_engine"]
