"""Checks of what a user hands the trainers and evaluators, so a wrong input is one clear line
(`recap` prints it in red and exits 2) instead of a traceback from deep inside transformers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..models.loading import load_or_explain, local_folder_or_name
from ..readers import ShardError, pattern_places
from ..spine.contract import Step
from ..spine.contract import check_output as check_contract
from ..spine.errors import RecaptionError


class TrainingInputError(RecaptionError, ValueError):
    """A wrong input of train-* / eval-*: a missing folder, a model of the wrong kind, no data."""


@contextmanager
def shard_errors() -> Iterator[None]:
    """A broken shard (ShardError) as one line."""
    try:
        yield
    except ShardError as exc:
        raise TrainingInputError(f"broken shard {exc}") from None


def check_device(requested: str) -> str:
    """The device to use; asking for CUDA without a GPU is an input error."""
    from ..hardware import pick_device

    try:
        return pick_device(requested)
    except RuntimeError as exc:
        raise TrainingInputError(str(exc)) from None


TRAINING_FILES = ("train_summary.json", "stream_counts.json", "config.json", "dit.json")


def holds_a_training_run(out) -> bool:
    """A trainer's output folder: checkpoints, or the files a finished or started run leaves."""
    root = Path(out.root)
    checkpoints = any(p.is_dir() for p in root.glob("checkpoint-*"))
    return checkpoints or any((root / n).is_file() for n in TRAINING_FILES)


def check_output(output, command: str, inputs=()) -> Path:
    """A trainer's output folder through the output contract's checks (spine/contract.py): not
    among the training data, not a file, not a folder holding other files; before any work."""
    check_contract(str(output), Step(command, recognise=holds_a_training_run), pattern_places(list(inputs)))
    return Path(output).expanduser()


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


def require_model_type(source: str, option: str, name: str, wanted: str, expected: str) -> None:
    """Refuse, before loading weights, a model whose model_type is not `wanted`."""
    _, kind = model_type(source, option, name)
    if kind != wanted:
        raise TrainingInputError(f"{option} {name}: a {kind or 'unknown'} model; expected {expected}")


def load_start(resume_from: str | None, model: str | None, check, fresh, load_model, *loaders) -> tuple:
    """What a run starts from, its newest checkpoint, else --model, else `fresh()`: the model
    through `load_model(source, use_safetensors=...)` (a checkpoint's from safetensors only, never
    a pickle), then each of `loaders`' parts (tokenizer, processor); `check(source, option, name)`
    refuses the wrong kind of model before any weights load."""
    if not (resume_from or model):
        return fresh()
    option, name = ("checkpoint", resume_from) if resume_from else ("--model", model)
    source = resume_from or model_source(model, "--model")
    check(source, option, name)
    safetensors_only = True if resume_from else None
    loaded = load_pretrained(lambda s: load_model(s, use_safetensors=safetensors_only), source, option, name)
    return (loaded, *(load_pretrained(load, source, option, name) for load in loaders))


def require_counts(config, at_least_one: tuple[str, ...], not_negative: tuple[str, ...]) -> None:
    """ValueError naming the first of a config's settings below 1 (`at_least_one`) or below 0."""
    for names, least, rule in ((at_least_one, 1, "be at least 1"), (not_negative, 0, "not be negative")):
        for name in names:
            if getattr(config, name) < least:
                raise ValueError(f"{name.replace('_', '-')} must {rule}")


def check_dual_encoder(source: str, option: str, name: str) -> None:
    """Refuse, before loading weights, a model that is not a CLIP-style dual encoder."""
    from transformers import AutoModel

    config, kind = model_type(source, option, name)
    try:
        cls = AutoModel._model_mapping[type(config)]
    except KeyError:
        cls = None
    if cls is None or not (hasattr(cls, "get_text_features") and hasattr(cls, "get_image_features")):
        raise TrainingInputError(f"{option} {name}: a {kind or 'unknown'} model, not a CLIP-style dual "
                                 "encoder (CLIP, SigLIP)")
