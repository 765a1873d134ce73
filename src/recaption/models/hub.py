"""The Hugging Face hub, looked up one way for every model we load: a cached copy is used with no
network access; with the hub off (HF_HUB_OFFLINE) an uncached id fails at once; else one quick
request (HUB_PROBE_TIMEOUT s) asks the hub before from_pretrained downloads. Failures are one
line, in the caller's error type."""

from __future__ import annotations

import os
from pathlib import Path

HUB_PROBE_TIMEOUT = 5.0  # seconds for the one request that asks the hub whether a model is there


def hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    on = ("1", "ON", "YES", "TRUE")
    return constants.is_offline_mode() or any((f or "").strip().upper() in on for f in flags)


def is_hub_id(name: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def in_hub_cache(name: str) -> bool:
    """Whether the local Hugging Face cache holds the model's config (no network access)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except (OSError, ValueError):
        return False
    return isinstance(found, str)


def cached_snapshot(name: str, required: tuple[tuple[str, ...], ...] = ()) -> Path | None:
    """The model's cached folder if it holds config.json and one file of each `required` group."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name, local_files_only=True))
    except (OSError, ValueError):
        return None
    complete = (folder / "config.json").is_file() and all(any((folder / f).is_file() for f in group)
                                                           for group in required)
    return folder if complete else None


def probe_hub(name: str) -> str | None:
    """One request, no retries: None if the hub has `name`, else what is wrong, in words."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    try:
        response = get_session().head(hf_hub_url(name, "config.json"), headers=build_hf_headers(),
                                      timeout=HUB_PROBE_TIMEOUT)
    except Exception as exc:  # no route, no DNS, refused, timed out: all say "no network"
        said = " ".join(str(exc).split()) or type(exc).__name__
        return f"the hub ({constants.ENDPOINT}) cannot be reached ({said})"
    if response.status_code in (401, 403, 404):
        return (f"the hub has no model {name} this machine may read (HTTP {response.status_code}; a "
                "gated or private model needs `hf auth login`)")
    if response.status_code >= 400:
        return f"the hub answered HTTP {response.status_code}"
    return None


def require_on_hub(name: str, label: str, choices: str, error: type[Exception], *,
                   probe: bool = True) -> None:
    """For a hub id not in the cache: refused when the hub is off, else (with `probe`) when one
    quick request says the hub cannot give it. `label` starts the message, `choices` ends it."""
    if hub_offline():
        raise error(f"{label}: not in the local Hugging Face cache and the hub is switched off "
                    f"(HF_HUB_OFFLINE). {choices}")
    problem = probe_hub(name) if probe else None
    if problem:
        raise error(f"{label}: not in the local Hugging Face cache and {problem}. {choices}")
