"""`recap filter OUT --where "re_clip_score > 25 and not re_degenerate" -o FILTERED`: keep the rows
of a caption output folder where a DuckDB SQL condition holds, into a new folder that is itself
caption output. The condition reads nothing but the shard's rows (file and network access off,
configuration locked); its semantics and what each shard's files hold: docs/recipes.md.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..quality.outputs import (
    BrokenShardError,
    done_shards,
    first_schema,
    over_finished,
    read_output,
    recorded_stats,
    shard_lines,
    shard_stats,
)
from ..spine.contract import Step, location, marker_has
from ..spine.errors import RecaptionError
from ..spine.ledger import OutputDir, ShardCommit
from ..spine.results import DONE, FAILED, SKIPPED, RunSummary, ShardResult

log = logging.getLogger(__name__)

# DuckDB with no file system, no network, no extension loading, and settings no expression can
# change back (`lock_configuration`).
DUCKDB_CONFIG = {"enable_external_access": False, "autoinstall_known_extensions": False,
                 "autoload_known_extensions": False, "lock_configuration": True}
_ROW = "__recap_row__"  # the row number, added to restore source order


# What `recap filter` writes (the output contract): caption output whose markers say how it was
# filtered.
FILTER = Step("filter", recognise=marker_has("filter"))


class FilterError(RecaptionError, ValueError):
    """`recap filter` cannot run as asked."""


class FilterExpressionError(FilterError):
    """The --where condition is not a valid SQL condition over the output's columns."""


def check_where(where: str, columns: list[str]) -> str:
    """The condition, stripped; a FilterExpressionError for one that cannot be a single
    condition (empty, or holding `;`)."""
    if not isinstance(where, str) or not where.strip():
        raise FilterExpressionError(f"--where is empty: give a SQL condition such as 're_clip_score > 25'; "
                                    f"{_columns(columns)}")
    if ";" in where:
        raise FilterExpressionError(f"--where {where!r}: ';' is not allowed, give one SQL condition; "
                                    f"{_columns(columns)}")
    refused = _refused_parts(where)
    if refused:
        raise FilterExpressionError(f"--where {where!r}: {refused} is not taken in a condition: give one "
                                    f"over the row's own columns; {_columns(columns)}")
    return where.strip()


# Functions that build a value as large as their arguments say (`len(range(0, 3e8))` took 15 GB in
# one call, before any time bound could stop it): a row's condition has no use for them.
_BUILDERS = {"range", "generate_series", "repeat", "lpad", "rpad", "list_resize", "array_resize",
             "printf", "format", "bar", "unnest", "list_repeat"}


@functools.lru_cache(maxsize=256)  # (a pure function of the text: filter checks it per shard)
def _refused_parts(where: str) -> str | None:
    """What in the condition is refused (None: nothing): a subquery (it reads beyond the row, and
    a table function there can run for ever) or a function of _BUILDERS. Judged on DuckDB's own
    parse tree; a condition it cannot parse is left to the evaluation's one-line error."""
    con = connect()
    try:
        parsed = con.execute("SELECT json_serialize_sql(?)", [f"SELECT ({where}\n) FROM t"]).fetchone()[0]
        tree = json.loads(parsed)
    except Exception:  # noqa: BLE001 - no parser at hand: the evaluation's rules still hold
        return None
    finally:
        con.close()
    found: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class") == "SUBQUERY":
                found.append("a subquery")
            elif node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in _BUILDERS:
                found.append(f"{node['function_name']}()")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found[0] if found else None


def _columns(columns: list[str]) -> str:
    return f"columns: {', '.join(c for c in columns if c != _ROW)}"


def one_line(exc: Exception) -> str:
    """DuckDB's message, first line (`Binder Error: Referenced column "x" not found ...`)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def connect():
    import duckdb

    return duckdb.connect(":memory:", config=dict(DUCKDB_CONFIG))


def matching_rows(table: pa.Table, where: str, con=None, shard: str | None = None) -> pa.Table:
    """The rows of `table` where `where` is true (not false, not NULL), in table order, with the
    table's schema and metadata. Raises FilterExpressionError in one line naming the columns."""
    import duckdb

    where = check_where(where, table.column_names)
    con = con or connect()
    numbered = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))
    try:
        rows = con.from_arrow(numbered)
        kind = str(rows.project(f"({where}\n) AS kept").types[0])
        if kind not in ("BOOLEAN", '"NULL"', "NULL"):
            raise FilterExpressionError(f"--where {where!r}: a {kind} value, not a condition; give one that "
                                        f"is true or false, such as 're_clip_score > 25'; "
                                        f"{_columns(table.column_names)}")
        kept = rows.filter(where).project(f'"{_ROW}"').fetch_arrow_table().column(_ROW)
    except duckdb.Error as exc:
        where_shard = f" (shard {shard})" if shard else ""
        raise FilterExpressionError(f"--where {where!r}{where_shard}: {one_line(exc)}; "
                                    f"{_columns(table.column_names)}") from None
    return table.take(pa.array(np.sort(kept.to_numpy()), pa.int64()))  # in source order


def filter_lines(summary: RunSummary) -> list[str]:
    """What `recap filter` prints: one line per shard, then the totals."""
    lines = shard_lines(summary, "filtered",
                        lambda r: f"{r.name}: kept {r.counts['rows_kept']} of {r.counts['rows_in']} rows")
    rows_in, kept = summary.count("rows_in"), summary.count("rows_kept")
    share = f" ({kept / rows_in:.1%})" if rows_in else ""
    where, to = summary.settings["where"], summary.settings["destination"]
    lines.append(f"kept {kept} of {rows_in} rows{share} in {len(summary.results)} shards "
                 f"where {where} -> {to}{summary.failed_note()}")
    return lines


def filter_output(output: str, where: str, destination: str, *, overwrite: bool = False) -> RunSummary:
    """Write the rows of each finished shard of `output` where `where` holds (not false, not NULL)
    into `destination`, opened through the output contract; `output` is only read. Raises
    FilterExpressionError (before anything is written), OutputError, ConfigMismatchError (shards
    filtered otherwise, without `overwrite`) or NoOutputError."""
    src = OutputDir(output)
    names = done_shards(src)
    con = connect()
    # A bad condition is refused now, against the first shard's columns, before any lock or write.
    first = first_schema(src, names)
    if first is not None:
        matching_rows(first[1].empty_table(), where, con, first[0])
    where, source = where.strip(), location(src.url)
    settings = lambda name: {"filter": _record(src, name, where, source)}  # noqa: E731
    with over_finished(output, FILTER, destination=destination, settings=settings, overwrite=overwrite,
                       names=names) as (src, dest, todo, done):
        summary = RunSummary(settings={"where": where, "from": source, "destination": dest.url})
        summary.results += [_skipped(dest, name) for name in done]
        summary.results += [_filter_shard(src, dest, name, where, source, con) for name in todo]
    summary.results.sort(key=lambda r: r.name)
    return summary


def _record(src: OutputDir, name: str, where: str, source: str) -> dict:
    """What a filtered shard's marker records: the condition, the folder, and the filter that
    made the source (a filtered folder filtered again keeps the chain)."""
    record = {"where": where, "from": source}
    previous = (src.done_provenance(name) or {}).get("filter")
    if isinstance(previous, dict):
        record["previous"] = previous
    return record


def _skipped(dest: OutputDir, name: str) -> ShardResult:
    record = shard_stats(dest, name).get("filter") or {}
    rows_in, rows_kept = record.get("rows_in"), record.get("rows_kept")
    if rows_kept is None:
        with dest.open(dest.parquet(name)) as f:
            rows_kept = pq.read_metadata(f).num_rows
    counts = {"rows_in": int(rows_in if rows_in is not None else rows_kept), "rows_kept": int(rows_kept)}
    return ShardResult(name, name, SKIPPED, int(rows_kept), counts=counts)


def _filter_shard(src: OutputDir, dest: OutputDir, name: str, where: str, source: str, con) -> ShardResult:
    try:
        table = read_output(src, name)
        stats = recorded_stats(src, name)  # carried over: export finds the images by its `source`
    except BrokenShardError as exc:  # that shard fails (the summary says so), the others are filtered
        return ShardResult(name, name, FAILED, error=str(exc))
    kept = matching_rows(table, where, con, name)
    provenance = src.done_provenance(name) or {}
    record = _record(src, name, where, source)
    # (read_output: every shard has a status column)
    statuses_in, statuses = (dict(sorted(Counter(t.column("status").to_pylist()).items()))
                             for t in (table, kept))
    stats = {**stats, "rows": kept.num_rows, "status_counts": statuses, "filter": {
        **record, "rows_in": table.num_rows, "rows_kept": kept.num_rows, "status_counts_in": statuses_in,
        "filtered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }}
    # The ledger's commit: an earlier result stays until this one is complete.
    with ShardCommit(dest, name) as commit:
        pq.write_table(kept, commit.open("parquet"))
        commit.commit(stats, {**provenance, "filter": record})
    log.info("%s: kept %d of %d rows", name, kept.num_rows, table.num_rows)
    return ShardResult(name, name, DONE, kept.num_rows, statuses,
                       counts={"rows_in": table.num_rows, "rows_kept": kept.num_rows})
