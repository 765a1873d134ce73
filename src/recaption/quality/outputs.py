"""Reading and updating finished `recap caption` output, for the steps that come after it
(score, judge, stats, report, CLIP training): which shards are finished, each one's rows and its
input shard (where the images are), and rewriting a file's columns in place, atomically."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq

from ..readers import ColumnConfig, discover_shards, open_shard, relisting
from ..readers.base import Shard
from ..readers.changes import input_change
from ..schema import schema_stamp
from ..spine.atomic import open_atomic
from ..spine.contract import Step, marker_has, open_output, read_stamp
from ..spine.errors import RecaptionError
from ..spine.ledger import OutputDir, plan
from ..spine.results import FAILED, SKIPPED, RunSummary, ShardResult

Planned = tuple[OutputDir, OutputDir, list[str], list[str]]  # source, destination, to do, done


@contextmanager
def over_finished(output: str, step: Step, *, destination: str | None = None, inputs=(),
                  settings: Callable[[str], dict] | None = None,
                  finished: Callable[[OutputDir, str], bool] | None = None, overwrite: bool = False,
                  names: list[str] | None = None) -> Iterator[Planned]:
    """The one runner of steps over the finished shards of caption output `output` (score, judge,
    filter, export): the destination (`output` itself for the steps that rewrite it in place)
    opened through the output contract, then each finished shard planned: against the
    destination's markers with `settings(name)` (ledger.plan), or done already when
    `finished(dest, name)` says so (an in-place step's stamp in the file). Yields (source,
    destination, names to do, names done); the step's own work is only its per-shard function.
    `names`: the source's finished shards when the step has listed them already."""
    if destination is None:  # in place: the contract says first whether it is caption output at all
        with open_output(output, step, inputs) as out:
            names = done_shards(out)
            done = set() if overwrite else {n for n in names if finished(out, n)}
            yield out, out, [n for n in names if n not in done], sorted(done)
        return
    src = OutputDir(output)
    names = names if names is not None else done_shards(src)
    with open_output(destination, step, [output, *inputs]) as dest:
        todo, done = plan(dest, names, settings, added_later=step.added_later, only_current=True,
                          overwrite=overwrite)
        yield src, dest, todo, done


def shard_lines(summary: RunSummary, did: str, line: Callable[[ShardResult], str]) -> list[str]:
    """What a step that writes a new folder prints per shard: FAILED, or `line(result)` (noted
    when it was `did` already)."""
    return [f"{r.name}: FAILED, nothing {did}: {r.error.removeprefix(f'{r.name}: ')}" if r.outcome == FAILED
            else line(r) + (f" (already {did})" if r.outcome == SKIPPED else "") for r in summary.results]


def file_stamp(out: OutputDir, name: str, key: bytes) -> dict:
    """`schema_stamp` of a shard file, read from its footer."""
    try:
        with out.open(out.parquet(name)) as f:
            return schema_stamp(pq.read_schema(f), key)
    except (OSError, pa.ArrowInvalid):  # gone or broken: not done; its work says why
        return {}


@contextmanager
def in_place(output: str, step: str, summary: RunSummary, finished: Callable[[OutputDir, str], bool],
             overwrite: bool) -> Iterator[tuple[OutputDir, list[str]]]:
    """over_finished for a step that rewrites finished caption output in place (score, judge): it
    works in folders `recap caption` or `recap filter` made, and creates none. Yields the folder
    and the shards to do; those done already are SKIPPED in `summary`."""
    contract = Step(step, adopts=CAPTION_OUTPUT, recognise=marker_has("model"), creates=False)
    with over_finished(output, contract, finished=finished, overwrite=overwrite) as (_, out, todo, done):
        summary.results += [ShardResult(name, name, SKIPPED) for name in done]
        yield out, todo


class NoOutputError(RecaptionError, ValueError):
    """The folder holds no finished `recap caption` shards."""


class InputChangedError(RecaptionError, ValueError):
    """A shard's input images are no longer what was captioned."""


CAPTION_OUTPUT = ("caption", "filter")  # the steps whose folders hold caption output


def unfinished_shards(out: OutputDir) -> list[str]:
    """Shards with a parquet but no marker (interrupted, or a marker deleted): counted nowhere,
    so the numbers of an output say how many they leave out."""
    done = set(out.done_names())
    names = (p.rsplit("/", 1)[-1][: -len(".parquet")] for p in out.fs.glob(out.path("*.parquet")))
    return sorted(n for n in names if n not in done and not n.startswith("."))


def done_shards(out: OutputDir) -> list[str]:
    """Names of the finished shards in a `recap caption` output folder; an error if there are none,
    or if the folder's stamp says another command made it (a download's or an export's)."""
    try:
        folder = out.fs.isdir(out.root)
    except OSError:  # a link loop, a name too long: no folder either
        folder = False
    if not folder:
        what = "not a folder" if out.fs.lexists(out.root) else "no such folder"
        raise NoOutputError(f"{out.url}: {what}; give the folder `recap caption -o` (or `recap filter`) "
                            "wrote")
    stamp = read_stamp(out)
    if stamp is not None and stamp["step"] not in CAPTION_OUTPUT:
        raise NoOutputError(f"{out.url} holds the output of `recap {stamp['step']}`, not caption output: "
                            "give a folder that `recap caption` or `recap filter` wrote")
    names = out.done_names()
    if not names:
        raise NoOutputError(f"{out.url} holds no finished shards (no .done markers): is it a "
                            "`recap caption` output folder?")
    return names


def shard_stats(out: OutputDir, name: str) -> dict:
    """A shard's `{name}_stats.json` ({}: missing or unreadable)."""
    try:
        with out.open(out.stats(name), "r") as f:
            stats = json.load(f)
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested past what Python parses
        return {}
    return stats if isinstance(stats, dict) else {}


def recorded_source(out: OutputDir, name: str) -> str | None:
    """Where a shard's images came from (its stats' `source`; a folder slice's folder)."""
    source = shard_stats(out, name).get("source")
    return source.rsplit(" [", 1)[0] if isinstance(source, str) and source else None


def recorded_sources(out: OutputDir, names: list[str]) -> list[str]:
    """Every shard's recorded_source, for the output contract of steps that read them: their
    output must stay out of those places."""
    return list(dict.fromkeys(s for s in (recorded_source(out, n) for n in names) if s))


def recorded_columns(stats: dict) -> ColumnConfig:
    """The --key-col, --image-col, ... a shard was captioned with (its stats' `columns`)."""
    recorded = stats.get("columns") or {}
    return ColumnConfig(**{k: tuple(v) if k == "extra" else v for k, v in recorded.items()})


ROW_IDENTITY = ("key", "status")  # every caption output row has them (filtered, scored, judged too)


class BrokenShardError(RecaptionError, ValueError):
    """A finished shard's parquet is missing or unreadable (truncated, not parquet)."""


def read_output(out: OutputDir, name: str, columns: list[str] | None = None, *,
                present_only: bool = False) -> pa.Table:
    """A finished shard's rows (`columns` only; with `present_only`, those of them it has).
    BrokenShardError, naming the shard and the fix, when its file is gone or unreadable."""
    try:
        with out.open(out.parquet(name)) as f:
            names = pq.read_schema(f).names
            lacking = [c for c in ROW_IDENTITY if c not in names]
            if lacking:  # another parquet put in its place: not rows of this toolkit's
                raise pa.ArrowInvalid(f"no {' or '.join(lacking)} column: not caption output")
            if present_only and columns is not None:
                columns = [c for c in columns if c in names]
            # One thread: pyarrow's pool, after reads through a Python file object, could abort the
            # process as it exited (exit 134, "terminate called without an active exception",
            # apache/arrow#34314; 1 run in ~15 of `recap report` on a broken shard, 0 in 40 now).
            return pq.read_table(f, columns=columns, use_threads=False)
    except (OSError, pa.ArrowInvalid) as exc:
        said = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise BrokenShardError(f"{out.url}: shard {name} is marked finished but its parquet cannot be read "
                               f"({said}); caption it again (recap caption ... --overwrite) or delete "
                               f"{name}.done") from None


def first_schema(out: OutputDir, names: list[str]) -> tuple[str, pa.Schema] | None:
    """The first of `names` whose parquet reads, and its schema, to check a command's settings
    against before anything is written; None when none reads (each then fails alone, saying why)."""
    for name in names:
        try:
            with out.open(out.parquet(name)) as f:
                return name, pq.read_schema(f)
        except (OSError, pa.ArrowInvalid):
            continue
    return None


def recorded_stats(out: OutputDir, name: str) -> dict:
    """A finished shard's `{name}_stats.json`, which names its input; BrokenShardError naming the
    fix when it is gone, unreadable (a FIFO in its place too), or not an object naming a source."""
    try:
        with out.open(out.stats(name), "r") as f:
            stats = json.load(f)
        why = "not a JSON object naming its source"
    except (OSError, ValueError, RecursionError) as exc:
        stats, why = None, " ".join(str(exc).split())[:200]
    if not isinstance(stats, dict) or not isinstance(stats.get("source"), str):
        raise BrokenShardError(f"{out.url}: shard {name}'s stats file cannot be read ({why}); caption it "
                               f"again or delete {name}.done")
    return stats


def caption_rows(table: pa.Table) -> dict[str, dict]:
    """key -> {key, re_caption, org_caption, status}."""
    return {r["key"]: r for r in table.select(["key", "re_caption", "org_caption", "status"]).to_pylist()}


def input_shard(out: OutputDir, name: str) -> Shard:
    """The input shard an output came from (its `source` in `{name}_stats.json`): a tar or parquet
    file, or a slice of an image folder."""
    stats = recorded_stats(out, name)
    source, columns = stats["source"], recorded_columns(stats)
    try:
        return open_shard(source, columns)
    except ValueError:
        folder = source.rsplit(" [", 1)[0]
        with relisting():  # what the folder's listing skips was said when it was captioned
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
        field = table.schema.field(column)
        table = table.set_column(index, field, pa.array(values, type=field.type))
    stamped = {**(table.schema.metadata or {}), metadata_key: json.dumps(metadata).encode()}
    table = table.replace_schema_metadata(stamped)
    with open_atomic(out.fs, out.parquet(name), "wb") as f:
        pq.write_table(table, f)
