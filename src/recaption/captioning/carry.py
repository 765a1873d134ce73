"""Captioning a shard again keeps the rows of images that did not change: its earlier output, and
a folder's neighbouring slices' rows of images now in it, are matched to the new input by url,
sha256 and original caption; a match is written as it was (scores and ratings kept where the
stamps agree; otherwise the new file's stamp says `partial`). Only `ok` rows are kept; the
markers already refused other settings (ledger.plan)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..quality.outputs import file_stamp
from ..readers import Shard
from ..readers.base import full_url
from ..readers.changes import input_change
from ..readers.folder import FolderShard
from ..redact import strip_url_secrets
from ..samples.sample import OK, Sample
from ..schema import (
    JUDGE_COLUMNS,
    JUDGE_METADATA_KEY,
    PARTIAL,
    SCORE_COLUMNS,
    SCORES_METADATA_KEY,
    stamp_identity,
)
from ..spine.ledger import OutputDir

log = logging.getLogger(__name__)

# The columns each stamp vouches for: kept only from a file stamped like the new one.
STAMPED_COLUMNS = {SCORES_METADATA_KEY: SCORE_COLUMNS, JUDGE_METADATA_KEY: JUDGE_COLUMNS}


@dataclass
class Carry:
    """What a shard captioned again may keep: `previous`, its own earlier output (read when the
    shard starts); `borrowed`, neighbouring slices' rows of its images (read at planning, before
    any slice is rewritten); `stamps`, each source file's score and judge stamps."""

    output: str
    previous: str | None
    borrowed: list[tuple[str, dict]] = field(default_factory=list)  # (source shard, row)
    stamps: dict[str, dict[bytes, dict]] = field(default_factory=dict)

    def rows(self) -> dict[tuple, tuple[str, dict]]:
        """(url, sha256, original caption) -> (source shard, row), for the ok rows of the sources."""
        found = dict(self._by_image(self.borrowed))
        if self.previous is not None:
            table = _ok_rows(OutputDir(self.output), self.previous)
            found.update(self._by_image((self.previous, row) for row in table.to_pylist()))
        return found

    @staticmethod
    def _by_image(rows):
        for source, row in rows:
            yield (row["url"], row["sha256"], row["org_caption"]), (source, row)

    def targets(self, scoring: dict | None) -> dict[bytes, dict]:
        """The new file's stamp of each kind: the run's scorer's, else the earlier file's."""
        order = [n for n in (self.previous, *sorted(self.stamps)) if n is not None]
        first = self.stamps.get(order[0], {}) if order else {}
        targets = {key: first.get(key, {}) for key in STAMPED_COLUMNS}
        if scoring is not None:
            targets[SCORES_METADATA_KEY] = scoring
        return targets

    def metadata(self, targets: dict[bytes, dict], scoring: bool) -> dict[bytes, dict]:
        """The new file's stamps, partial unless every row is sure to have what it vouches for."""
        stamps = {}
        for key, target in targets.items():
            if not target:
                continue
            fresh = scoring and key == SCORES_METADATA_KEY
            had = [s.get(key, {}) for s in self.stamps.values()]
            same = all(stamp_identity(h) == stamp_identity(target) and not h.get(PARTIAL) for h in had)
            stamps[key] = target if fresh and same else {**target, PARTIAL: True}
        return stamps

    def row(self, sample: Sample, targets: dict[bytes, dict]) -> dict:
        """A carried sample's kept row, under its new key, values of unshared stamps cleared."""
        source, row = sample.carried
        row = {**row, "key": sample.key}
        for key, columns in STAMPED_COLUMNS.items():
            if stamp_identity(self.stamps.get(source, {}).get(key, {})) != stamp_identity(targets[key]):
                row.update(dict.fromkeys(columns))
        return row


def attach_carry(out: OutputDir, todo: list[Shard], every: list[Shard]) -> None:
    """Give each shard of `todo` what it may keep (`shard.carry`): its earlier rows, and for a
    folder slice its neighbours' rows of its images."""
    done = {s.name for s in every if out.is_done(s.name)}
    slices = [s for s in every if isinstance(s, FolderShard)]
    for shard in todo:
        previous = shard.name if shard.name in done and out.fs.exists(out.parquet(shard.name)) else None
        changed = previous and input_change(shard, out.done_provenance(previous) or {})
        if changed and not isinstance(shard, FolderShard):
            # A tar's or parquet's sha256 may be the metadata's, not the bytes captioned: only
            # a folder slice hashes the very bytes, so a changed file keeps nothing.
            previous = None
        borrowed: list[tuple[str, dict]] = []
        if isinstance(shard, FolderShard):
            borrowed = _borrowed(out, shard, [n for n in _neighbours(shard, slices) if n in done])
        if previous is None and not borrowed:
            continue
        sources = {previous, *(name for name, _ in borrowed)} - {None}
        shard.carry = Carry(out.url, previous, borrowed, {n: _stamps(out, n) for n in sources})


def carried_sample(sample: Sample, rows: dict[tuple, tuple[str, dict]]) -> bool:
    """Mark `sample` carried when an earlier ok row is of the same image and caption."""
    if not rows:
        return False
    match = rows.get((strip_url_secrets(sample.url), sample.sha256, sample.org_caption))
    if match is None or not sample.ok or sample.sha256 is None:
        return False
    sample.carried = match
    sample.image_bytes = None  # never decoded: the row is written as it was
    return True


def _neighbours(shard: FolderShard, slices: list[FolderShard]) -> list[str]:
    """The slices just before and after `shard` in the same folder."""
    same_folder = sorted(s.name for s in slices if s.root == shard.root and s.fs == shard.fs)
    at = same_folder.index(shard.name)
    return [same_folder[i] for i in (at - 1, at + 1) if 0 <= i < len(same_folder)]


def _borrowed(out: OutputDir, shard: FolderShard, names: list[str]) -> list[tuple[str, dict]]:
    """The ok rows of `names` whose image is one of this slice's now."""
    if not names:
        return []
    urls = pa.array([strip_url_secrets(full_url(shard.fs, f.path)) for f in shard.images])
    rows = []
    for name in names:
        table = _ok_rows(out, name)
        rows += [(name, r) for r in table.filter(pc.is_in(table.column("url"), urls)).to_pylist()]
    return rows


def _ok_rows(out: OutputDir, name: str) -> pa.Table:
    """The ok rows of a finished shard; none when its file cannot be read (it is redone whole)."""
    try:
        with out.open(out.parquet(name)) as f:
            table = pq.read_table(f)
    except (OSError, pa.ArrowInvalid) as exc:
        log.warning("%s: earlier rows not kept (%s)", name, exc)
        return pa.table({"url": pa.array([], pa.string()), "status": pa.array([], pa.string())})
    return table.filter(pc.equal(table.column("status"), OK))


def _stamps(out: OutputDir, name: str) -> dict[bytes, dict]:
    return {key: file_stamp(out, name, key) for key in STAMPED_COLUMNS}
