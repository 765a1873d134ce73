"""Captions longer than a text encoder's window (`--clip-long-text chunk`): whole sentences packed
into chunks that fit, whose embeddings the scorer averages (docs/quality.md, "Captions over the
text window")."""

from __future__ import annotations

import re
from collections.abc import Callable

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text.strip())) if s]


def sentence_chunks(text: str, tokens: Callable[[str], int], window: int) -> tuple[list[str], bool]:
    """(chunks of whole consecutive sentences, each within `window` tokens as `tokens` counts
    them, special tokens included; whether a single sentence alone is over the window)."""
    chunks: list[str] = []
    current = ""
    too_long = False
    for sentence in sentences(text):
        joined = f"{current} {sentence}" if current else sentence
        if tokens(joined) <= window:
            current = joined
            continue
        if current:
            chunks.append(current)
        too_long = too_long or tokens(sentence) > window
        current = sentence
    if current:
        chunks.append(current)
    return chunks or [text], too_long
