"""Checkpoints shared by the trainers, with no pickle anywhere: a folder holding the model folder
plus the trainer state (trainer_state.json: the structure, each tensor replaced by a reference;
trainer_state.safetensors: the tensors, every rank's RNG states among them), so loading one can
never run code. Written under a temporary name and renamed: there whole or not at all. Older
versions' trainer_state.pt (a pickle) is refused with a message, never unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from ..spine.atomic import temporary_name
from ..spine.ledger import describe_differences
from .inputs import TrainingInputError

log = logging.getLogger(__name__)

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_STATE = "trainer_state.pt"
FORMAT = "recaption-trainer-state"
VERSION = 1
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


class CheckpointError(TrainingInputError):
    """A checkpoint that cannot be resumed from (an old pickle one, an incomplete folder)."""


def _encode(value, tensors: dict, name: str):
    if isinstance(value, torch.Tensor):
        key = name if name not in tensors else f"{name}#{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, dict):
        plain = all(isinstance(k, str) for k in value) and not {_TENSOR, _TUPLE, _ITEMS} & set(value)
        if plain:
            return {k: _encode(v, tensors, f"{name}.{k}") for k, v in value.items()}
        return {_ITEMS: [[_encode(k, tensors, f"{name}.key{i}"), _encode(v, tensors, f"{name}.{k}")]
                         for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint cannot hold {type(value).__name__} (at {name})")


def _decode(value, tensors: dict):
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _TUPLE in value:
            return tuple(_decode(v, tensors) for v in value[_TUPLE])
        if _ITEMS in value:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value[_ITEMS]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def rng_tensors(rng: random.Random, device: str) -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors: the trainer's random.Random and torch's generators."""
    version, words, gauss = rng.getstate()
    if version != 3:
        raise TypeError(f"unexpected random.Random state version {version}")
    states = {"python": torch.tensor(words, dtype=torch.int64),
              "python_gauss": torch.tensor([math.nan if gauss is None else gauss], dtype=torch.float64),
              "torch": torch.get_rng_state()}
    if str(device).startswith("cuda"):
        states["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return states


def restore_rng(states: dict[str, torch.Tensor], device: str) -> random.Random:
    """Set torch's generators back and return the trainer's random.Random as it was."""
    gauss = float(states["python_gauss"][0])
    rng = random.Random()
    rng.setstate((3, tuple(int(w) for w in states["python"].tolist()), None if math.isnan(gauss) else gauss))
    torch.set_rng_state(states["torch"].to(torch.uint8))
    if "cuda" in states and str(device).startswith("cuda"):
        torch.cuda.set_rng_state(states["cuda"].to(torch.uint8), torch.device(device))
    return rng


def _replace_folder(tmp: Path, folder: Path) -> None:
    """Rename a finished folder into place (an existing one is moved aside first, then deleted)."""
    old = None
    if folder.exists():
        old = Path(temporary_name(str(folder)))
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(folder: Path, parts: list, optimizer, scheduler, step: int,
                    rng_states: list[dict[str, torch.Tensor]], **extra) -> None:
    """`parts` have save_pretrained (model, tokenizer, processor); `rng_states` holds one
    `rng_tensors` dict per rank, in rank order; `extra`: JSON-able values and tensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temporary_name(str(folder)))
    try:
        for part in parts:
            part.save_pretrained(tmp)
        tensors: dict[str, torch.Tensor] = {}
        payload = {"format": FORMAT, "version": VERSION, "step": step, "world_size": len(rng_states),
                   "optimizer": _encode(optimizer.state_dict(), tensors, "optimizer"),
                   "scheduler": _encode(scheduler.state_dict(), tensors, "scheduler"),
                   "extra": _encode(extra, tensors, "extra")}
        for rank, states in enumerate(rng_states):
            for key, value in states.items():
                tensors[f"rng.{rank}.{key}"] = value.detach().cpu().contiguous()
        save_file(tensors, str(tmp / STATE_TENSORS), metadata={"format": FORMAT})
        (tmp / STATE_JSON).write_text(json.dumps(payload))
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_final(output: Path, parts: list) -> None:
    """The final model into OUTPUT via a temporary folder, each file and folder renamed into place whole."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tmp = Path(temporary_name(str(output / "final")))
    try:
        for part in parts:
            part.save_pretrained(tmp)
        for path in sorted(tmp.iterdir()):
            (_replace_folder if path.is_dir() else os.replace)(path, output / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def check_checkpoint(folder: str | Path, weights: tuple[str, ...] = MODEL_WEIGHTS) -> Path:
    """Refuse, in one line, a checkpoint that cannot be resumed from: an older version's (a pickle,
    never loaded), an incomplete or foreign folder. `weights`: one of them must be there."""
    folder = Path(folder)
    has_state = (folder / STATE_JSON).is_file() and (folder / STATE_TENSORS).is_file()
    if not has_state:
        if (folder / LEGACY_STATE).exists():
            raise CheckpointError(f"{folder} was written by an older recaption: its trainer state is a "
                                  f"pickle ({LEGACY_STATE}), which is never loaded because unpickling can "
                                  "run code; delete that checkpoint folder to resume from an earlier one, "
                                  "or train into a new --output")
        raise CheckpointError(f"{folder}: no {STATE_JSON} and {STATE_TENSORS}, so not a complete checkpoint; "
                              "delete it to resume from an earlier one, or train into a new --output")
    if not any((folder / name).is_file() for name in weights):
        raise CheckpointError(f"{folder}: no {weights[0]}; not a complete checkpoint (delete it)")
    for name in weights:
        if name.endswith(".safetensors") and (folder / name).is_file():
            _check_tensors_readable(folder / name)
    if (folder / LEGACY_STATE).exists():
        log.warning("ignoring %s in %s: a pickle, never loaded", LEGACY_STATE, folder)
    return folder


def _check_tensors_readable(path: Path) -> None:
    """A safetensors file whose header and tensors are all there (a truncated copy: one line)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except (SafetensorError, OSError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable tensors ({why}); delete that checkpoint folder to resume "
                              "from an earlier one, or train into a new --output") from None


def load_state(folder: str | Path, rank: int = 0, world_size: int = 1,
               weights: tuple[str, ...] = MODEL_WEIGHTS) -> dict:
    """A checkpoint's optimizer and scheduler states, step, extra values, and `rng`: this rank's
    RNG states. Every field is checked before use: a wrong one is a CheckpointError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = check_checkpoint(folder, weights)
    try:
        payload = json.loads((folder / STATE_JSON).read_text())
        tensors = load_file(str(folder / STATE_TENSORS))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, RecursionError) as exc:
        raise CheckpointError(f"{folder}: unreadable trainer state ({exc or type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{folder / STATE_JSON}: not a recaption trainer state")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{folder / STATE_JSON}: trainer state version {payload.get('version')}; this "
                              f"recaption reads version {VERSION}")
    validate_state(folder, payload)
    if payload["world_size"] != world_size:
        raise CheckpointError(f"{folder} was written by a run of {payload['world_size']} process(es); resume "
                              f"it with as many (torchrun --nproc_per_node {payload['world_size']}), not "
                              f"{world_size}")
    try:
        state = {"step": payload["step"], "optimizer": _decode(payload["optimizer"], tensors),
                 "scheduler": _decode(payload["scheduler"], tensors), **_decode(payload["extra"], tensors)}
    except KeyError as exc:
        raise CheckpointError(f"{folder}: trainer state is missing {exc}") from None
    except (TypeError, ValueError) as exc:  # a reference or pair that is not what we write
        raise CheckpointError(f"{folder / STATE_JSON}: unreadable trainer state ({exc}); the checkpoint "
                              "was altered or is damaged: delete that checkpoint folder") from None
    prefix = f"rng.{rank}."
    state["rng"] = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state["rng"]:
        raise CheckpointError(f"{folder}: trainer state has no RNG state for rank {rank}")
    return state


def validate_state(folder: Path, payload: dict) -> None:
    """Each field of a trainer state as the trainers use it (`step` also the folder name's)."""
    where = folder / STATE_JSON

    def wrong(field: str, expected: str) -> CheckpointError:
        value = json.dumps(payload.get(field), default=str)[:60]
        return CheckpointError(f"{where}: field {field!r} is {value}, not {expected}; the checkpoint was "
                               "altered or is damaged: delete that checkpoint folder to resume from an "
                               "earlier one, or train into a new --output")

    for field, expected in (("step", "a whole number >= 0"), ("world_size", "a whole number >= 1")):
        value = payload.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < (field == "world_size"):
            raise wrong(field, expected)
    named = folder.name.rsplit("-", 1)[-1]
    if named.isdigit() and int(named) != payload["step"]:
        raise wrong("step", f"the step {int(named)} its folder name says")
    for field in ("optimizer", "scheduler", "extra"):
        if not isinstance(payload.get(field), Mapping):
            raise wrong(field, "a mapping")


def require_same_recipe(folder: str | Path, recorded: Mapping | None, current: Mapping,
                        added_later: Mapping | None = None) -> None:
    """The settings a checkpoint recorded (those missing from older ones as `added_later` says)
    equal the current ones, or one line names each difference; none recorded (older versions): trusted."""
    if recorded is None:
        return
    if not isinstance(recorded, Mapping):
        raise CheckpointError(f"{folder}: recorded settings are not a mapping; train into a new --output")
    then = {k: recorded.get(k, (added_later or {}).get(k)) for k in current}
    if then != dict(current):
        differences = "; ".join(describe_differences(then, current))
        raise TrainingInputError(f"{Path(folder).parent} holds a run with other settings ({differences}); "
                                 "train into a new --output, or give the same settings to resume it")


def _altered(folder, field: str, what: str) -> CheckpointError:
    return CheckpointError(f"{Path(folder) / STATE_JSON}: {field} is {what}; the checkpoint was altered or "
                           "is damaged: delete that checkpoint folder to resume from an earlier one, or "
                           "train into a new --output")


def _shown(value) -> str:
    return json.dumps(value, default=str)[:40]


def _check_like(folder, value, fresh, field: str) -> None:
    """`value` (from a checkpoint) shaped as `fresh` (this run's own state): the same kinds, numbers
    finite and not negative where ours are not, field by field (keys only one side has are the
    other torch version's, filled in by torch). A NaN learning rate trained NaN; a string crashed."""
    if isinstance(fresh, Mapping):
        if not isinstance(value, Mapping):
            raise _altered(folder, field, "not a mapping")
        for key in fresh.keys() & value.keys():
            _check_like(folder, value[key], fresh[key], f"{field}.{key}")
    elif isinstance(fresh, list | tuple):
        if not isinstance(value, list | tuple) or len(value) != len(fresh):
            raise _altered(folder, field, f"not a list of {len(fresh)}")
        for i, (v, f) in enumerate(zip(value, fresh, strict=True)):
            _check_like(folder, v, f, f"{field}[{i}]")
    elif fresh is None:  # a torch option left unset (foreach, fused): None or a flag
        if value is not None and not isinstance(value, bool):
            raise _altered(folder, field, f"{_shown(value)}, not a flag")
    elif isinstance(fresh, bool | str):
        if type(value) is not type(fresh):
            raise _altered(folder, field, f"{_shown(value)}, not a {type(fresh).__name__}")
    elif isinstance(fresh, int | float):
        whole = isinstance(fresh, int)  # a counter: a float only if it is a whole number
        usable = not isinstance(value, bool) and (
            isinstance(value, int) and abs(value) < 2**53  # a float holds it (a huge one overflowed)
            or isinstance(value, float) and math.isfinite(value) and (not whole or value.is_integer()))
        if not usable or value < 0 <= fresh:
            raise _altered(folder, field, f"{_shown(value)}, not a usable "
                                          f"{type(fresh).__name__}")


def _check_moments(folder, optimizer) -> None:
    """Each parameter's restored optimizer state: finite tensors of its shape (or plain numbers)."""
    for i, (param, moments) in enumerate(optimizer.state.items()):
        for name, value in moments.items():
            if isinstance(value, torch.Tensor):
                fits = value.shape == param.shape or (name == "step" and value.ndim == 0)
                if fits and bool(torch.isfinite(value).all()):
                    continue
            elif not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value):
                continue
            raise _altered(folder, f"optimizer state {name} of parameter {i}",
                           "not a finite tensor of its shape")


def restore_optimizer(folder: str | Path, state: dict, optimizer, scheduler) -> None:
    """Load a checkpoint's optimizer and scheduler states, each checked against this run's own
    first; states that do not fit or were altered: one line naming the field."""
    planned = list(getattr(scheduler, "base_lrs", []))  # this run's learning rates
    fresh_groups, fresh_scheduler = optimizer.state_dict()["param_groups"], scheduler.state_dict()
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{folder}: its optimizer state does not fit this model "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "train into a new --output") from None
    # torch takes any values: checked once loaded (a group count that differs failed above)
    _check_like(folder, optimizer.state_dict()["param_groups"], fresh_groups, "optimizer.param_groups")
    _check_like(folder, scheduler.state_dict(), fresh_scheduler, "scheduler")
    _check_moments(folder, optimizer)
    if planned and list(scheduler.base_lrs) != planned:
        raise CheckpointError(f"{folder}: its scheduler's learning rates {list(scheduler.base_lrs)} are not "
                              f"this run's {planned}; the checkpoint was altered or is damaged: delete that "
                              "checkpoint folder")


def latest_checkpoint(output: Path, prefix: str = "checkpoint-") -> str | None:
    found = sorted(p for p in output.glob(f"{prefix}*[0-9]") if p.is_dir()) if output.exists() else []
    return str(found[-1]) if found else None
