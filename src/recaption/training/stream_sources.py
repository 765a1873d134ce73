"""What a streaming trainer reads: its shards (`recap caption` output joined with its input
shards, or anything `discover_shards` reads), how many training samples each holds (ok rows,
img2dataset's stats, else one read remembered in OUTPUT/stream_counts.json), and whether the
fields asked for exist. Nothing here decodes an image. The counts decide every rank's steps per
epoch, so a shard that streams another number than counted stops the run in one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import posixpath
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..readers import ColumnConfig, discover_shards
from ..readers.base import Shard, file_fingerprint
from ..spine.contract import location
from ..spine.files import open_file
from .captions import ORIGINAL, RECAPTION, is_caption_output, offered_captions, reader_fields
from .inputs import TrainingInputError, shard_errors

log = logging.getLogger(__name__)

COUNTS_FILE = "stream_counts.json"


@dataclass(slots=True)
class Record:
    """One training sample before decoding: what the shuffle buffer holds."""

    key: str
    data: bytes  # the encoded image
    org: str | None  # the original caption
    re: str | None  # the recaption
    where: str  # the shard, for messages
    more: dict | None = None  # a caption mix's other columns (--mix), by column


@dataclass(frozen=True)
class StreamShard:
    """One unit of the stream: an input shard (or an interleaved part of one, when there are
    fewer shards than ranks) and how many samples it yields. Picklable: loader workers read it."""

    shard: Shard
    count: int  # samples of the whole shard
    recaption_field: str | None = None  # plain shards: the json field holding the recaption
    rows: str | None = None  # a caption output folder: join its ok rows of shard `name` by key
    name: str | None = None
    part: int = 0  # records i with i % parts == part
    parts: int = 1
    caption_field: str | None = None  # plain shards: the field the user named for the caption
    columns: tuple[str, ...] = ()  # a caption mix's columns besides org_caption and re_caption

    @property
    def label(self) -> str:
        """Where the samples come from, absolute (as a checkpoint records it)."""
        where = location(f"{self.rows.rstrip('/')}/{self.name}.parquet" if self.rows else self.shard.source)
        return where if self.parts == 1 else f"{where} (part {self.part + 1} of {self.parts})"

    @property
    def samples(self) -> int:
        """How many samples this part yields: record i goes to part i % parts."""
        return self.count // self.parts + (1 if self.part < self.count % self.parts else 0)

    def split(self, parts: int) -> list[StreamShard]:
        return [dataclasses.replace(self, part=p, parts=parts) for p in range(parts)]

    def records(self) -> Iterator[Record]:
        """This part's samples, undecoded; then a check that they were as many as counted."""
        yielded = 0
        with shard_errors():
            for index, record in enumerate(self._all_records()):
                if index % self.parts == self.part:
                    yielded += 1
                    yield record
        if yielded != self.samples:
            raise TrainingInputError(f"{self.label}: {yielded} training samples now, {self.samples} when "
                                     "counted before the run (changed since, or its stats are wrong); "
                                     f"delete {COUNTS_FILE} in the output folder to count again, or train "
                                     "into a new --output")

    def _all_records(self) -> Iterator[Record]:
        label = self.label
        wanted = (ORIGINAL, RECAPTION, *self.columns)
        if self.rows is None:
            for sample in self.shard:
                if sample.ok:  # the captions it offers: training/captions.py, one rule for every trainer
                    offer = offered_captions(sample, wanted, self.recaption_field, self.caption_field)
                    yield Record(sample.key, sample.image_bytes, offer.pop(ORIGINAL), offer.pop(RECAPTION),
                                 label, offer or None)
            return
        rows = _ok_rows(self.rows, self.name, self.columns)
        for sample in self.shard:
            row = rows.get(sample.key)
            if row is not None and sample.ok:
                more = {c: row[c] for c in self.columns if c not in (ORIGINAL, RECAPTION)}
                yield Record(sample.key, sample.image_bytes, row[ORIGINAL], row[RECAPTION], label,
                             more or None)


def _ok_rows(output: str, name: str, columns: tuple[str, ...] = ()) -> dict[str, dict]:
    """key -> {org_caption, re_caption and `columns`} of a caption shard's rows with status ok."""
    from ..quality.outputs import read_output
    from ..spine.ledger import OutputDir

    names = list(dict.fromkeys(["key", ORIGINAL, RECAPTION, "status", *columns]))
    table = read_output(OutputDir(output), name, names)
    return {r["key"]: r for r in table.to_pylist() if r["status"] == "ok"}


def caption_output_shards(output: str, columns: tuple[str, ...] = ()) -> list[StreamShard]:
    from ..quality.outputs import done_shards, input_shard, read_output
    from ..spine.ledger import OutputDir

    out = OutputDir(output)
    found, left_out, rows = [], Counter(), 0
    for name in done_shards(out):
        statuses = read_output(out, name, ["status"]).column("status").to_pylist()
        found.append(StreamShard(input_shard(out, name), statuses.count("ok"), rows=output, name=name,
                                 columns=columns))
        rows += len(statuses)
        left_out.update(status for status in statuses if status != "ok")
    if left_out:  # failed rows have no recaption to train on; say so instead of a silent shortfall
        log.warning("%s: %d of %d rows are left out (status %s)", output, sum(left_out.values()), rows,
                    ", ".join(f"{k} {n}" for k, n in sorted(left_out.items())))
    return found


class _Counts:
    """Counts of plain shards, remembered between runs by each shard's identity."""

    def __init__(self, path: Path | None):
        self.path = path
        self.known: dict = {}
        self.changed = False
        if path is not None and path.is_file():
            try:
                self.known = json.loads(path.read_text()).get("shards", {})
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                self.known = {}

    def count(self, shard: Shard) -> int:
        successes = _img2dataset_successes(shard)
        if successes is not None:
            return successes
        identity = _identity(shard)
        seen = self.known.get(shard.source)
        if isinstance(seen, dict) and seen.get("identity") == identity:
            return int(seen["count"])
        with shard_errors():
            count = sum(1 for sample in shard if sample.ok)  # read once; nothing decoded
        self.known[shard.source] = {"identity": identity, "count": count}
        self.changed = True
        return count

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        from fsspec.implementations.local import LocalFileSystem

        from ..spine.atomic import write_json_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(LocalFileSystem(), str(self.path), {"shards": self.known})


def _img2dataset_successes(shard: Shard) -> int | None:
    """img2dataset's count of the samples in a tar (its `{shard}_stats.json` beside it)."""
    from fsspec.core import url_to_fs

    if not shard.source.endswith((".tar", ".tar.gz", ".tgz")):
        return None
    stats = f"{posixpath.dirname(shard.source)}/{shard.name}_stats.json"
    try:
        fs, path = url_to_fs(stats)
        if not fs.exists(path):
            return None
        with open_file(fs, path, "r") as f:  # a FIFO in its place: refused, never waited on
            successes = json.load(f).get("successes")
    except (OSError, ValueError, AttributeError):
        return None
    return successes if isinstance(successes, int) and successes >= 0 else None


def _identity(shard: Shard) -> str:
    """What must be unchanged for a remembered count to hold: a folder slice's fingerprint, or the
    file's size and version ("" when it cannot be listed: the read that counts will say why)."""
    fingerprint = shard.fingerprint()
    if fingerprint is None:
        fingerprint = file_fingerprint(shard.source) or ""
    return json.dumps(fingerprint, sort_keys=True)


def stream_shards(data: list[str], caption_field: str | None = None, recaption_field: str | None = None,
                  counts_folder: str | Path | None = None, save_counts: bool = True,
                  columns: tuple[str, ...] = ()) -> list[StreamShard]:
    """Every item of DATA as shards with counts, in a fixed order (the same on every rank);
    `columns`: a caption mix's columns besides org_caption and re_caption, carried by each record."""
    columns = tuple(c for c in columns if c not in (ORIGINAL, RECAPTION))
    found: list[StreamShard] = []
    plain = []
    for item in data:
        if is_caption_output(item):
            found += caption_output_shards(item, columns)
        else:
            plain.append(item)
    if plain:
        extra = reader_fields(recaption_field, caption_field, columns)
        read_as = ColumnConfig(caption=caption_field, extra=extra)
        counts = _Counts(Path(counts_folder) / COUNTS_FILE if counts_folder else None)
        shards = discover_shards(plain, read_as, writes_by_name=False)  # two folders of 00000.tar: fine
        found += [StreamShard(s, counts.count(s), recaption_field, caption_field=caption_field,
                              columns=columns) for s in shards]
        if save_counts:
            counts.save()
    if not any(s.count for s in found):
        raise TrainingInputError(f"no readable image-text pairs in {', '.join(map(str, data))}")
    return found


def spread(shards: list[StreamShard], world_size: int) -> list[StreamShard]:
    """The shards with samples, each cut into interleaved parts when there are fewer shards than
    ranks, so that every rank has a part to read (each part's reader reads the whole shard)."""
    kept = [s for s in shards if s.count]
    if len(kept) >= world_size:
        return kept
    parts = math.ceil(world_size / len(kept))
    spread_out = [part for s in kept for part in s.split(parts) if part.samples]
    if len(spread_out) < world_size:
        total = sum(s.count for s in kept)
        raise TrainingInputError(f"{total} training sample(s) in all: too few for {world_size} processes")
    return spread_out


def require_fields(shards: list[StreamShard], fields: dict[str, str | None], note: str = "") -> None:
    """Refuse a field no sample has (`{"--caption-field": "description"}`): a caption falls back
    to the shard's own, so a misspelt name would go unnoticed. Looked for in the first plain
    shard (so one lacking a field the others have is refused too: name them in another order)."""
    wanted = {option: field for option, field in fields.items() if field}
    first = next((s for s in shards if s.rows is None), None)
    if not wanted or first is None:
        return
    missing = dict(wanted)
    with shard_errors():
        for sample in first.shard:
            for option, field in list(missing.items()):
                if sample.extra.get(field) is not None:
                    del missing[option]
            if not missing:
                return
    option, field = next(iter(missing.items()))
    raise TrainingInputError(f"{option} {field}: no sample in {first.shard.source} has it{note}")
