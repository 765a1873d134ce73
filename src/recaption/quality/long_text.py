"""Scoring captions longer than a text encoder's window (CLIP: 77 tokens; the paper's
recaptions average 49 words, and many pass 77 tokens).

Two ways, chosen with `--clip-long-text` and recorded beside the scores:
  truncate  (default) the text is cut at the window, as CLIP itself was trained; the row's
            `*_clip_truncated` says it was.
  chunk     a text over the window is split into sentences, consecutive sentences are packed
            greedily into chunks that fit the window, each chunk is embedded, and the text's
            embedding is the normalised mean of the chunks' normalised embeddings. A text that
            fits is embedded whole, exactly as with `truncate`; only a single sentence longer
            than the window is still cut (and the row says truncated).
A long-text encoder (LongCLIP converted to transformers, 248 positions) needs neither: its window
is read from the model, and texts up to it are embedded whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..config import LONG_TEXT_MODES, LongTextError, check_long_text  # noqa: F401  (the one check)

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
