"""`recap lookup SHARDS VALUE...`: samples of an img2dataset-layout folder (`00042.tar` beside
`00042.parquet`) by key, id or URL, without scanning the tars: one filtered parquet column per
shard, then the match's members through the tar's index (samples/tar_index.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..redact import strip_url_secrets
from ..samples.tar_index import Member, TarIndex, TarIndexError
from ..spine.contract import INDEX_NAME, read_stamp
from ..spine.errors import RecaptionError
from ..spine.files import open_input
from ..spine.ledger import OutputDir
from .base import full_url

log = logging.getLogger(__name__)


class ShardLookupError(RecaptionError, ValueError):
    """A folder that holds no shards, or a column its shards do not have."""


@dataclass
class Found:
    """A matched row (every column) and its sample's tar members ([]: failed to download; None:
    the tar cannot be read)."""

    value: str
    shard: str
    row: dict
    members: list[Member] | None = field(default_factory=list)


def lookup(folder: str, values: list[str], by: str = "key") -> tuple[list[Found], list[str]]:
    """(the rows whose column `by` holds one of `values`, in shard order; the values found
    nowhere). ShardLookupError for a folder without shards or a column none has."""
    out = OutputDir(folder)
    shards = sorted(p.rsplit("/", 1)[-1][: -len(".parquet")] for p in out.fs.glob(out.path("*.parquet")))
    if not shards:
        raise ShardLookupError(f"{folder}: no shards (NAME.parquet beside NAME.tar) to look in; "
                           "name a folder `recap download` or img2dataset wrote")
    if by == "url":  # stored URLs keep no secrets (redact.py): match them the same way
        values = [strip_url_secrets(v) for v in values]
    wanted = pa.array(sorted(set(values)), pa.string())
    found: list[Found] = []
    had_column, unreadable = False, []
    for name in shards:
        try:
            matched = _matching_rows(out, name, by, wanted)
        except (OSError, pa.ArrowException) as exc:  # (a FIFO, a file that is not parquet)
            unreadable.append(f"{full_url(out.fs, out.parquet(name))}: {exc}")
            log.warning("%s; skipped", unreadable[-1])
            continue
        if matched is None:
            continue
        had_column = True
        if matched.num_rows:
            has_tar = out.fs.exists(out.path(f"{name}.tar"))
            index = _index(out, name) if has_tar else None  # (a tar that cannot be read: warned)
            for row in matched.to_pylist():
                if index is not None:
                    members = index.members(str(row.get("key")))
                else:  # no tar at all: no members; an unreadable one: unknown
                    members = None if has_tar else []
                found.append(Found(row.pop(_MATCHED), name, row, members))
    if len(unreadable) == len(shards):
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise ShardLookupError(f"no shard could be read: {unreadable[0]}{more}")
    if not had_column:
        raise ShardLookupError(f"{folder}: no shard has a column {by!r}; --by takes a column of the shards' "
                           "parquet (key, url, or an id column such as uid)")
    missing = sorted(set(values) - {f.value for f in found})
    return found, missing


_MATCHED = "__recap_lookup_value"


def _matching_rows(out: OutputDir, name: str, by: str, wanted: pa.Array) -> pa.Table | None:
    """The shard's rows whose `by` (as text) is wanted, with that text in column _MATCHED (None:
    the shard has no such column)."""
    with open_input(full_url(out.fs, out.parquet(name))) as f:  # a regular file: never a FIFO
        parquet = pq.ParquetFile(f)
        if by not in parquet.schema_arrow.names:
            return None
        try:  # one column first: most shards hold no match
            text = pc.cast(parquet.read(columns=[by]).column(by), pa.string())
        except pa.ArrowException as exc:
            raise ShardLookupError(f"{name}: column {by!r} cannot be matched as text ({exc}); "
                                   "--by takes a text or number column") from None
        hits = pc.indices_nonzero(pc.fill_null(pc.is_in(text, wanted), False))
        if not len(hits):
            return parquet.schema_arrow.empty_table()
        return parquet.read().take(hits).append_column(_MATCHED, text.take(hits))


def _index(out: OutputDir, name: str, written: list[tuple[str, int, int]] | None = None) -> TarIndex | None:
    tar = out.path(f"{name}.tar")
    if not out.fs.exists(tar):
        return None
    # Kept on disk only in a folder this toolkit wrote (its stamp): never written into someone
    # else's download (img2dataset's); there the index lives in memory for this lookup.
    folder = full_url(out.fs, out.path(INDEX_NAME)) if read_stamp(out) is not None else None
    try:
        return TarIndex.load(full_url(out.fs, tar), folder, written)
    except TarIndexError as exc:
        log.warning("%s: its members cannot be located (%s)", name, exc)
        return None


def index_shard(folder: str, name: str, written: list[tuple[str, int, int]] | None = None) -> None:
    """Build a finished shard's tar index (`written`: its members as written, so the tar is not
    read again): a cache, so a failure is a warning."""
    out = OutputDir(folder)
    try:
        _index(out, name, written)
    except Exception as exc:  # noqa: BLE001 - a cache: whatever goes wrong, the shard stands
        log.warning("%s: tar index not built (%s); `recap lookup` builds it when needed", name, exc)

