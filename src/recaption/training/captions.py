"""Which captions a training sample offers: the one rule train-clip, train-captioner and
train-dit share.

A sample offers an original caption (the alt-text) and, where the data has one, a recaption:
- a `recap export` tar: its `.json` holds both (`org_caption`, `re_caption` and every pass
  column; `caption_source` marks the export), whatever the `.txt` was chosen to hold;
- `recap caption` output: its rows (joined by key to the images, stream_sources);
- other shards: the shard's caption, and the recaption in the json field or column the user
  names (`--recaption-field`).
A mix that asks for recaptions (p < 1) of data that has none is refused before training
(`check_mix`), never trained silently on alt-text alone.
"""

from __future__ import annotations

from pathlib import Path

from ..readers import pattern_places
from ..samples.sample import Sample, as_text
from ..spine.contract import read_stamp
from ..spine.ledger import OutputDir
from .inputs import TrainingInputError

EXPORT_MARK = "caption_source"  # a field every `recap export` .json has
ORIGINAL, RECAPTION = "org_caption", "re_caption"


def reader_fields(recaption_field: str | None, caption_field: str | None = None) -> tuple[str, ...]:
    """The json fields / columns a reader must hand over for `offered` (and the named fields)."""
    fields = (EXPORT_MARK, ORIGINAL, RECAPTION, recaption_field, caption_field)
    return tuple(dict.fromkeys(f for f in fields if f))


def offered(sample: Sample, recaption_field: str | None = None,
            caption_field: str | None = None) -> tuple[str | None, str | None]:
    """(original caption, recaption) of one sample, by the rule above; a field the user named
    (`caption_field`, read into sample.org_caption by the reader) wins over the export's."""
    extra = sample.extra
    if extra.get(EXPORT_MARK) is not None:
        original = sample.org_caption if caption_field else as_text(extra.get(ORIGINAL))
        return original, as_text(extra.get(recaption_field or RECAPTION))
    return sample.org_caption, as_text(extra.get(recaption_field)) if recaption_field else None


def is_caption_output(path: str) -> bool:
    """A `recap caption` output folder (parquet with re_caption beside .done markers)."""
    import pyarrow.parquet as pq

    folder = Path(path)
    if not folder.is_dir() or not list(folder.glob("*.done")):
        return False
    first = next(iter(sorted(folder.glob("*.parquet"))), None)
    return first is not None and "re_caption" in pq.read_schema(first).names


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
    """Whether DATA item offers recaptions without reading its samples: a named field, caption
    output, or an export."""
    if recaption_field:
        return True  # checked on the samples themselves (require_fields)
    places = pattern_places([item])
    return all(is_caption_output(p) or is_export(p) for p in places)


def check_mix(data: list[str], p: float, recaption_field: str | None, uses: str | None = None) -> None:
    """Refuse, in one line, a mix the data cannot give: p < 1 needs recaptions, and so does a
    recipe that `uses` them whatever p is (`--concat`, `--recipe clips`: named in the message)."""
    if p >= 1 and uses is None:
        return
    lacking = [item for item in data if not has_recaptions(str(item), recaption_field)]
    if lacking:
        why = uses or f"p={p:g} trains on recaptions {1 - p:.0%} of the time"
        way_out = "" if uses else "; or --p 1"
        raise TrainingInputError(
            f"{why}, but {', '.join(map(str, lacking))} offers none: give `recap caption` output, a "
            "`recap export` folder, or --recaption-field (the json field or column holding them; the "
            f"shapes world's shards: description){way_out}"
        )
