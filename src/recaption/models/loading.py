"""Resolve `--model` (tiny, a local folder, or a hub id) to something from_pretrained takes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .tiny import TINY_MODEL_NAME, tiny_model_path

TINY_RANDOM_NAME = "tiny-random"


def shipped_tiny_captioner() -> Path | None:
    """The trained shapes-world captioner shipped in the package (recaption/data/tiny-captioner)."""
    folder = Path(str(resources.files("recaption") / "data" / "tiny-captioner"))
    return folder if (folder / "config.json").is_file() else None


def resolve_model(name_or_path: str) -> str:
    """`tiny`: the shipped trained captioner (the random one if it is missing); `tiny-random`:
    the random-weight tiny LLaVA at 336 px; else a local folder or a hub id."""
    if name_or_path == TINY_MODEL_NAME:
        return str(shipped_tiny_captioner() or tiny_model_path())
    if name_or_path == TINY_RANDOM_NAME:
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
