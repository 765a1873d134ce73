"""Stream URL metadata rows from parquet, csv/tsv (optionally gzipped), jsonl and txt files.

Rows are read in batches (parquet row groups, csv blocks, lines), never a whole file at once,
so memory does not grow with the input's size. Inputs are read in the order given; row i of
the concatenation goes to shard i // shard_size, so the plan is the same on every rerun.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec

from ..readers import InputError
from ..readers.base import full_url

BATCH_ROWS = 4096


@dataclass
class UrlRow:
    url: str | None
    caption: str | None = None
    sha256: str | None = None
    extra: dict = field(default_factory=dict)


def expand_metadata_inputs(inputs: list[str]) -> list[str]:
    """Files, folders (their metadata files, sorted), globs and {a..b} ranges, in order."""
    from braceexpand import braceexpand
    from fsspec.core import url_to_fs

    paths: list[str] = []
    for item in inputs:
        for pattern in braceexpand(item):
            fs, path = url_to_fs(pattern)
            if any(ch in path for ch in "*?["):
                found = sorted(fs.glob(path))
            elif fs.isdir(path):
                found = sorted(p for p in fs.find(path) if _is_metadata(p))
            elif fs.exists(path):
                paths.append(pattern)
                continue
            else:
                raise InputError(f"{pattern}: no such file or directory")
            if not found:
                raise InputError(f"{pattern}: no metadata files (.parquet, .csv, .tsv, .jsonl, .txt)")
            paths += [full_url(fs, p) for p in found]
    return paths


def _is_metadata(path: str) -> bool:
    try:
        input_format(path)
    except InputError:
        return False
    return True


def input_format(path: str) -> str:
    name = path.lower()
    for suffix in (".gz", ".gzip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for fmt in ("parquet", "csv", "tsv", "jsonl", "json", "txt"):
        if name.endswith("." + fmt):
            return "jsonl" if fmt == "json" else fmt
    raise InputError(
        f"{path}: unknown metadata format (want .parquet, .csv, .tsv, .jsonl or .txt, optionally .gz)"
    )


class MetadataReader:
    def __init__(
        self,
        url_col: str = "url",
        caption_col: str | None = "text",
        sha256_col: str | None = None,
        extra_cols: list[str] | None = None,
    ):
        self.url_col = url_col
        self.caption_col = caption_col
        self.sha256_col = sha256_col
        self.extra_cols = list(extra_cols or [])

    def rows(self, inputs: list[str]) -> Iterator[UrlRow]:
        for path in expand_metadata_inputs(inputs):
            yield from self._rows_of(path)

    def _rows_of(self, path: str) -> Iterator[UrlRow]:
        fmt = input_format(path)
        if fmt == "txt":
            for line in self._lines(path):
                if line.strip():
                    yield UrlRow(url=line.strip())
            return
        batches = {"parquet": self._parquet, "csv": self._csv, "tsv": self._csv, "jsonl": self._jsonl}[fmt]
        for columns in batches(path, fmt):
            self._check_columns(path, columns)
            n = len(columns[self.url_col])
            for i in range(n):
                yield UrlRow(
                    url=_text(columns[self.url_col][i]),
                    caption=_text(columns[self.caption_col][i]) if self.caption_col in columns else None,
                    sha256=_text(columns[self.sha256_col][i]) if self.sha256_col in columns else None,
                    extra={c: columns[c][i] for c in self.extra_cols if c in columns},
                )

    def _check_columns(self, path: str, columns: dict) -> None:
        if self.url_col not in columns:
            raise InputError(
                f"{path}: no URL column {self.url_col!r} (has: {', '.join(sorted(columns))}); "
                "choose one with --url-col"
            )
        missing = [c for c in self.extra_cols if c not in columns]
        if missing:
            raise InputError(f"{path}: --extra-cols {', '.join(missing)} not in the file")

    def _wanted(self) -> list[str]:
        return [c for c in [self.url_col, self.caption_col, self.sha256_col, *self.extra_cols] if c]

    def _parquet(self, path: str, fmt: str) -> Iterator[dict]:
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = set(parquet.schema_arrow.names)
            wanted = [c for c in self._wanted() if c in names]
            if self.url_col not in names:
                self._check_columns(path, dict.fromkeys(names))
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                yield batch.to_pydict()

    def _csv(self, path: str, fmt: str) -> Iterator[dict]:
        import pyarrow.csv as pacsv

        delimiter = "\t" if fmt == "tsv" else ","
        with fsspec.open(path, "rb", compression="infer") as f:
            reader = pacsv.open_csv(
                f,
                read_options=pacsv.ReadOptions(block_size=1 << 20),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    include_columns=None,
                    strings_can_be_null=True,
                    column_types={
                        c: "string" for c in (self.url_col, self.caption_col, self.sha256_col) if c
                    },
                ),
            )
            for batch in reader:
                yield batch.to_pydict()

    def _jsonl(self, path: str, fmt: str) -> Iterator[dict]:
        batch: list[dict] = []
        for number, line in enumerate(self._lines(path), 1):
            if not line.strip():
                continue
            try:
                batch.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: line {number} is not JSON: {exc}") from exc
            if len(batch) == BATCH_ROWS:
                yield self._columns(batch)
                batch = []
        if batch:
            yield self._columns(batch)

    @staticmethod
    def _columns(records: list[dict]) -> dict:
        names = {k for r in records for k in r}
        return {k: [r.get(k) for r in records] for k in names}

    @staticmethod
    def _lines(path: str) -> Iterator[str]:
        with fsspec.open(path, "rb") as raw:
            stream = gzip.open(raw) if path.lower().endswith((".gz", ".gzip")) else raw
            yield from io.TextIOWrapper(stream, encoding="utf-8")


def _text(value) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)
