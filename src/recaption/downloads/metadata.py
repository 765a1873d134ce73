"""Stream URL metadata rows from parquet, csv/tsv (optionally gzipped), jsonl and txt files, in
the order given and in batches (never a whole file at once: memory does not grow with the input)."""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..models.loading import first_line
from ..readers import InputError
from ..readers.base import ColumnConfig, full_url
from ..samples.sample import as_text
from ..spine.files import NotRegularFile, open_input

BATCH_ROWS = 4096
_FORMAT = re.compile(r"\.(parquet|csv|tsv|jsonl|json|txt)(?:\.gzip)?(?:\.gz)?\Z", re.IGNORECASE)


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
                found = sorted(p for p in fs.find(path) if _FORMAT.search(p))
            elif fs.exists(path):
                paths.append(pattern)
                continue
            else:
                raise InputError(f"{pattern}: no such file or directory")
            if not found:
                raise InputError(f"{pattern}: no metadata files (.parquet, .csv, .tsv, .jsonl, .txt)")
            paths += [full_url(fs, p) for p in found]
    return paths


def input_format(path: str) -> str:
    if match := _FORMAT.search(path):
        fmt = match.group(1).lower()
        return "jsonl" if fmt == "json" else fmt
    raise InputError(f"{path}: unknown metadata format (want .parquet, .csv, .tsv, .jsonl or .txt, "
                     "optionally .gz)")


@dataclass(frozen=True)
class ChosenColumns:
    """The columns a run reads, decided once from the first metadata file (see `choose`)."""

    url: str
    caption: str | None  # None: no caption column
    sha256: str | None = None
    extra: tuple[str, ...] = ()
    caption_found: bool = False  # the caption column was found among the usual names, not named
    source: str | None = None  # the file they were chosen from

    def describe(self) -> str:
        if self.source is None:
            return "url: one per line (txt); caption: none"
        if self.caption is None:
            caption = "none"
        elif self.caption_found:
            caption = f"{self.caption!r} (found; choose with --caption-col, '' for none)"
        else:
            caption = repr(self.caption)
        parts = [f"url: {self.url!r}", f"caption: {caption}"]
        if self.sha256:
            parts.append(f"sha256: {self.sha256!r}")
        parts.append("extra: " + (", ".join(repr(c) for c in self.extra) if self.extra else "none"))
        return "; ".join(parts)

    def check(self, path: str, columns, first: bool = True) -> None:
        """Every batch needs the URL column; a file's first batch also every other chosen
        column (jsonl records may leave a key out later on: that row's value is null)."""
        _require(path, columns, self.url, "URL", "--url-col")
        if not first:
            return
        if self.caption:
            hint = f"chosen from {self.source}; name one, or " if self.caption_found else ""
            _require(path, columns, self.caption, "caption", "--caption-col", hint + "'' for none")
        if self.sha256:
            _require(path, columns, self.sha256, "SHA-256", "--sha256-col")
        missing = [c for c in self.extra if c not in columns]
        if missing:
            raise InputError(f"{path}: --extra-cols {', '.join(missing)} not in the file")


def _require(path: str, names, column: str, what: str, flag: str, more: str = "") -> None:
    if column not in names:
        has = ", ".join(sorted(str(n) for n in names)) or "nothing"
        hint = f"choose one with {flag}" + (f" ({more})" if more else "")
        raise InputError(f"{path}: no {what} column {column!r} (has: {has}); {hint}")


class MetadataReader:
    """Rows of metadata files. `caption_col`: a column name, None to take the first of the
    usual names the file has (caption, text, ... as `recap caption` does), or "" for none."""

    def __init__(self, url_col: str = "url", caption_col: str | None = None, sha256_col: str | None = None,
                 extra_cols: list[str] | None = None):
        self.url_col = url_col
        self.caption_col = caption_col
        self.sha256_col = sha256_col or None
        self.extra_cols = list(extra_cols or [])
        self.chosen: ChosenColumns | None = None

    def choose(self, paths: list[str]) -> ChosenColumns:
        """Decide the columns from the first file that has columns (its schema, header or first
        records) and check them there: a named column it lacks is an InputError."""
        extra = tuple(self.extra_cols)
        for path in (p for p in paths if input_format(p) != "txt"):
            names = self._names(path)
            usual = (c for c in ColumnConfig.CAPTION_CANDIDATES if c in names and c != self.url_col)
            caption = next(usual, None) if self.caption_col is None else self.caption_col or None
            found = self.caption_col is None and caption is not None
            chosen = ChosenColumns(self.url_col, caption, self.sha256_col, extra, found, path)
            chosen.check(path, names)
            self.chosen = chosen
            return chosen
        self.chosen = ChosenColumns(self.url_col, None, None, extra)
        return self.chosen

    def _names(self, path: str) -> list[str]:
        """The column names of a metadata file, read without reading its rows."""
        fmt = input_format(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with _readable(path, fmt), open_input(path) as f:
                return list(pq.ParquetFile(f).schema_arrow.names)
        for columns in {"csv": self._csv, "tsv": self._csv, "jsonl": self._jsonl}[fmt](path, fmt):
            return list(columns)
        return []

    def rows(self, inputs: list[str]) -> Iterator[UrlRow]:
        """Rows of files, folders, globs and ranges, in order."""
        return self.read(expand_metadata_inputs(inputs))

    def read(self, paths: list[str]) -> Iterator[UrlRow]:
        """Rows of these metadata files (already expanded), in order."""
        if self.chosen is None:
            self.choose(paths)
        for path in paths:
            yield from self._rows_of(path)

    def _rows_of(self, path: str) -> Iterator[UrlRow]:
        fmt = input_format(path)
        if fmt == "txt":
            for line in self._lines(path):
                if line.strip():
                    yield UrlRow(url=line.strip())
            return
        chosen = self.chosen
        batches = {"parquet": self._parquet, "csv": self._csv, "tsv": self._csv, "jsonl": self._jsonl}[fmt]
        for number, columns in enumerate(batches(path, fmt)):
            chosen.check(path, columns, first=number == 0)
            caption = columns.get(chosen.caption) if chosen.caption else None
            sha256 = columns.get(chosen.sha256) if chosen.sha256 else None
            for i in range(len(columns[chosen.url])):
                yield UrlRow(url=as_text(columns[chosen.url][i]),
                             caption=as_text(caption[i]) if caption is not None else None,
                             sha256=as_text(sha256[i]) if sha256 is not None else None,
                             extra={c: columns[c][i] for c in chosen.extra if c in columns})

    def _parquet(self, path: str, fmt: str) -> Iterator[dict]:
        import pyarrow.parquet as pq

        with _readable(path, fmt), open_input(path) as f:
            parquet = pq.ParquetFile(f)
            names, chosen = set(parquet.schema_arrow.names), self.chosen
            chosen.check(path, names)  # (before the first batch: a file may have none)
            wanted = [c for c in (chosen.url, chosen.caption, chosen.sha256, *chosen.extra) if c in names]
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                yield batch.to_pydict()

    def _csv(self, path: str, fmt: str) -> Iterator[dict]:
        import pyarrow.csv as pacsv

        chosen = self.chosen  # (None while choosing: the URL column is text)
        strings = [c for c in (chosen.url, chosen.caption, chosen.sha256) if c] if chosen else [self.url_col]
        parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)
        types = dict.fromkeys(strings, "string")
        convert = pacsv.ConvertOptions(strings_can_be_null=True, column_types=types)
        with _readable(path, fmt), open_input(path, compression="infer") as f:
            read = pacsv.ReadOptions(block_size=1 << 20)
            reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
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
        with _readable(path, input_format(path)), open_input(path) as raw:
            stream = gzip.open(raw) if path.lower().endswith((".gz", ".gzip")) else raw
            yield from io.TextIOWrapper(stream, encoding="utf-8-sig")  # (a BOM, as Notepad writes: dropped)


@contextmanager
def _readable(path: str, fmt: str):
    """A file that is not what its name says (not parquet, not UTF-8, ragged CSV, broken gzip)
    as an InputError naming the file and what is wrong, so `recap download` prints one line."""
    import pyarrow as pa

    try:
        yield
    except NotRegularFile as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, pa.ArrowKeyError,
            pa.ArrowIndexError, pa.ArrowSerializationError) as exc:
        raise InputError(_arrow_problem(path, fmt, exc)) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot be decoded); "
                         "save it as UTF-8") from None
    except EOFError:
        raise InputError(f"{path}: ends early (a truncated gzip file?)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"{path}: not a valid gzip file ({first_line(exc, limit=300)})") from None


def _arrow_problem(path: str, fmt: str, exc: BaseException) -> str:
    reason = first_line(exc, limit=300)
    if fmt == "parquet":
        return f"{path}: not a readable parquet file ({reason})"
    if "invalid UTF8" in reason or "invalid utf8" in reason.lower():
        return f"{path}: not UTF-8 text ({reason}); save it as UTF-8"
    if "Expected" in reason and "columns" in reason:
        return (f"{path}: {reason}; every row needs as many fields as the header (quote values that hold "
                "the delimiter)")
    return f"{path}: cannot read as {fmt.upper()} ({reason})"
