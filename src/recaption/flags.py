"""Quality flags of a caption, as data: `CAPTION_FLAGS` is the one table (name, meaning, test)
that rows, the schema, passes, stats and the report read; adding a flag is one entry. Each
caption pass writes `<prefix>_<name>` (`re_repetition`, `re_caption_<pass>_repetition`). The
rules and why their thresholds: docs/quality.md ("Flags").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

REPETITION_N = 4
REPETITION_THRESHOLD = 0.3
REPETITION_MIN_REPEATS = 3
DEGENERATE_MIN_WORDS = 3
DEGENERATE_MIN_ALNUM_SHARE = 0.5

_WORD = re.compile(r"[a-z0-9']+")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A word: one CJK/kana character, or a run of letters and digits (any script; "_" is no letter).
_ALNUM_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_BOILERPLATE = re.compile(
    r"^\s*(?:(?:the|this)\s+(?:image|picture|photo|photograph|scene|illustration)\s+"
    r"(?:shows|depicts|features|displays|captures|presents|showcases|portrays|is\s+of|contains)"
    r"|in\s+(?:this|the)\s+(?:image|picture|photo|photograph|scene)\b)",
    re.IGNORECASE,
)


def repetition_rate(text: str | None, n: int = REPETITION_N) -> tuple[float, int]:
    """(share of n-grams seen before in the text, how many such repeats)."""
    words = _WORD.findall((text or "").lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0, 0
    seen: set[tuple] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams), repeats


def is_repetitive(text: str | None) -> bool | None:
    if text is None:
        return None
    rate, repeats = repetition_rate(text)
    return rate >= REPETITION_THRESHOLD and repeats >= REPETITION_MIN_REPEATS


def is_boilerplate(text: str | None) -> bool | None:
    if text is None:
        return None
    return bool(_BOILERPLATE.match(text))


def is_degenerate(text: str | None) -> bool | None:
    """Empty, fewer than DEGENERATE_MIN_WORDS words of letters/digits, or under
    DEGENERATE_MIN_ALNUM_SHARE letters/digits among the non-space characters. None for no caption."""
    if text is None:
        return None
    if len(_ALNUM_WORD.findall(text)) < DEGENERATE_MIN_WORDS:
        return True
    visible = [c for c in text if not c.isspace()]
    return sum(c.isalnum() for c in visible) / len(visible) < DEGENERATE_MIN_ALNUM_SHARE


@dataclass(frozen=True)
class Flag:
    """One quality flag: its column suffix, what it means, and how it is computed from the
    caption (`test`; None: set by generation, as `truncated` is)."""

    name: str
    meaning: str
    test: Callable[[str], bool] | None = None

    def value(self, text: str | None, truncated: bool | None) -> bool | None:
        """The flag of one caption: null without a caption (a failed row); `""` is degenerate."""
        if self.test is None:
            return truncated
        return None if text is None else self.test(text)


CAPTION_FLAGS = (
    Flag("truncated", "generation stopped at max_new_tokens, or early on a loop of one token"),
    Flag("repetition", ">= 30% of the caption's word 4-grams repeat an earlier one (a greedy loop)",
         is_repetitive),
    Flag("boilerplate", 'opens with a stock phrase ("The image shows...", "In this picture...")',
         is_boilerplate),
    Flag("degenerate", "empty, fewer than 3 words of letters/digits, or under 50% letters/digits",
         is_degenerate),
)
FLAG_NAMES = tuple(f.name for f in CAPTION_FLAGS)
PAPER_FLAG_COLUMNS = tuple(f"re_{f.name}" for f in CAPTION_FLAGS)  # the paper's pass's flag columns
