"""Resolve `--model` (tiny, a local folder, or a hub id) to something from_pretrained takes."""

from __future__ import annotations

from pathlib import Path

from .tiny import TINY_MODEL_NAME, tiny_model_path


def resolve_model(name_or_path: str) -> str:
    if name_or_path == TINY_MODEL_NAME:
        return str(tiny_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{name_or_path}: folder has no config.json; is it a transformers model folder? "
                "(LLaVA-repo checkpoints need converting first)"
            )
        return str(path)
    return name_or_path  # a hub id; from_pretrained downloads or reads the hub cache
