"""The rows `recap view` shows: DuckDB over the output's parquet files in place, under `recap
filter`'s rules and reading only those files; a filter built from the page's controls (values as
parameters) and the same filter as the `recap filter --where` text (docs/view.md)."""

from __future__ import annotations

import math
import re
import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from ..quality.outputs import done_shards
from ..spine.errors import RecaptionError
from ..spine.files import local_path, open_input
from ..spine.ledger import OutputDir
from ..steps.filter import DUCKDB_CONFIG, check_where, matching_rows, one_line

SHARD, ROW = "__shard", "__row"  # the shard a row is in, and its number in that shard's file
CLIP_GAIN = "re_clip_score - org_clip_score"  # the sort that shows where the recaption wins or loses
MAX_PER_PAGE = 200
HISTOGRAM_BINS = 20
# A query over the folder answers a click: one that runs longer (a runaway --where such as a
# subquery over range(10^11)) is interrupted, and DuckDB works on two threads at most.
QUERY_SECONDS = 15
VIEW_DUCKDB = {"threads": 2, "memory_limit": "2GB"}
_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class ViewError(RecaptionError, ValueError):
    """`recap view` cannot show this folder."""


class QueryError(ValueError):
    """A request the rows cannot answer (an unknown column, a bad condition): one line, HTTP 400."""


def identifier(name: str) -> str:
    """A column name as SQL: plain names as they are, others quoted."""
    return name if _PLAIN_NAME.match(name) else '"' + name.replace('"', '""') + '"'


def literal(value) -> str:
    """A value as a SQL literal, for the `--where` text a user copies (the queries themselves take
    parameters). `;` is written `chr(59)`: `recap filter` refuses a condition holding one."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    parts = ["'" + part.replace("'", "''") + "'" for part in str(value).split(";")]
    return " || chr(59) || ".join(parts)


def shell_word(text: str) -> str:
    """`text` as one POSIX shell word: in single quotes, or in double quotes when it holds a single
    quote (SQL string literals do), so a copied command reads as the SQL it is. A text with `!`
    stays in single quotes whatever it holds: in double quotes an interactive bash would expand
    `!x` from its history."""
    if "'" not in text or "!" in text:
        return shlex.quote(text)
    return '"' + re.sub(r'([\\"$`])', r"\\\1", text) + '"'


@dataclass
class Clause:
    """One condition: `template` with `{}` where each value goes, as parameters (`?`) for the
    query and as literals for the `--where` text."""

    template: str
    values: list = field(default_factory=list)

    @property
    def sql(self) -> str:
        return self.template.format(*("?" for _ in self.values))

    @property
    def text(self) -> str:
        return self.template.format(*(literal(v) for v in self.values))


@dataclass
class Query:
    """What the page asks: search text, statuses, flags set or not, numeric ranges, a condition
    typed as SQL, the sort, the page."""

    search: str = ""
    search_in: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    flags: dict[str, bool] = field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    where: str = ""
    sort: str = ""
    descending: bool = True
    page: int = 0
    per_page: int = 48


class Rows:
    """The finished shards of one caption output folder, queried in place."""

    def __init__(self, output: str):
        import duckdb

        self.out = OutputDir(output)
        self.names = done_shards(self.out)  # NoOutputError: not caption output
        root = local_path(output)
        if root is None:
            raise ViewError(f"{output}: recap view reads local folders; copy the output here first")
        self.files = {name: self.out.parquet(name) for name in self.names}
        schemas = []
        for name, path in self.files.items():
            try:
                with open_input(path) as f:
                    schemas.append(pq.read_schema(f))
            except (OSError, pa.ArrowInvalid) as exc:
                raise ViewError(f"{path}: shard {name} is marked finished but its parquet cannot be read "
                                f"({one_line(exc)}); caption it again or delete {name}.done") from None
        self.schema = pa.unify_schemas(schemas, promote_options="permissive")
        self.columns = [f.name for f in self.schema if f.name not in (SHARD, ROW)]
        kinds = {f.name: f.type for f in self.schema}
        self.text = [c for c in self.columns
                     if pa.types.is_string(kinds[c]) or pa.types.is_large_string(kinds[c])]
        self.captions = [c for c in self.text
                         if c in ("re_caption", "org_caption") or c.startswith("re_caption_")]
        self.flags = [c for c in self.columns if pa.types.is_boolean(kinds[c])]
        self.numbers = [c for c in self.columns
                        if pa.types.is_integer(kinds[c]) or pa.types.is_floating(kinds[c])]
        gain = {"re_clip_score", "org_clip_score"} <= set(self.numbers)
        self.sorts = self.numbers + ([CLIP_GAIN] if gain else [])
        self._floats = {c for c in self.numbers if pa.types.is_floating(kinds[c])}
        self._floats |= {CLIP_GAIN} if gain else set()
        self._db = duckdb.connect(":memory:")
        # Only these files are readable; then recap filter's rules, locked.
        self._db.execute("SET allowed_paths = ?", [list(self.files.values())])
        files = "[" + ", ".join(literal(p) for p in self.files.values()) + "]"
        self._db.execute(
            f"CREATE VIEW rows AS SELECT *, regexp_extract(__file, '([^/]*)\\.parquet$', 1) AS {SHARD}, "
            f"file_row_number AS {ROW} FROM read_parquet({files}, filename='__file', file_row_number=true, "
            "union_by_name=true)"
        )
        for name, value in {**VIEW_DUCKDB, **DUCKDB_CONFIG}.items():  # (the lock last)
            self._db.execute(f"SET {name} = {literal(value)}")
        self._check_db = duckdb.connect(":memory:", config={**VIEW_DUCKDB, **DUCKDB_CONFIG})
        self.total = self._count("true", [])

    # -- the filter ---------------------------------------------------------------------------------

    def clauses(self, query: Query) -> list[Clause]:
        """The conditions of a query, each a Clause; QueryError for a column the files lack."""
        clauses = []
        self._known(query.search_in, self.text, "search in")  # (checked with or without a search)
        if query.search.strip():
            columns = query.search_in or self.captions
            needle = query.search.strip().lower()
            parts = [f"contains(lower({identifier(c)}), {{}})" for c in columns]
            clauses.append(Clause("(" + " or ".join(parts) + ")" if len(parts) > 1 else parts[0],
                                  [needle] * len(parts)))
        if query.status:
            self._known(["status"], self.columns, "status filter")
            marks = ", ".join("{}" for _ in query.status)
            clauses.append(Clause(f"status in ({marks})", list(query.status)))
        for flag, is_set in sorted(query.flags.items()):
            self._known([flag], self.flags, "flag")
            clauses.append(Clause(identifier(flag) if is_set else f"not {identifier(flag)}"))
        for column, (low, high) in sorted(query.ranges.items()):
            self._known([column], self.numbers, "range")
            if low is not None:
                clauses.append(Clause(f"{identifier(column)} >= {{}}", [low]))
            if high is not None:
                clauses.append(Clause(f"{identifier(column)} <= {{}}", [high]))
        if query.where.strip():
            where = self._checked_where(query.where)
            closing = "\n)" if "--" in where else ")"  # (a trailing -- comment ends at the line)
            clauses.append(Clause("(" + where.replace("{", "{{").replace("}", "}}") + closing))
        return clauses

    def _checked_where(self, where: str) -> str:
        """The condition as `recap filter` evaluates it: one expression over one shard's rows (no
        closing parenthesis to step out of the page's query, no other table), checked on this
        view's own bounded connection (a subquery that ignores the rows still runs in full)."""
        shard_rows = pa.schema([f for f in self.schema if f.name in self.columns]).empty_table()
        cursor = self._check_db.cursor()  # no `rows` table there: as recap filter sees one shard
        with _interrupted_after(cursor) as stopped:
            try:
                where = check_where(where, self.columns)
                matching_rows(shard_rows, where, con=cursor)
            except ValueError as exc:
                raise QueryError(_too_long() if stopped.is_set() else str(exc)) from None
        return where

    def where_text(self, query: Query) -> str:
        """The condition `recap filter --where` takes to keep exactly these rows."""
        return " and ".join(c.text for c in self.clauses(query)) or "true"

    def filter_command(self, query: Query, destination: str = "FILTERED") -> str:
        return (f"recap filter {shell_word(self.out.url)} --where {shell_word(self.where_text(query))} "
                f"-o {shell_word(destination)}")

    def _condition(self, query: Query) -> tuple[str, list]:
        clauses = self.clauses(query)
        return (" and ".join(c.sql for c in clauses) or "true", [v for c in clauses for v in c.values])

    def _known(self, names: list[str], allowed: list[str], what: str) -> None:
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise QueryError(f"{what}: no column {unknown[0]!r} here; columns: {', '.join(allowed)}")

    def _run(self, sql: str, params: list, cursor=None, fetch=lambda result: result.fetchall()):
        """`fetch` of one statement's result, on its own cursor (requests run in threads) or
        `cursor`, interrupted after QUERY_SECONDS."""
        import duckdb

        cursor = cursor or self._db.cursor()
        with _interrupted_after(cursor):
            try:
                return fetch(cursor.execute(sql, params))
            except duckdb.InterruptException:
                raise QueryError(_too_long()) from None
            except duckdb.Error as exc:
                raise QueryError(one_line(exc)) from None

    def _count(self, condition: str, params: list) -> int:
        return int(self._run(f"SELECT count(*) FROM rows WHERE {condition}", params, fetch=_first)[0])

    # -- answers ---------------------------------------------------------------------------------

    def page(self, query: Query) -> dict:
        """One page of rows (every column, plus shard and row number), the count of all rows the
        filter keeps, and the filter as a `recap filter` command."""
        condition, params = self._condition(query)
        per_page = max(1, min(int(query.per_page), MAX_PER_PAGE))
        order = f"{SHARD}, {ROW}"
        if query.sort:
            if query.sort not in self.sorts:
                raise QueryError(f"sort: no column {query.sort!r} here; sorts: {', '.join(self.sorts)}")
            expression = f"({CLIP_GAIN})" if query.sort == CLIP_GAIN else identifier(query.sort)
            if query.sort in self._floats:  # NaN is "no value" here, as on the page: last, not largest
                expression = f"(CASE WHEN isnan({expression}) THEN NULL ELSE {expression} END)"
            order = f"{expression} {'DESC' if query.descending else 'ASC'} NULLS LAST, {order}"
        # The page's (shard, row) and the count of all matches in one scan, over small columns;
        # then only those rows in full. No filter: the count is known, the scan stops early.
        counted = "count(*) OVER ()" if params or condition != "true" else f"{self.total}"
        found = self._run(
            f"SELECT {SHARD}, {ROW}, {counted} FROM rows WHERE {condition} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, per_page, max(0, int(query.page)) * per_page],
        )
        picked = [(shard, row) for shard, row, _ in found]
        rows = self.rows_at(picked)
        matched = int(found[0][2]) if found else (self._count(condition, params) if query.page else 0)
        return {"total": self.total, "matched": matched, "page": int(query.page), "per_page": per_page,
                "rows": rows, "where": self.where_text(query), "command": self.filter_command(query)}

    def rows_at(self, picked: list[tuple[str, int]]) -> list[dict]:
        """Full rows at these (shard, row) places, in this order; each shard's file read alone."""
        by_shard: dict[str, list[int]] = {}
        for shard, row in picked:
            by_shard.setdefault(shard, []).append(int(row))
        found: dict[tuple[str, int], dict] = {}
        for shard, numbers in by_shard.items():
            path = self.files[shard]
            marks = ", ".join("?" for _ in numbers)
            names, rows = self._run(
                f"SELECT * EXCLUDE (file_row_number), file_row_number AS {ROW} "
                f"FROM read_parquet({literal(path)}, file_row_number=true) "
                f"WHERE file_row_number IN ({marks})",
                numbers, fetch=lambda result: ([d[0] for d in result.description], result.fetchall()),
            )
            for values in rows:
                row = dict(zip(names, values, strict=True))
                found[(shard, row[ROW])] = {**_clean(row), SHARD: shard}
        return [found[(shard, int(row))] for shard, row in picked if (shard, int(row)) in found]

    def row(self, shard: str, number: int) -> dict | None:
        """One row by shard and number (None when there is no such row)."""
        if shard not in self.files or number < 0:
            return None
        rows = self.rows_at([(shard, number)])
        return rows[0] if rows else None

    def histograms(self, query: Query, bins: int = HISTOGRAM_BINS) -> dict:
        """Per numeric column, the counts of the rows the filter keeps in `bins` equal bins
        between its smallest and largest value there."""
        condition, params = self._condition(query)
        if not self.numbers:
            return {}
        names = [identifier(c) for c in self.numbers]
        # The filter is evaluated once: its rows' numbers into a temporary table of this cursor.
        cursor = self._db.cursor()
        # (as doubles, NaN and infinities as NULL: a NaN score would make every bin NaN)
        finite = ", ".join(f"CASE WHEN isfinite({c}::DOUBLE) THEN {c}::DOUBLE END AS {c}" for c in names)
        self._run(f"CREATE TEMP TABLE kept AS SELECT {finite} FROM rows WHERE {condition}", params, cursor,
                  fetch=lambda result: None)
        ranges = ", ".join(f"min({c}), max({c}), count({c})" for c in names)
        found = self._run(f"SELECT {ranges} FROM kept", [], cursor, fetch=_first)
        result, selects = {}, []
        for i, column in enumerate(self.numbers):
            low, high, n = found[3 * i: 3 * i + 3]
            if not n:
                continue
            result[column] = {"low": low, "high": high, "count": int(n), "counts": [0] * bins}
            if low == high:
                result[column]["counts"][0] = int(n)
                continue
            width = (high - low) / bins
            name = identifier(column)
            selects.append((column, f"SELECT {literal(column)} AS c, "
                                    f"least(floor(({name} - {low!r}) / {width!r}), {bins - 1})::INT AS b, "
                                    f"count(*) AS n FROM kept WHERE {name} IS NOT NULL GROUP BY b"))
        if selects:
            sql = " UNION ALL ".join(s for _, s in selects)
            for column, b, n in self._run(sql, [], cursor):
                result[column]["counts"][int(b)] = int(n)
        cursor.close()
        return result

    def statuses(self) -> dict[str, int]:
        if "status" not in self.columns:
            return {}
        found = self._run("SELECT status, count(*) FROM rows GROUP BY status ORDER BY 2 DESC", [])
        return {str(s): int(n) for s, n in found}

    def meta(self) -> dict:
        return {"output": self.out.url, "shards": self.names, "total": self.total, "columns": self.columns,
                "captions": self.captions, "text": self.text, "flags": self.flags, "numbers": self.numbers,
                "sorts": self.sorts, "statuses": self.statuses()}


@contextmanager
def _interrupted_after(cursor) -> Iterator[threading.Event]:
    """The block's DuckDB work on `cursor`, interrupted after QUERY_SECONDS (the event says so)."""
    stopped = threading.Event()

    def stop() -> None:
        stopped.set()
        cursor.interrupt()

    timer = threading.Timer(QUERY_SECONDS, stop)
    timer.start()
    try:
        yield stopped
    finally:
        timer.cancel()


def _too_long() -> str:
    return f"the query ran over {QUERY_SECONDS} s and was stopped; give a narrower condition"


def _first(result):
    return result.fetchone()


def _clean(row: dict) -> dict:
    """JSON-ready values: NaN and infinities as None, bytes as their size."""
    clean = {}
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        elif isinstance(value, (bytes, bytearray)):
            value = f"<{len(value)} bytes>"
        clean[key] = value
    return clean
