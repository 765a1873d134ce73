"""Image-text pairs in memory, for evaluation: from any shards (`image_text_pairs`: the caption
or a json field, and a label) or from `recap caption` output (`recaptioned_pairs`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..readers import ColumnConfig, discover_shards
from ..samples.images import decode_sample
from ..spine.ledger import OutputDir
from .captions import offered, reader_fields
from .inputs import TrainingInputError, shard_errors


@dataclass
class Pair:
    key: str
    image: object  # RGB PIL image
    org: str | None  # the original caption
    re: str | None = None  # the recaption, when there is one
    label: str | None = None
    # With a caption field named: whether this sample has it (readers fall back to the .txt caption
    # when it does not, so a misspelt field would otherwise go unnoticed).
    has_caption_field: bool = False


def image_text_pairs(inputs: list[str], caption_field: str | None = None, label_field: str | None = None,
                     recaption_field: str | None = None, max_side: int = 512) -> Iterator[Pair]:
    extra = reader_fields(recaption_field, caption_field) + ((label_field,) if label_field else ())
    for shard in discover_shards(inputs, ColumnConfig(caption=caption_field, extra=extra)):
        with shard_errors():
            for sample in shard:
                decode_sample(sample, max_side=max_side)
                if sample.ok:
                    org, re = offered(sample, recaption_field, caption_field)  # training/captions.py
                    yield Pair(sample.key, sample.image, org, re,
                               sample.extra.get(label_field) if label_field else None,
                               bool(caption_field) and sample.extra.get(caption_field) is not None)


def check_fields(pairs: list[Pair], inputs: list[str], **fields: str | None) -> None:
    """Refuse a named field no sample has: `caption=...` (else each caption silently falls back
    to the shard's own), `recaption=...`, `label=...`."""
    have = {"caption": lambda p: p.has_caption_field, "recaption": lambda p: p.re is not None,
            "label": lambda p: p.label is not None}
    for kind, field in fields.items():
        if field and not any(have[kind](p) for p in pairs):
            raise TrainingInputError(f"--{kind}-field {field}: no sample in {', '.join(inputs)} has it")


def recaptioned_pairs(output: str, max_side: int = 512) -> Iterator[Pair]:
    from ..quality.outputs import caption_rows, done_shards, input_shard, read_output

    out = OutputDir(output)
    for name in done_shards(out):
        rows = caption_rows(read_output(out, name, ["key", "re_caption", "org_caption", "status"]))
        for sample in input_shard(out, name):
            row = rows.get(sample.key)
            if row is None or row["status"] != "ok":
                continue
            decode_sample(sample, max_side=max_side)
            if sample.ok:
                yield Pair(sample.key, sample.image, row["org_caption"], row["re_caption"])
