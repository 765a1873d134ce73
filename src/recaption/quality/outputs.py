"""Reading and updating finished `recap caption` output, for the steps that come after it
(score, judge, stats, report, CLIP training): which shards are finished, each one's rows and its
input shard (where the images are), and rewriting a file's columns in place, atomically."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from ..readers import ColumnConfig, discover_shards, open_shard
from ..readers.base import Shard
from ..readers.changes import input_change
from ..spine.atomic import open_atomic
from ..spine.contract import Step, marker_has
from ..spine.errors import RecaptionError
from ..spine.ledger import OutputDir


def works_in_caption_output(name: str) -> Step:
    """The contract's view of a step that rewrites finished caption output in place (score,
    judge): it works in folders `recap caption` or `recap filter` made, and creates none."""
    return Step(name, adopts=("caption", "filter"), recognise=marker_has("model"), creates=False)


class NoOutputError(RecaptionError, ValueError):
    """The folder holds no finished `recap caption` shards."""


class InputChangedError(RecaptionError, ValueError):
    """A shard's input images are no longer what was captioned."""


def done_shards(out: OutputDir) -> list[str]:
    """Names of the finished shards in a `recap caption` output folder; an error if there are none."""
    names = sorted(path.rsplit("/", 1)[-1][: -len(".done")] for path in out.fs.glob(out.path("*.done")))
    if not names:
        raise NoOutputError(
            f"{out.url} holds no finished shards ({{name}}.done): is it a `recap caption` output folder?"
        )
    return names


def recorded_sources(out: OutputDir, names: list[str]) -> list[str]:
    """Where each shard's images came from (its stats' `source`; a folder slice's folder), for
    the output contract of steps that read them: their output must stay out of those places."""
    sources = []
    for name in names:
        try:
            with out.fs.open(out.stats(name), "r") as f:
                source = json.load(f).get("source")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(source, str) and source:
            sources.append(source.rsplit(" [", 1)[0])
    return list(dict.fromkeys(sources))


def read_output(out: OutputDir, name: str, columns: list[str] | None = None) -> pa.Table:
    with out.fs.open(out.parquet(name), "rb") as f:
        return pq.read_table(f, columns=columns)


def caption_rows(table: pa.Table) -> dict[str, dict]:
    """key -> {key, re_caption, org_caption, status}."""
    return {r["key"]: r for r in table.select(["key", "re_caption", "org_caption", "status"]).to_pylist()}


def stamp(table: pa.Table, key: bytes) -> dict:
    """What an earlier step recorded in the file's metadata under `key` ({} if nothing)."""
    return json.loads((table.schema.metadata or {}).get(key, b"{}"))


def input_shard(out: OutputDir, name: str) -> Shard:
    """The input shard an output came from (its `source` in `{name}_stats.json`): a tar or parquet
    file, or a slice of an image folder."""
    with out.fs.open(out.stats(name), "r") as f:
        stats = json.load(f)
    source = stats["source"]
    recorded = stats.get("columns") or {}  # the --key-col, --image-col, ... it was captioned with
    columns = ColumnConfig(**{k: tuple(v) if k == "extra" else v for k, v in recorded.items()})
    try:
        return open_shard(source, columns)
    except ValueError:
        folder = source.rsplit(" [", 1)[0]
        shard = next((s for s in discover_shards([folder], columns) if s.name == name), None)
    # A folder slice is matched to its rows by key: if its files changed since captioning, keys
    # could now name other images. Refuse rather than join rows to the wrong pictures.
    if shard is None:
        change = f"{folder} no longer has a slice {name}"
    else:
        change = input_change(shard, out.done_provenance(name) or {})
    if change:
        raise InputChangedError(f"{name}: {change}; run `recap caption` on {folder} again first")
    return shard


def rewrite_output(
    out: OutputDir, name: str, table: pa.Table, columns: dict[str, list], metadata_key: bytes, metadata: dict
) -> None:
    """Replace these columns (same names and types) and record `metadata`; the file is written
    whole under a temporary name and renamed, so readers see the old file or the new one."""
    for column, values in columns.items():
        index = table.schema.get_field_index(column)
        table = table.set_column(
            index, table.schema.field(column), pa.array(values, type=table.schema.field(column).type)
        )
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), metadata_key: json.dumps(metadata).encode()}
    )
    with open_atomic(out.fs, out.parquet(name), "wb") as f:
        pq.write_table(table, f)
