"""The output schema: Recap-DataComp-1B's published columns, then outcome columns."""

from __future__ import annotations

import json

import pyarrow as pa

from .flags import PAPER_FLAG_COLUMNS
from .spine.ledger import INPUT_FINGERPRINT  # noqa: F401  (re-exported: a .done marker's input record)

# Published columns and types (Recap-DataComp-1B dataset card), in the card's order.
PUBLISHED_FIELDS = [
    pa.field("url", pa.string()),
    pa.field("re_caption", pa.string()),
    pa.field("org_caption", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("key", pa.string()),
    pa.field("re_clip_score", pa.float64()),
    pa.field("org_clip_score", pa.float64()),
    pa.field("re_length", pa.int64()),
    pa.field("org_length", pa.int64()),
    pa.field("re_gpt4v_score", pa.int64()),
    pa.field("org_gpt4v_score", pa.int64()),
]
# The dataset's later version: a caption conditioned on the alt-text, sampled top-k.
CONDITIONAL_FIELDS = [pa.field("re_caption_condition_diverse_topk", pa.string()),
                      pa.field("re_condition_length", pa.int64())]
# Ours: what happened to each row.
OUTCOME_FIELDS = [
    *(pa.field(column, pa.bool_()) for column in PAPER_FLAG_COLUMNS),  # flags.py: what each means
    pa.field("re_clip_truncated", pa.bool_()),  # the caption was cut to the CLIP text window to score it
    pa.field("org_clip_truncated", pa.bool_()),
    pa.field("re_judge_status", pa.string()),  # judged rows: ok | no_rating | out_of_range | request_failed
    pa.field("org_judge_status", pa.string()),
    pa.field("status", pa.string()),  # "ok" or a short error kind
    pa.field("error", pa.string()),  # message when status is not ok
]

METADATA_KEY = b"recaption"
SCORES_METADATA_KEY = b"recaption_scores"  # which CLIP scored the file, when
JUDGE_METADATA_KEY = b"recaption_judge"  # which judge rated the file: model, fraction, seed, prompt
SCORE_COLUMNS = ("re_clip_score", "org_clip_score", "re_clip_truncated", "org_clip_truncated")
# Text columns of caption output that are not captions: where a row came from, what happened to it.
NOT_CAPTIONS = frozenset({"url", "key", "sha256", "status", "error", "re_judge_status", "org_judge_status"})
JUDGE_COLUMNS = ("re_gpt4v_score", "org_gpt4v_score", "re_judge_status", "org_judge_status")
# A score or judge stamp saying some rows still lack what it vouches for (rows kept from an
# earlier file captioned again, captioning/carry.py): `recap score` / `recap judge` fill those.
PARTIAL = "partial"
_WHEN = ("scored_at", "judged_at", PARTIAL)


def stamp_identity(stamp: dict) -> dict:
    """What a score or judge stamp says about how, without when or how completely."""
    return {k: v for k, v in stamp.items() if k not in _WHEN}


def schema_stamp(schema: pa.Schema, key: bytes) -> dict:
    """What a step recorded in a file's metadata under `key` ({}: nothing, or unreadable)."""
    try:
        stamp = json.loads((schema.metadata or {}).get(key, b"{}"))
    except ValueError:
        return {}
    return stamp if isinstance(stamp, dict) else {}


def output_schema(conditional: bool = False, passes: list | None = None) -> pa.Schema:
    """The columns for a run's caption passes (passes.CaptionPass; default: the paper's one pass,
    plus the conditional one when `conditional`): the published columns, the conditional pair
    where they are in the dataset, each named pass's columns, then ours."""
    from .passes import CONDITIONAL, DEFAULT, pass_fields

    named = [p for p in passes or [] if p.name not in (DEFAULT, CONDITIONAL)]
    conditional = conditional or any(p.name == CONDITIONAL for p in passes or [])
    extra = [f for p in named for f in pass_fields(p)]
    return pa.schema(PUBLISHED_FIELDS + (CONDITIONAL_FIELDS if conditional else []) + extra + OUTCOME_FIELDS)


def word_count(text: str | None) -> int | None:
    """Length as the paper reports it: whitespace-separated words."""
    return None if text is None else len(text.split())
