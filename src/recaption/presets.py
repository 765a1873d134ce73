"""Caption presets: passes files shipped with the package (`data/presets/<name>.yaml`), chosen
with `--preset NAME`, listed by `recap models`. A preset is a passes file in its mapping form
(`description`, `source`, optional `conditional` and `top_k`, `passes`), read through the bounded
YAML loader; a run records the passes it made, so a preset changed later is a settings change."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .passes import CaptionPass, PassError, parse_passes
from .spine.user_yaml import UserFileError, load_yaml

_KEYS = {"description", "source", "conditional", "top_k", "passes"}


class PresetError(PassError):
    """A --preset that is not shipped, or a preset file that is malformed."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    source: str
    path: str  # the file, to copy and edit
    passes: tuple[CaptionPass, ...]
    conditional: bool = False
    top_k: int = 0


def presets_folder() -> Path:
    return Path(str(resources.files("recaption") / "data" / "presets"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_folder().glob("*.yaml"))


def load_preset(name: str) -> Preset:
    """The shipped preset `name`; PresetError (one line, naming the presets there are) otherwise."""
    if name not in preset_names():
        raise PresetError(f"--preset {name}: no such preset; choose one of {', '.join(preset_names())} "
                          "(or give your own passes file with --passes)")
    path = presets_folder() / f"{name}.yaml"
    try:
        data = load_yaml(path, "--preset")
    except UserFileError as exc:
        raise PresetError(str(exc)) from None
    if not isinstance(data, dict) or set(data) - _KEYS or not isinstance(data.get("passes", []), list):
        raise PresetError(f"--preset {name} ({path}): expected a mapping of {', '.join(sorted(_KEYS))}")
    top_k = data.get("top_k", 0)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise PresetError(f"--preset {name}: top_k {top_k!r} is not a whole number 0 or more")
    passes = parse_passes(data.get("passes") or [], f"--preset {name}", PresetError)
    return Preset(name, str(data.get("description", "")), str(data.get("source", "")), str(path),
                  tuple(passes), bool(data.get("conditional", False)), top_k)


def presets() -> list[Preset]:
    return [load_preset(name) for name in preset_names()]


def preset_columns(preset: Preset) -> list[str]:
    """The caption columns a run with this preset writes."""
    from .passes import conditional_pass, default_pass

    passes = [default_pass(), *preset.passes, *([conditional_pass()] if preset.conditional else [])]
    return [p.column for p in passes]
