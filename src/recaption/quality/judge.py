"""A judge: the paper's GPT-4V caption rating (JUDGE_PROMPT) sent to any OpenAI-compatible chat
endpoint that takes images, through the OpenAI engine's client; the reply parsed to an int 1-5.
The rows judged are chosen by a hash of (seed, key): the same on every rerun (docs/quality.md).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import pyarrow as pa

from ..config import CaptionConfig, ServerOptions
from ..engines.openai_engine import OpenAICaptioner, image_data_url
from ..samples.images import decode_sample
from ..schema import JUDGE_COLUMNS, JUDGE_METADATA_KEY, stamp_identity
from ..spine.ledger import OutputDir
from ..spine.results import DONE, FAILED, RunSummary, ShardResult
from .outputs import caption_rows, file_stamp, in_place, input_shard, read_output, rewrite_output

log = logging.getLogger(__name__)

JUDGE_PROMPT = (
    "[Image Caption] {caption}\n"
    "Rate whether the caption is of high-quality and fluent and correctly matches the given image. "
    "The rating should be 1-5, where 1 is the worst and 5 is the best. "
    "Answer in the format:\nRating: (int)"
)
OK, NO_RATING, OUT_OF_RANGE, REQUEST_FAILED = "ok", "no_rating", "out_of_range", "request_failed"

_RATING = re.compile(r"rating\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")


def parse_rating(reply: str | None) -> tuple[int | None, str]:
    """(rating 1-5 or None, status). "Rating: 4" wins; else a reply whose only number is the
    rating ("4", "4/5" counts the 4); anything else (a refusal, prose, 0, 7, 3.5) is no rating."""
    if not reply:
        return None, NO_RATING
    match = _RATING.search(reply)
    if match:
        value = match.group(1)
    else:
        numbers = _NUMBER.findall(reply.replace("/5", " "))
        if len(numbers) != 1:
            return None, NO_RATING
        value = numbers[0]
    if "." in value and float(value) != int(float(value)):
        return None, OUT_OF_RANGE
    rating = int(float(value))
    return (rating, OK) if 1 <= rating <= 5 else (None, OUT_OF_RANGE)


def selected(key: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


@dataclass
class JudgeConfig:
    endpoints: list[str]
    model: str
    fraction: float = 0.01
    seed: int = 0
    concurrency: int = 32
    retries: int = 4
    request_timeout: float = 120.0
    api_key_env: str | None = "OPENAI_API_KEY"
    overwrite: bool = False

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError("--fraction must be in (0, 1]")

    def stamp(self) -> dict:
        return {"model": self.model, "fraction": self.fraction, "seed": self.seed, "prompt": JUDGE_PROMPT}


def judge_output(output: str, config: JudgeConfig, on_shard=None) -> RunSummary:
    """Rate the finished shards of `output`, rewriting each file atomically. Holds the folder's
    lock: no caption run or scorer may rewrite the same files meanwhile."""
    summary = RunSummary(settings=config.stamp())
    judged_already = lambda out, name: file_stamp(out, name, JUDGE_METADATA_KEY) == config.stamp()  # noqa: E731
    # (a partial stamp, from rows kept when a shard was captioned again, is not judged already)
    with in_place(output, "judge", summary, judged_already, config.overwrite) as (out, todo):
        if not todo:
            return summary
        client = _client(config)
        try:
            for name in todo:
                if on_shard:
                    on_shard(name)
                _judge_one(client, out, name, config, summary)
        finally:
            client.close()
    return summary


def _client(config: JudgeConfig) -> OpenAICaptioner:
    server = ServerOptions(endpoints=config.endpoints, concurrency=config.concurrency, retries=config.retries,
                           request_timeout=config.request_timeout, api_key_env=config.api_key_env)
    client = OpenAICaptioner(CaptionConfig(engine="openai", model=config.model, max_new_tokens=32,
                                           batch_size=config.concurrency, server=server))
    client.setup()
    return client


def _judge_one(client: OpenAICaptioner, out: OutputDir, name: str, config: JudgeConfig,
               summary: RunSummary) -> None:
    try:
        table = read_output(out, name)
        # A partial stamp by this judge: the rows that have ratings keep them; the rest are rated.
        stamp = file_stamp(out, name, JUDGE_METADATA_KEY)
        fill = stamp_identity(stamp) == config.stamp() and not config.overwrite
        kept = _ratings(table) if fill else {}
        ratings = _judge_shard(client, input_shard(out, name), table, config, kept)
    except Exception as exc:  # a missing input shard: say which, go on
        error = client.redact(f"{type(exc).__name__}: {exc}")
        summary.results.append(ShardResult(name, name, FAILED, error=error))
        return
    statuses = [status for key, by_caption in ratings.items() if key not in kept
                for _, status in by_caption.values()]
    if statuses and all(status == REQUEST_FAILED for status in statuses):
        # The judge was unreachable, not the captions bad: leave the shard unjudged, to redo.
        error = f"all {len(statuses)} judge requests failed; left unjudged"
        summary.results.append(ShardResult(name, name, FAILED, error=error))
        return
    _rewrite(out, name, table, ratings, config.stamp())
    summary.results.append(ShardResult(name, name, DONE, table.num_rows, counts={"judged": len(ratings)}))


def _ratings(table: pa.Table) -> dict[str, dict]:
    """The ratings a file has, by key, as _send records them."""
    rated = {}
    for row in table.select(["key", *JUDGE_COLUMNS]).to_pylist():
        if REQUEST_FAILED in (row["re_judge_status"], row["org_judge_status"]):
            continue  # a request that failed: the row is asked again, both captions
        for which in ("re", "org"):
            if row[f"{which}_judge_status"] is not None:
                rating = (row[f"{which}_gpt4v_score"], row[f"{which}_judge_status"])
                rated.setdefault(row["key"], {})[which] = rating
    return rated


def _judge_shard(client: OpenAICaptioner, shard, table: pa.Table, config: JudgeConfig,
                 kept: dict[str, dict] | None = None) -> dict[str, dict]:
    """Ratings by key of the chosen rows; those in `kept` are not asked again."""
    rows = caption_rows(table)
    ratings: dict[str, dict] = dict(kept or {})
    chosen = {k for k, r in rows.items()
              if r["status"] == "ok" and selected(k, config.fraction, config.seed) and k not in ratings}
    batch: list[tuple[str, str, list]] = []  # (key, which caption, messages)
    for sample in shard:
        if sample.key not in chosen:
            continue
        image = decode_sample(sample).image
        if image is None:
            continue
        url = image_data_url(image)
        for which in ("re", "org"):
            caption = rows[sample.key][f"{which}_caption"]
            if caption:
                text = JUDGE_PROMPT.format(caption=caption)
                content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
                batch.append((sample.key, which, [{"role": "user", "content": content}]))
        if len(batch) >= config.concurrency:
            _send(client, batch, ratings)
            batch = []
    if batch:
        _send(client, batch, ratings)
    return ratings


def _send(client: OpenAICaptioner, batch: list, ratings: dict) -> None:
    replies = client.generate([messages for _, _, messages in batch])
    for (key, which, _), reply in zip(batch, replies, strict=True):
        if reply.error is not None:
            rating, status = None, REQUEST_FAILED
            log.warning("judge request for %s failed: %s", key, client.redact(reply.error))
        else:
            rating, status = parse_rating(reply.text)
        ratings.setdefault(key, {})[which] = (rating, status)


def _rewrite(out: OutputDir, name: str, table: pa.Table, ratings: dict, metadata: dict) -> None:
    keys = table.column("key").to_pylist()
    columns = {}
    for which in ("re", "org"):
        rated = [ratings.get(k, {}).get(which, (None, None)) for k in keys]
        columns[f"{which}_gpt4v_score"] = [rating for rating, _ in rated]
        columns[f"{which}_judge_status"] = [status for _, status in rated]
    rewrite_output(out, name, table, columns, JUDGE_METADATA_KEY, metadata)
