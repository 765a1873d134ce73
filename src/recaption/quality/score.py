"""`recap score OUTDIR`: fill the CLIP-score columns of finished output, in place, each file
rewritten atomically and stamped with the scorer's provenance, so a rerun skips files that model
scored (docs/quality.md).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pyarrow as pa

from ..readers.base import Shard
from ..samples.images import decode_sample
from ..schema import PARTIAL, SCORE_COLUMNS, SCORES_METADATA_KEY, word_count
from ..spine.ledger import OutputDir
from ..spine.results import DONE, FAILED, RunSummary, ShardResult, error_text
from .clip import ClipScorer
from .outputs import caption_rows, file_stamp, in_place, input_shard, read_output, rewrite_output

log = logging.getLogger(__name__)


def score_samples(scorer: ClipScorer, samples: list, pixel_values) -> None:
    """Fill `scores` of each sample from its image (as CLIP pixel values) and its two captions."""
    images = scorer.image_embeddings(pixel_values)
    for prefix in ("re", "org"):
        texts = [getattr(s, f"{prefix}_caption") for s in samples]
        for sample, result in zip(samples, scorer.score(images, texts), strict=True):
            sample.scores[f"{prefix}_clip_score"] = result.score
            sample.scores[f"{prefix}_clip_truncated"] = result.truncated


def score_output(output: str, scorer: ClipScorer, overwrite: bool = False, on_shard=None) -> RunSummary:
    """Score the finished shards of `output`, rewriting each file atomically. Holds the folder's
    lock: no caption run or judge may rewrite the same files meanwhile."""
    summary = RunSummary(settings={"clip_model": scorer.model_name, "clip_long_text": scorer.long_text})
    def scored_already(out: OutputDir, name: str) -> bool:
        stamp = file_stamp(out, name, SCORES_METADATA_KEY)
        return scored_by(stamp, scorer) and not stamp.get(PARTIAL)

    with in_place(output, "score", summary, scored_already, overwrite) as (out, todo):
        for name in todo:
            if on_shard:
                on_shard(name)
            if scorer.model is None:
                scorer.setup()
            try:
                table = read_output(out, name)
                # A partial stamp by this scorer: only the rows kept without scores are scored.
                fill = scored_by(file_stamp(out, name, SCORES_METADATA_KEY), scorer) and not overwrite
                scores = _scores_for(scorer, input_shard(out, name), table, only_missing=fill)
            except Exception as exc:  # a missing or broken input shard: say which, go on
                log.info("cannot score %s: %s", name, exc)  # reported by the summary (FAILED)
                summary.results.append(ShardResult(name, name, FAILED, error=error_text(exc)))
                continue
            scored_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            _rewrite(out, name, table, scores, {**scorer.provenance(), "scored_at": scored_at})
            summary.results.append(ShardResult(name, name, DONE, table.num_rows))
    return summary


def scored_by(recorded: dict, scorer: ClipScorer) -> bool:
    """Did this scorer make the recorded scores? Same name, and for a built-in model the same
    version (files scored by the old random-weight tiny-clip are scored again)."""
    return (recorded.get("clip_model") == scorer.model_name
            and recorded.get("clip_model_version") == scorer.version
            and recorded.get("clip_long_text", "truncate") == scorer.long_text)


def _scores_for(scorer: ClipScorer, shard: Shard, table: pa.Table,
                only_missing: bool = False) -> dict[str, dict]:
    """Scores by key of the ok rows (with `only_missing`, of those without a score); the
    others keep what they have."""
    rows = caption_rows(table)
    keys = table.column("key").to_pylist()
    scores: dict[str, dict] = {}
    if only_missing:  # keep the scores the file has
        have = table.select(list(SCORE_COLUMNS)).to_pylist()
        scores = {k: r for k, r in zip(keys, have, strict=True) if r["re_clip_score"] is not None}
    pending: list = []
    for sample in shard:
        row = rows.get(sample.key)
        if row is None or row["status"] != "ok" or sample.key in scores:
            continue
        decode_sample(sample)
        if sample.ok:
            sample.re_caption = row["re_caption"]  # the caption written, to score against the image
            pending.append(sample)
        if len(pending) == scorer.batch_size:
            scores.update(_flush(scorer, pending))
            pending = []
    if pending:
        scores.update(_flush(scorer, pending))
    return scores


def _flush(scorer: ClipScorer, samples: list) -> dict[str, dict]:
    score_samples(scorer, samples, scorer.pixel_values([s.image for s in samples]))
    return {s.key: s.scores for s in samples}


def _rewrite(out: OutputDir, name: str, table: pa.Table, scores: dict[str, dict], metadata: dict) -> None:
    keys = table.column("key").to_pylist()
    columns = {c: [scores.get(k, {}).get(c) for k in keys] for c in SCORE_COLUMNS}
    for column, text in (("re_length", "re_caption"), ("org_length", "org_caption")):
        columns[column] = [word_count(t) for t in table.column(text).to_pylist()]
    rewrite_output(out, name, table, columns, SCORES_METADATA_KEY, metadata)
