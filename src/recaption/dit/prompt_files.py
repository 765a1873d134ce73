"""Prompts for `recap generate`, from wherever people keep them (see load_prompts). Every prompt
keeps where it came from; empty ones are skipped and counted; a bad file is one line naming the
file, the line and the fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..spine.files import open_regular, read_input
from ..training.inputs import TrainingInputError

log = logging.getLogger(__name__)

PROMPT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
# Fields generate writes into each image's json (and webdataset's own): a prompt's field of the
# same name is kept as source_<name> instead of being overwritten.
RESERVED = frozenset(
    {"url", "key", "status", "error", "caption", "sha256", "prompt", "prompt_index", "image_index",
     "seed", "image_seed", "guidance", "steps", "sampler", "source_row", "source_line", "source_file"}
)
PLACES = ("source_file", "source_row", "source_line")  # where a prompt came from (see generate)
Loaded = tuple[list[dict], int, str | None]  # prompts, rows skipped, the line that says so


def looks_like_prompt_file(text: str) -> bool:
    """Whether the command line's `prompts` names a prompt file rather than being one prompt: it
    exists, or has no whitespace and ends in a prompt-file suffix or "/", or a "/" after an existing
    folder ("circle/square" is a prompt, "runs/typo" with runs/ there a missing file)."""
    path = Path(text).expanduser()
    if path.exists():
        return True
    if not text.strip() or any(ch.isspace() for ch in text):
        return False
    if text.endswith("/") or path.suffix.lower() in PROMPT_SUFFIXES:
        return True
    return "/" in text and path.parent != Path(".") and path.parent.is_dir()


def load_prompts(source, column: str | None = None) -> list[dict]:
    """Prompts as dicts {"prompt": text, ...anything else to record with the image}, from a list
    (strings, dicts with "prompt" or `column`, shapes `Prompt`s), a UTF-8 .txt file (a prompt a
    line), a .jsonl file (objects with "prompt" or `column`; a .json file may hold one list), a
    parquet file or folder (`column`, default "prompt"). Null or blank prompts are skipped, with
    one warning that counts them."""
    items, _, note = read_prompts(source, column)
    if note:
        log.warning("%s", note)
    return [{k: v for k, v in item.items() if k not in PLACES} for item in items]


def read_prompts(source, column: str | None) -> Loaded:
    """(prompts, how many rows were skipped for a null or blank prompt, the line saying so)."""
    if isinstance(source, (list, tuple)):
        return _from_rows(source, column, "the prompt list", "source_row", 0)
    path = Path(source).expanduser()
    where = f"prompts {source}"
    if not path.exists():
        raise TrainingInputError(f"{where}: no such file or folder (give an existing prompt file, or a "
                                 "prompt in quotes)")
    if path.is_dir() or path.suffix.lower() == ".parquet":
        return _from_parquet(path, column, where)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        raise TrainingInputError(f"{where}: a {suffix} file is not read as prompts; save them as .txt (one a "
                                 "line), .jsonl or parquet")
    text = _read_text(path, where)
    if suffix in (".jsonl", ".json"):
        return _from_json(text, column, where, whole=suffix == ".json")
    if column:
        raise TrainingInputError(f"--column {column}: {path.name} is read as plain text (one prompt a line) "
                                 "and has no columns; leave --column out, or give a .jsonl or parquet file")
    lines = _lines(text)
    items = [{"prompt": line.strip(), "source_line": n} for n, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise TrainingInputError(f"{where}: no prompts (the file is empty or blank)")
    return items, 0, None


def _read_text(path: Path, where: str) -> str:
    try:
        data = read_input(path)
    except OSError as exc:  # a FIFO, a device, no permission: one line
        raise TrainingInputError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TrainingInputError(f"{where} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save "
                                 "it as UTF-8") from None


def _from_json(text: str, column: str | None, where: str, whole: bool) -> Loaded:
    """JSON lines (objects, or plain strings), or for a .json file one list of them."""
    if whole:
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            value = None  # not one document: read as JSON lines (which say what is wrong)
        if isinstance(value, list):
            return _from_rows(value, column, where, "source_row", 0)
    rows, numbers = [], []
    for n, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TrainingInputError(f"{where} line {n}: not valid JSON ({exc.msg} column {exc.colno}); a "
                                     ".jsonl file needs one JSON object per line") from None
        except RecursionError:
            raise TrainingInputError(f"{where} line {n}: JSON nested too deeply; a prompt is an object "
                                     "or a string") from None
        numbers.append(n)
    if not rows:
        raise TrainingInputError(f"{where}: no prompts (the file is empty or blank)")
    return _from_rows(rows, column, where, "source_line", numbers)


def _from_rows(rows, column: str | None, where: str, place: str, numbers) -> Loaded:
    """`numbers`: each row's line number, or 0 to number rows from 0 (list index)."""
    key = column or "prompt"
    items, skipped, first = [], 0, None
    for i, row in enumerate(rows):
        number = numbers[i] if numbers else i
        spot = f"{'line' if place == 'source_line' else 'item'} {number}"
        at = f"{where} {spot}"
        if isinstance(row, str) and column is None:
            fields = {"prompt": row}
        elif isinstance(row, str):
            raise TrainingInputError(f"--column {column}: {at} is a plain string, which has no columns; "
                                     "leave --column out")
        elif isinstance(row, dict):
            fields = dict(row)
        elif hasattr(row, "text") and hasattr(row, "spec"):  # recaption.shapes.prompts.Prompt
            fields = {"prompt": row.text, "spec": row.spec, "style": row.style, "index": row.index,
                      "complexity": row.complexity}
        else:
            raise TrainingInputError(f"{at}: a prompt must be a string or an object with {key!r}, not "
                                     f"{_kind(row)}")
        if key not in fields:
            has = ", ".join(map(str, fields)) or "nothing"
            raise TrainingInputError(f"{at}: no {key!r} (it has: {has}); name the prompt field with --column")
        text = fields.pop(key)
        if text is None or (isinstance(text, str) and not text.strip()):
            skipped += 1
            first = first or spot
            continue
        if not isinstance(text, str):
            raise TrainingInputError(f"{at}: {key!r} is {_kind(text)} {json.dumps(text)[:40]}, not text")
        items.append({"prompt": text, **_keep(fields), place: number})
    return items, skipped, _skipped_note(items, skipped, first, key, where)


def _from_parquet(path: Path, column: str | None, where: str) -> Loaded:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise TrainingInputError(f"{where}: a folder with no parquet files in it (give a .txt, .jsonl or "
                                 "parquet file, or a recap caption output folder)")
    name = column or "prompt"
    items, skipped, first = [], 0, None
    for f in files:
        label = f"prompts {f}" if path.is_dir() else where
        try:
            with open_regular(f) as fh:
                schema = pq.read_schema(fh)
            if name not in schema.names:
                raise TrainingInputError(f"{label}: no column {name!r} (columns: {', '.join(schema.names)}); "
                                         "name it with --column")
            kind = schema.field(name).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                raise TrainingInputError(f"{label}: column {name!r} holds {kind}, not text; name a text "
                                         "column with --column")
            keep = [c for c in (name, "key") if c in schema.names]
            with open_regular(f) as fh:
                rows = pq.read_table(fh, columns=keep).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise TrainingInputError(f"{label}: not a readable parquet file ({exc})") from None
        for number, row in enumerate(rows):
            text = row[name]
            if text is None or not text.strip():
                skipped += 1
                first = first or (f"{f.name} row {number}" if path.is_dir() else f"row {number}")
                continue
            source = {"source_key": row["key"]} if "key" in row else {}
            items.append({"prompt": text, **source, "source_file": f.name, "source_row": number})
    return items, skipped, _skipped_note(items, skipped, first, name, where)


def _kind(value) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _keep(fields: dict) -> dict:
    """A prompt's own fields, those named like generate's own kept as source_<name>."""
    return {(f"source_{k}" if k in RESERVED else k): v for k, v in fields.items()}


def _skipped_note(items: list[dict], skipped: int, first: str | None, key: str, where: str) -> str | None:
    if not items:
        raise TrainingInputError(f"{where}: no prompts (every {key!r} is null or empty)")
    if not skipped:
        return None
    return (f"{where}: {skipped} of {skipped + len(items)} rows have a null or empty {key!r} and are "
            f"skipped (the first: {first}); each image's json keeps its source row")


def _lines(text: str) -> list[str]:
    """Lines as editors count them: split at \n only (str.splitlines also splits at U+2028, form
    feeds and other separators a prompt may hold), a trailing \r dropped, no empty last line."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines
