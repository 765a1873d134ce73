"""Which scorer a `--clip-model` name means: an open_clip model (`open_clip:...`, or a folder
with open_clip_config.json) or a transformers dual encoder (everything else: built-ins,
folders, hub ids). Both score alike (100 x cosine, the same long-text rule) and record which
library, model and long-text rule made each score column."""

from __future__ import annotations

from .clip import ClipScorer, resolve_clip_model
from .open_clip_scorer import OpenClipScorer, is_open_clip, open_clip_spec


def make_scorer(name: str, device: str = "auto", batch_size: int = 64, long_text: str = "truncate"):
    scorer = OpenClipScorer if is_open_clip(name) else ClipScorer
    return scorer(name, device=device, batch_size=batch_size, long_text=long_text)


def check_scorer(name: str, option: str = "--clip-model") -> None:
    """Fail now, in one line, for a model that is not here (before any captioner loads)."""
    if is_open_clip(name):
        open_clip_spec(name)
    else:
        resolve_clip_model(name, option)
