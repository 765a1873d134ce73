"""`recap score OUTDIR`: fill the CLIP-score columns of finished output, in place.

Images come from each shard's input (the `source` in `{shard}_stats.json`), read again in
batches; scores are matched to output rows by key. Each parquet file is rewritten whole under
a temporary name and renamed (atomic per file); the CLIP model that scored it is stored in the
file's metadata, so a rerun skips files already scored by that model (resumable, idempotent)
and `overwrite` rescores.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from ..images import decode_sample
from ..readers import discover_shards, open_shard
from ..readers.base import Shard
from ..schema import SCORES_METADATA_KEY, word_count
from ..writer import OutputDir
from .clip import ClipScorer

log = logging.getLogger(__name__)


@dataclass
class ScoreSummary:
    scored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class NoOutputError(ValueError):
    """The folder holds no finished `recap caption` shards."""


def done_shards(out: OutputDir) -> list[str]:
    """Names of the finished shards in a `recap caption` output folder; an error if there are none."""
    names = sorted(path.rsplit("/", 1)[-1][: -len(".done")] for path in out.fs.glob(out.path("*.done")))
    if not names:
        raise NoOutputError(
            f"{out.url} holds no finished shards ({{name}}.done): is it a `recap caption` output folder?"
        )
    return names


def source_shard(source: str, name: str) -> Shard:
    """The input shard an output came from: a tar or parquet file, or a slice of a folder."""
    try:
        return open_shard(source)
    except ValueError:
        folder = source.rsplit(" [", 1)[0]
        return next(s for s in discover_shards([folder]) if s.name == name)


def score_samples(scorer: ClipScorer, samples: list, pixel_values) -> None:
    """Fill `scores` of each sample from its image (as CLIP pixel values) and its two captions."""
    images = scorer.image_embeddings(pixel_values)
    for prefix in ("re", "org"):
        texts = [getattr(s, f"{prefix}_caption") for s in samples]
        for sample, result in zip(samples, scorer.score(images, texts), strict=True):
            sample.scores[f"{prefix}_clip_score"] = result.score
            sample.scores[f"{prefix}_clip_truncated"] = result.truncated


def score_output(output: str, scorer: ClipScorer, overwrite: bool = False, on_shard=None) -> ScoreSummary:
    out = OutputDir(output)
    summary = ScoreSummary()
    stamp = {"clip_model": scorer.model_name}
    for name in done_shards(out):
        if on_shard:
            on_shard(name)
        with out.fs.open(out.parquet(name), "rb") as f:
            table = pq.read_table(f)
        previous = json.loads((table.schema.metadata or {}).get(SCORES_METADATA_KEY, b"{}"))
        if not overwrite and previous.get("clip_model") == stamp["clip_model"]:
            summary.skipped.append(name)
            continue
        if scorer.model is None:
            scorer.setup()
        try:
            with out.fs.open(out.stats(name), "r") as f:
                source = json.load(f)["source"]
            scores = _scores_for(scorer, source_shard(source, name), table)
        except Exception as exc:  # a missing or broken input shard: say which, go on
            log.error("cannot score %s: %s", name, exc)
            summary.failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        _rewrite(out, name, table, scores, {**stamp, "scored_at": _now()})
        summary.scored.append(name)
    return summary


def _scores_for(scorer: ClipScorer, shard: Shard, table: pa.Table) -> dict[str, dict]:
    rows = {r["key"]: r for r in table.select(["key", "re_caption", "org_caption", "status"]).to_pylist()}
    scores: dict[str, dict] = {}
    pending: list = []
    for sample in shard:
        row = rows.get(sample.key)
        if row is None or row["status"] != "ok":
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


def _rewrite(out: OutputDir, name: str, table: pa.Table, scores: dict[str, dict], stamp: dict) -> None:
    keys = table.column("key").to_pylist()
    for column in ("re_clip_score", "org_clip_score", "re_clip_truncated", "org_clip_truncated"):
        values = [scores.get(k, {}).get(column) for k in keys]
        table = table.set_column(
            table.schema.get_field_index(column),
            table.schema.field(column),
            pa.array(values, type=table.schema.field(column).type),
        )
    for column, text in (("re_length", "re_caption"), ("org_length", "org_caption")):
        lengths = [word_count(t) for t in table.column(text).to_pylist()]
        table = table.set_column(
            table.schema.get_field_index(column),
            table.schema.field(column),
            pa.array(lengths, type=pa.int64()),
        )
    metadata = {**(table.schema.metadata or {}), SCORES_METADATA_KEY: json.dumps(stamp).encode()}
    table = table.replace_schema_metadata(metadata)
    tmp = out.parquet(name) + ".scoring.tmp"
    with out.fs.open(tmp, "wb") as f:
        pq.write_table(table, f)
    out.fs.mv(tmp, out.parquet(name))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
