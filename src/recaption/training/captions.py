"""Which captions a training sample offers: the one rule train-clip, train-captioner and
train-dit share (docs/recipes.md), and `CaptionMix`, the draw of one of them per sample.

A sample offers an original caption and, where the data has one, a recaption: an export's .json
holds both, caption output its rows, other shards the json field or column `--recaption-field`
names. A mix that asks for recaptions of data that has none is refused before training.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..readers import pattern_places
from ..samples.sample import Sample, as_text
from ..schema import NOT_CAPTIONS
from ..spine.contract import read_stamp
from ..spine.ledger import OutputDir
from .inputs import TrainingInputError, shard_errors

EXPORT_MARK = "caption_source"  # a field every `recap export` .json has
ORIGINAL, RECAPTION = "org_caption", "re_caption"


def reader_fields(recaption_field: str | None, caption_field: str | None = None,
                  columns: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The json fields / columns a reader must hand over for `offered_captions`."""
    fields = (EXPORT_MARK, ORIGINAL, RECAPTION, recaption_field, caption_field, *columns)
    return tuple(dict.fromkeys(f for f in fields if f))


def offered(sample: Sample, recaption_field: str | None = None,
            caption_field: str | None = None) -> tuple[str | None, str | None]:
    """(original caption, recaption) of one sample, by the rule above."""
    captions = offered_captions(sample, (ORIGINAL, RECAPTION), recaption_field, caption_field)
    return captions[ORIGINAL], captions[RECAPTION]


def offered_captions(sample: Sample, columns: tuple[str, ...], recaption_field: str | None = None,
                     caption_field: str | None = None) -> dict[str, str | None]:
    """Each of `columns` as this sample offers it (None: it has none); a field the user named
    (`caption_field`, read into sample.org_caption by the reader) wins over the export's."""
    extra = sample.extra
    exported = extra.get(EXPORT_MARK) is not None
    captions: dict[str, str | None] = {}
    for column in columns:
        if column == ORIGINAL:
            text = as_text(extra.get(ORIGINAL)) if exported and not caption_field else sample.org_caption
        elif column == RECAPTION:
            field = recaption_field or (RECAPTION if exported else None)
            text = as_text(extra.get(field)) if field else None
        else:
            text = as_text(extra.get(column))
        captions[column] = text
    return captions


class MixError(TrainingInputError):
    """A caption mix that is malformed, or names columns the data does not have."""


_MIX_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_EXAMPLE = "mix:re_caption=0.5,org_caption=0.3,re_caption_short=0.2"


def _exact(weight: float) -> str:
    """A weight as a spec shows it: short (`0.5`, `1`), but reading back as the same float."""
    short = f"{weight:g}"
    return short if float(short) == weight else repr(weight)


@dataclass(frozen=True)
class CaptionMix:
    """Which caption a sample uses: column i with probability weights[i] (docs/recipes.md)."""

    spec: str  # as recorded (exports' markers, trainers' settings)
    weights: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, spec: str, option: str = "--mix") -> CaptionMix:
        """`mix:COL=W,COL=W,...` (the `mix:` prefix optional) or `mix:p=P`; MixError (one line,
        naming the fix) for anything else."""
        text = str(spec or "").strip().replace(" ", "")
        spec = spec if str(spec).isprintable() else repr(spec)  # a message stays one line
        body = "" if text == "mix" else text.removeprefix("mix:")
        usage = (f"{option} {spec}: write mix:p=P with P in [0, 1] (the original caption with probability "
                 f"P, else the recaption), or probabilities of text columns summing to 1, e.g. {_EXAMPLE}")
        if body.startswith("p="):
            p = _number(body[2:])
            if p is None or not 0.0 <= p <= 1.0:
                raise MixError(usage)
            return cls(f"mix:p={p:g}", ((ORIGINAL, p), (RECAPTION, 1.0 - p)))
        weights: list[tuple[str, float]] = []
        for part in filter(None, body.split(",")):
            column, sep, value = part.partition("=")
            weight = _number(value) if sep else None
            if not _MIX_COLUMN.match(column) or weight is None:
                raise MixError(usage)
            if not 0.0 <= weight <= 1.0:
                raise MixError(f"{option} {spec}: {column}={value}: a weight is a probability in [0, 1]")
            if column in dict(weights):
                raise MixError(f"{option} {spec}: {column} is named twice; give each column once")
            weights.append((column, weight))
        if not weights:
            raise MixError(usage)
        total = math.fsum(w for _, w in weights)
        if abs(total - 1.0) > 1e-6:
            raise MixError(f"{option} {spec}: the probabilities sum to {total:.9g}, not 1; make them sum "
                           f"to 1 (e.g. {_EXAMPLE})")
        return cls("mix:" + ",".join(f"{c}={_exact(w)}" for c, w in weights), tuple(weights))

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.weights)

    def draw(self, u: float) -> str:
        """The column a uniform draw u in [0, 1) picks (cumulative, in the mix's order)."""
        edge = 0.0
        for column, weight in self.weights:
            edge += weight
            if u < edge:
                return column
        return next(c for c, w in reversed(self.weights) if w > 0)

    def pick(self, captions: Mapping[str, str | None], u: float) -> tuple[str | None, str, bool]:
        """(text, the column it came from, whether it fell back): the drawn column's caption; where
        that is blank, the first other column of the mix (in its order) that is not."""
        column = self.draw(u)
        if not _blank(captions.get(column)):
            return captions[column], column, False
        other = next((c for c in self.columns if c != column and not _blank(captions.get(c))), None)
        if other is None:
            return captions.get(column), column, False
        return captions[other], other, True

    def choose(self, org: str | None, re: str | None, more: dict, u: float) -> tuple[str, str]:
        """(the caption a trainer's sample uses, its column; "COLUMN (fallback)" when the drawn was blank)."""
        text, column, fell_back = self.pick({ORIGINAL: org, RECAPTION: re, **more}, u)
        return text or "", f"{column} (fallback)" if fell_back else column


def keyed_draw(key: str | None, seed: int) -> float:
    """A uniform draw in [0, 1) fixed by (seed, key): an export writes the same caption on a rerun."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _blank(text: str | None) -> bool:
    return text is None or not str(text).strip()


def _caption_schema(path: str):
    """The schema of a folder's first finished shard that reads (None: no such shard); its files
    opened the one safe way (a FIFO is skipped, never waited on)."""
    from ..quality.outputs import first_schema
    from ..spine.ledger import OutputDir

    out = OutputDir(path)
    found = first_schema(out, out.done_names())
    return found[1] if found else None


def is_caption_output(path: str) -> bool:
    """A `recap caption` output folder (parquet with re_caption beside .done markers)."""
    if not Path(path).is_dir() or not list(Path(path).glob("*.done")):
        return False
    schema = _caption_schema(path)
    return schema is not None and "re_caption" in schema.names


def is_export(place: str) -> bool:
    """A `recap export` folder (its stamp, or older exports' markers), or a file inside one."""
    folder = Path(place)
    folder = folder if folder.is_dir() else folder.parent
    if not folder.is_dir():
        return False
    out = OutputDir(str(folder))
    stamp = read_stamp(out)
    if stamp is not None:
        return stamp["step"] == "export"
    marker = next((out.done_provenance(n) for n in out.done_names()), None)
    return isinstance(marker, dict) and {"caption", "samples"} <= marker.keys()


def has_recaptions(item: str, recaption_field: str | None) -> bool:
    """Whether a DATA item offers recaptions, unread: a named field, caption output, or an export."""
    if recaption_field:
        return True  # checked on the samples themselves (require_fields)
    places = pattern_places([item])
    return all(is_caption_output(p) or is_export(p) for p in places)


def check_mix_settings(config) -> None:
    """A trainer config's p and data checked (ValueError), its --mix in the form it is recorded in."""
    if not 0.0 <= config.p <= 1.0:
        raise ValueError("p must be in [0, 1]")
    if not config.data:
        raise ValueError("no data given")
    if config.mix is not None:
        config.mix = CaptionMix.parse(config.mix).spec  # MixError: one line naming the form


def check_caption_sources(data: list[str], p: float, recaption_field: str | None, mix: str | None = None,
                          caption_field: str | None = None, uses: str | None = None) -> CaptionMix | None:
    """Refuse a mix the data cannot give, before streaming; returns the parsed `mix` (or None)."""
    if mix:
        parsed = CaptionMix.parse(mix)
        check_mix_columns(data, parsed, recaption_field, caption_field)
        return parsed
    check_mix(data, p, recaption_field, uses)
    return None


def check_mix(data: list[str], p: float, recaption_field: str | None, uses: str | None = None) -> None:
    """Refuse, in one line, a mix the data cannot give: p < 1 needs recaptions, and so does a
    recipe that `uses` them whatever p is (`--concat`, `--recipe clips`: named in the message)."""
    if p >= 1 and uses is None:
        return
    lacking = [item for item in data if not has_recaptions(str(item), recaption_field)]
    if lacking:
        why = uses or f"p={p:g} trains on recaptions {1 - p:.0%} of the time"
        way_out = "" if uses else "; or --p 1"
        raise TrainingInputError(f"{why}, but {', '.join(map(str, lacking))} offers none: give `recap "
                                 "caption` output, a `recap export` folder, or --recaption-field (the json "
                                 "field or column holding them; the shapes world's shards: "
                                 f"description){way_out}")


def check_mix_columns(data: list[str], mix: CaptionMix, recaption_field: str | None = None,
                      caption_field: str | None = None, look: int = 64) -> None:
    """Refuse, in one line, a mix naming a column some item of DATA does not offer: caption output
    by its parquet schema, other data by its first `look` samples."""
    for item in data:
        item = str(item)
        if is_caption_output(item):
            import pyarrow as pa

            have = {f.name for f in _caption_schema(item) if pa.types.is_string(f.type)
                    or pa.types.is_large_string(f.type)} - NOT_CAPTIONS  # caption columns, as export takes
            missing = [c for c in mix.columns if c not in have]
        else:
            missing = _missing_in_samples(item, mix.columns, recaption_field, caption_field, look)
        if missing:
            raise MixError(f"{mix.spec}: {item} offers no {', '.join(missing)}; name the caption columns it "
                           "has (recap stats lists a caption output's), or caption it with that pass first")


def _missing_in_samples(item: str, columns: tuple[str, ...], recaption_field: str | None,
                        caption_field: str | None, look: int) -> list[str]:
    from ..readers import ColumnConfig, discover_shards

    extra = reader_fields(recaption_field, caption_field, columns)
    missing = list(columns)
    with shard_errors():
        for shard in discover_shards([item], ColumnConfig(caption=caption_field, extra=extra),
                                     writes_by_name=False)[:1]:
            for seen, sample in enumerate(shard):
                if seen >= look or not missing:
                    break
                if sample.ok:
                    captions = offered_captions(sample, tuple(missing), recaption_field, caption_field)
                    missing = [c for c in missing if _blank(captions[c])]
    return missing
