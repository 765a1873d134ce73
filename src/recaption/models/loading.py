"""Resolve `--model` (tiny, tiny-random, tiny-text, a local folder, or a hub id) to what
from_pretrained takes. A model that cannot be used here fails at once, in one line (ModelError)
naming --model and what to give instead; hub ids follow the ladder of models/hub.py."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..spine.errors import RecaptionError
from .hub import in_hub_cache, is_hub_id, require_on_hub
from .tiny import TINY_MODEL_NAME, TINY_TEXT_NAME, tiny_model_path, tiny_text_model_path

TINY_RANDOM_NAME = "tiny-random"
# --dtype names the engines take, short ones mapped to long ones (CaptionConfig checks them).
DTYPES = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
          "fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
DTYPE_CHOICES = "auto, float32, bfloat16 or float16 (short: fp32, bf16, fp16)"
# --device / --devices spellings: auto (--device only), cpu, cuda, cuda:N, mps.
DEVICE_PATTERN = r"cpu|cuda(:[0-9]+)?|mps"


class ModelError(RecaptionError, ValueError):
    """A captioning model that cannot be used here, in one line saying what to do instead."""


def local_choices() -> str:
    return (
        f"Give --model one that is here: {TINY_MODEL_NAME} (built in; trained on the synthetic "
        "shapes world only), or a local model folder (save_pretrained, or `hf download MODEL "
        "--local-dir DIR` on a machine with a network)."
    )


def looks_like_a_path(name: str) -> bool:
    """`./x`, `/x`, `~/x`, `a/b/c`: meant as a folder, never a hub id (`owner/name`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an error's message (transformers' run to many), cut to `limit`."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def local_folder_or_name(name: str, option: str, error: type[ValueError] = ValueError, hint: str = "") -> str:
    """A local model folder (holding config.json), or `name` when it is not a path (a hub id);
    anything else is `error`, one line naming `option`."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise error(f"{option} {name}: is a file, not a model folder")
        if not (path / "config.json").is_file():
            raise error(f"{option} {name}: folder has no config.json; is it a transformers model "
                        f"folder?{hint}")
        return str(path)
    if looks_like_a_path(name):
        raise error(f"{option} {name}: no such folder")
    return name


def load_or_explain(load, source: str, label: str, error: type[ValueError] = ValueError, hint: str = ""):
    """`load(source)` (a from_pretrained), "not found" and "not that kind of model" as one line
    (`error`) starting with `label`."""
    try:
        return load(source)
    except OSError as exc:
        where = (
            "could not be loaded"
            if Path(source).expanduser().exists()
            else "no such folder, and not a model on the Hugging Face Hub (or offline)"
        )
        raise error(f"{label}: {where} ({first_line(exc)}){hint}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise error(f"{label}: not a model this command can use ({first_line(exc)}){hint}") from None


def resolve_model(name_or_path: str) -> str:
    """`tiny` (the shipped trained captioner, else the random one), `tiny-random`, `tiny-text`, a
    local folder or a hub id; ModelError for anything else, or an uncached id with the hub off."""
    if name_or_path == TINY_MODEL_NAME:  # the trained captioner shipped in recaption/data/tiny-captioner
        shipped = Path(str(resources.files("recaption") / "data" / "tiny-captioner"))
        return str(shipped if (shipped / "config.json").is_file() else tiny_model_path())
    if name_or_path == TINY_RANDOM_NAME:
        return str(tiny_model_path())
    if name_or_path == TINY_TEXT_NAME:  # the built-in text LLM of text-only passes
        return str(tiny_text_model_path())
    name = name_or_path
    if Path(name).expanduser().exists():
        hint = " (LLaVA-repo checkpoints need converting first: recap convert-llava)"
        return local_folder_or_name(name, "--model", ModelError, hint)
    if looks_like_a_path(name):
        raise ModelError(f"--model {name}: no such folder. {local_choices()}")
    if not is_hub_id(name):
        raise ModelError(f"--model {name}: no such folder, and not a hub id (owner/name). {local_choices()}")
    if not in_hub_cache(name):
        require_on_hub(name, f"--model {name}", local_choices(), ModelError, probe=False)
    return name  # a hub id; from_pretrained reads the hub cache or downloads


def check_model(name: str) -> None:
    """Fail now, in one line (ModelError), if `--model name` cannot load here (an uncached hub id:
    one quick request to the hub)."""
    if name in (TINY_MODEL_NAME, TINY_RANDOM_NAME, TINY_TEXT_NAME):
        return  # built in (built on first use, by the run itself)
    source = resolve_model(name)
    if source == name and not Path(name).expanduser().exists() and not in_hub_cache(name):
        require_on_hub(name, f"--model {name}", local_choices(), ModelError)


def load_error(name: str, exc: BaseException) -> ModelError:
    """An error from transformers while loading `name`, as one line."""
    return ModelError(f"cannot load model {name}: {first_line(exc, limit=300)}")
