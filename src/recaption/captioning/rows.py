"""One output row per sample: the published columns, each pass's columns, outcome columns; quality
flags computed here, once per caption."""

from __future__ import annotations

from ..flags import CAPTION_FLAGS
from ..passes import CaptionPass, default_pass
from ..redact import strip_url_secrets
from ..samples.sample import Sample
from ..schema import word_count


def sample_row(sample: Sample, passes: list[CaptionPass] | None = None) -> dict:
    row = {
        "url": strip_url_secrets(sample.url),  # credentials never reach an output
        "org_caption": sample.org_caption,
        "sha256": sample.sha256,
        "key": sample.key,
        "re_clip_score": sample.scores.get("re_clip_score"),  # unknown until scored: null, never 0
        "org_clip_score": sample.scores.get("org_clip_score"),
        "org_length": word_count(sample.org_caption),
        "re_gpt4v_score": None,
        "org_gpt4v_score": None,
        "re_clip_truncated": sample.scores.get("re_clip_truncated"),
        "org_clip_truncated": sample.scores.get("org_clip_truncated"),
        "re_judge_status": None,
        "org_judge_status": None,
        "status": sample.status,
        "error": sample.error,
    }
    for p in passes or [default_pass()]:
        text = sample.captions.get(p.column)
        row[p.column] = text
        row[p.length_column] = word_count(text)
        if p.flag_prefix is None:
            continue
        for flag in CAPTION_FLAGS:
            row[p.flag_column(flag.name)] = flag.value(text, sample.truncated.get(p.column))
    return row
