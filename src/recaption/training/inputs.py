"""Checks of what a user hands the trainers and evaluators, so a wrong input is one clear line
(`recap` prints it in red and exits 2) instead of a traceback from deep inside transformers."""

from __future__ import annotations

from pathlib import Path

from ..models.loading import load_or_explain, local_folder_or_name
from ..spine.errors import RecaptionError


class TrainingInputError(RecaptionError, ValueError):
    """A wrong input of train-* / eval-*: a missing folder, a model of the wrong kind, no data."""


def check_device(requested: str) -> str:
    """The device to use; asking for CUDA without a GPU is an input error."""
    from ..hardware import pick_device

    try:
        return pick_device(requested)
    except RuntimeError as exc:
        raise TrainingInputError(str(exc)) from None


def check_output(output) -> Path:
    """The output folder; a file in its place, or on its path, is refused before any work is done."""
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise TrainingInputError(f"--output {output}: is a file, not a folder; choose another --output")
    blocking = next((parent for parent in out.absolute().parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise TrainingInputError(
            f"--output {output}: {blocking} is a file, not a folder; choose another --output"
        )
    return out


def model_source(name: str, option: str) -> str:
    """A local model folder (it must hold config.json) or a hub id, for from_pretrained."""
    return local_folder_or_name(name, option, TrainingInputError)


def load_pretrained(load, source: str, option: str, name: str | None = None):
    """`load(source)` (a from_pretrained), with "not found" and "not that kind of model" turned
    into one line naming the option the user gave."""
    return load_or_explain(load, source, f"{option} {name or source}", TrainingInputError)


def model_type(source: str, option: str, name: str | None = None) -> tuple[object, str]:
    """The model's config and model_type (read before loading weights, to refuse the wrong kind early)."""
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig.from_pretrained, source, option, name)
    return config, getattr(config, "model_type", "")


def check_dual_encoder(source: str, option: str, name: str) -> None:
    """Refuse, before loading weights, a model that is not a CLIP-style dual encoder."""
    from transformers import AutoModel

    config, kind = model_type(source, option, name)
    try:
        cls = AutoModel._model_mapping[type(config)]
    except KeyError:
        cls = None
    if cls is None or not (hasattr(cls, "get_text_features") and hasattr(cls, "get_image_features")):
        raise TrainingInputError(
            f"{option} {name}: a {kind or 'unknown'} model, not a CLIP-style dual encoder (CLIP, SigLIP)"
        )
