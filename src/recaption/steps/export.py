"""`recap export OUT -o WDS --caption re_caption|org_caption|mix:...`: a caption output folder as
WebDataset tars, the bridge to any trainer; what each shard's files hold: docs/recipes.md.
(Named webdataset_export, not export: `recaption.export` is the API function.)
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import posixpath
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from ..quality.outputs import (
    done_shards,
    first_schema,
    input_shard,
    over_finished,
    read_output,
    recorded_columns,
    recorded_sources,
    shard_lines,
    shard_stats,
)
from ..readers import PARQUET_SUFFIXES, TAR_SUFFIXES, ColumnConfig, discover_shards
from ..readers.base import Shard
from ..samples.tars import TarShardWriter, member_key
from ..schema import NOT_CAPTIONS
from ..spine import __version__
from ..spine.contract import Step, is_output_failure, location, marker_has
from ..spine.errors import RecaptionError
from ..spine.ledger import OutputDir, ShardCommit
from ..spine.results import DONE, FAILED, SKIPPED, RunSummary, ShardResult, error_text
from ..training.captions import CaptionMix, MixError, keyed_draw

log = logging.getLogger(__name__)

ORIGINAL, RECAPTION = "org_caption", "re_caption"
# Why a row is not in the tar.
STATUS_NOT_OK = "status_not_ok"  # the row has no caption to train on (its image failed, ...)
NO_CAPTION = "no_caption"  # the chosen caption is null or blank
IMAGE_NOT_FOUND = "image_not_found"  # no sample of that key in the input shard
UNREADABLE_IMAGE = "unreadable_image"  # the input has the key, but no image bytes of a known format
DUPLICATE_KEY = "duplicate_key"  # a second row of the same key in one output shard
IMAGE_MISMATCH = "image_mismatch"  # the image under the key is not the one captioned (same_image)
# Readable, but too large a side for --format (JPEG: 65,500 px; WebP: 16,383): png or keep export it.
TOO_LARGE_FOR_FORMAT = "too_large_for_format"
REASONS = (STATUS_NOT_OK, NO_CAPTION, IMAGE_NOT_FOUND, UNREADABLE_IMAGE, DUPLICATE_KEY, IMAGE_MISMATCH,
           TOO_LARGE_FOR_FORMAT)


# What `recap export` writes (the output contract): WebDataset tars whose markers record the
# caption choice and the sample count (exports made before --format kept each image's own bytes).
EXPORT = Step("export", recognise=marker_has("caption", "samples"), added_later={"format": "keep"})


class ExportError(RecaptionError, ValueError):
    """`recap export` cannot run as asked (its destination, or what is already there)."""


class CaptionChoiceError(ExportError):
    """--caption names no string column of the output, or a malformed mix."""


@dataclass(frozen=True)
class CaptionChoice:
    """Which caption a sample's .txt holds: one column, or a mix of columns."""

    spec: str
    column: str | None = None
    mix: CaptionMix | None = None

    @classmethod
    def parse(cls, spec: str) -> CaptionChoice:
        spec = (spec or "").strip()
        if spec.startswith("mix"):
            try:
                mix = CaptionMix.parse(spec, "--caption")
            except MixError as exc:
                raise CaptionChoiceError(str(exc)) from None
            return cls(mix.spec, mix=mix)
        if not spec:
            raise CaptionChoiceError("--caption is empty: give re_caption, org_caption, another text column "
                                     "or mix:COLUMN=P,...")
        return cls(spec, column=spec)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.mix.columns if self.mix is not None else (self.column,)

    def check(self, schema: pa.Schema, where: str) -> None:
        """CaptionChoiceError unless the columns it reads are string columns of `schema`."""
        strings = [f.name for f in schema if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
                   and f.name not in NOT_CAPTIONS]
        missing = [c for c in self.columns if c not in strings]
        if missing:
            raise CaptionChoiceError(f"--caption {self.spec}: {where} has no text column {', '.join(missing)}"
                                     f"; its text columns: {', '.join(strings)} (or a mix:COLUMN=P,... of "
                                     "them)")

    def pick(self, row: dict, seed: int) -> tuple[str | None, str, bool]:
        """(text, the column it came from, whether a mix fell back to the other caption)."""
        if self.column is not None:
            return row.get(self.column), self.column, False
        return self.mix.pick(row, keyed_draw(row["key"], seed))


def takes_original(key: str | None, p: float, seed: int) -> bool:
    """The paper's mix's draw for one sample: fixed by (seed, key), true with probability p."""
    return keyed_draw(key, seed) < p


# -- image formats and tar keys ---------------------------------------------------------------------

_SIGNATURES = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"),
               (b"GIF89a", "gif"), (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
               (b"qoif", "qoi"))
_PIL_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
                "DIB": "bmp", "TIFF": "tiff", "AVIF": "avif", "HEIF": "heic", "JPEG2000": "jp2",
                "PPM": "ppm", "QOI": "qoi", "TGA": "tga"}


def image_extension(data: bytes | None) -> str | None:
    """The file extension of an image's format from its bytes (jpg, png, webp, ...), None if no
    known format: from the signature, else from Pillow's header parse (no pixels decoded)."""
    if not data:
        return None
    for signature, ext in _SIGNATURES:
        if data.startswith(signature):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis"):
            return "heic"
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return _PIL_FORMATS.get(img.format or "")
    except Exception:  # not an image Pillow knows, or one over its pixel limit: no format
        return None


IMAGE_FORMATS = ("jpg", "png", "webp", "keep")
_PIL_SAVE = {"jpg": ("JPEG", {"quality": 95}), "png": ("PNG", {}), "webp": ("WEBP", {"quality": 95})}
_MAX_SIDE = {"jpg": 65500, "webp": 16383}  # checked first: libjpeg would also print to stderr
_ORIENTATION = 0x0112  # EXIF tag: how the stored pixels must be turned to stand upright


def exported_image(data: bytes | None, format: str) -> tuple[bytes | None, str | None]:
    """(bytes, extension) of an image as exported: `keep` its own bytes; otherwise `format`, with
    the EXIF orientation applied (the pixels stand as they were captioned, for readers that
    ignore EXIF). An image already in `format` and upright keeps its bytes. (None, None): not an
    image Pillow can read; (None, TOO_LARGE_FOR_FORMAT): one `format` cannot hold."""
    ext = image_extension(data)
    if format == "keep" or ext is None:
        return data, ext
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                if ext == format and img.getexif().get(_ORIENTATION, 1) == 1:
                    return data, ext
                upright = ImageOps.exif_transpose(img)
                if max(upright.size) > _MAX_SIDE.get(format, max(upright.size)):
                    return None, TOO_LARGE_FOR_FORMAT
                alpha = format != "jpg" and ("A" in upright.getbands() or "transparency" in upright.info)
                upright = upright.convert("RGBA" if alpha else "RGB")
                buffer = io.BytesIO()
                fmt, options = _PIL_SAVE[format]
                upright.save(buffer, fmt, **options)
    except Exception:  # truncated or over Pillow's limits: not exported, counted
        return None, None
    return buffer.getvalue(), format


def same_image(sha256: str | None, sample, trust_claim: bool) -> bool:
    """Whether `sample`'s image is the one a row with this sha256 was captioned from: its bytes hash
    to it, or (`trust_claim`: read from the input captioning recorded) the sha256 that input states
    is it; --images are judged by their bytes alone (docs/security.md). No sha256: nothing to check."""
    if not sha256:
        return True
    if hashlib.sha256(sample.image_bytes or b"").hexdigest() == sha256:
        return True
    return trust_claim and sample.sha256 == sha256


class TarKeys:
    """Member-name keys for one tar (samples.tars.member_key: '/', '.', control characters
    become '_'); a key that then collides with an earlier one gets `_1`, `_2`, ..."""

    def __init__(self):
        self.used: set[str] = set()
        self.renamed = 0

    def __call__(self, key: str) -> str:
        safe = member_key(key)
        candidate, n = safe, 0
        while candidate in self.used:
            n += 1
            candidate = f"{safe}_{n}"
        self.used.add(candidate)
        self.renamed += candidate != key
        return candidate


# -- summary ----------------------------------------------------------------------------------------


EXPORTED = "exported"  # a shard result's rows by what happened: exported, or a reason (REASONS) not


def not_exported(result: ShardResult | RunSummary) -> dict[str, int]:
    """Rows left out, by reason (a shard's, or the run's)."""
    return {k: v for k, v in result.status_counts.items() if k != EXPORTED and v}


def export_lines(summary: RunSummary) -> list[str]:
    """What `recap export` prints: one line per shard, then the totals."""
    lines = shard_lines(summary, "exported", lambda r: f"{r.name}: {r.status_counts.get(EXPORTED, 0)} of "
                        f"{r.counts.get('rows_in', 0)} rows{_reasons(not_exported(r))}")
    lines.append(f"exported {summary.status_counts.get(EXPORTED, 0)} of {summary.count('rows_in')} rows"
                 f"{_reasons(not_exported(summary))} with --caption {summary.settings['caption']} to "
                 f"{summary.settings['destination']}{summary.failed_note()}")
    return lines


def _reasons(counts: dict[str, int]) -> str:
    parts = [f"{reason} {counts[reason]}" for reason in sorted(counts) if counts[reason]]
    return f" (not exported: {', '.join(parts)})" if parts else ""


# -- the export -------------------------------------------------------------------------------------


def export(output: str, destination: str, *, images: list[str] | None = None, caption: str = RECAPTION,
           seed: int = 0, overwrite: bool = False, format: str = "jpg") -> RunSummary:
    """Write each finished shard of caption output `output` as a WebDataset tar in `destination`
    (holding its lock; `output` and the images are only read). A shard whose images cannot be read
    is in `summary.failed` and the others still export; each shard's `status_counts` hold its rows
    by what happened (`exported`, or the reason not), `counts["rows_in"]` the rows read.
    Raises CaptionChoiceError, ExportError (a destination that is `output` or holds shards exported
    otherwise, without `overwrite`), NoOutputError, or InputError (`images` match no shards)."""
    choice = CaptionChoice.parse(caption)
    if format not in IMAGE_FORMATS:
        raise ExportError(f"--format {format}: choose {', '.join(IMAGE_FORMATS)} (keep: each image's bytes)")
    src = OutputDir(output)
    names = done_shards(src)
    first = first_schema(src, names)
    if first is not None:
        choice.check(first[1], f"{output} shard {first[0]}")
    sources = ImageSources(src, images)
    settings = {"caption": choice.spec, "seed": seed, "format": format, "from": location(output)}
    summary = RunSummary(settings={**settings, "destination": destination})
    # The images too, and the folders their shards lie in: tars written there would be read back
    # as images by the next caption run over that folder.
    read_from = [*(images or []), *recorded_sources(src, names)]
    shard_files = [s for s in read_from if s.endswith(TAR_SUFFIXES + PARQUET_SUFFIXES)]
    inputs = [*read_from, *(posixpath.dirname(s) for s in shard_files)]
    with over_finished(output, EXPORT, destination=destination, inputs=inputs, settings=lambda _: settings,
                       overwrite=overwrite, names=names) as (src, dest, todo, done):
        summary.results += [_skipped(dest, name) for name in done]
        for name in todo:
            summary.results.append(_export_shard(src, dest, name, choice, seed, sources, settings, images))
    summary.results.sort(key=lambda r: r.name)
    return summary


class ImageSources:
    """Where a caption shard's images are: its recorded input, or among the shards of `images`."""

    def __init__(self, src: OutputDir, images: list[str] | None):
        self.src, self.images = src, images
        self._discover: Callable[[ColumnConfig], list[Shard]] = functools.cache(
            lambda columns: discover_shards(list(images), columns))
        if images is not None:
            self._discover(ColumnConfig())  # images that match nothing: said now, in one line

    def for_shard(self, name: str) -> tuple[list[Shard], bool]:
        """(shards to read, whether that is one matched shard: reading may stop once every row
        has its image)."""
        if self.images is None:
            return [input_shard(self.src, name)], True
        with self.src.open(self.src.stats(name), "r") as f:
            shards = self._discover(recorded_columns(json.load(f)))  # the input as read when captioned
        same = [s for s in shards if s.name == name]
        if not same:
            log.warning("%s: no shard of that name among the images given; looking for its keys in all %d",
                        name, len(shards))
        return same or shards, bool(same)


def _skipped(dest: OutputDir, name: str) -> ShardResult:
    stats = shard_stats(dest, name)
    return _result(name, SKIPPED, stats.get("rows", 0), stats.get(EXPORTED, 0), stats.get("not_exported", {}))


def _result(name: str, outcome: str, rows: int, exported: int, reasons: dict[str, int]) -> ShardResult:
    return ShardResult(name, name, outcome, rows, {EXPORTED: exported, **reasons}, counts={"rows_in": rows})


def _row_columns(schema: pa.Schema, choice: CaptionChoice) -> list[str]:
    wanted = ["key", "status", "url", "sha256", ORIGINAL, RECAPTION, "re_clip_score", "org_clip_score",
              *choice.columns]
    wanted += [f.name for f in schema if f.name.startswith("re_caption") and pa.types.is_string(f.type)]
    return [c for c in dict.fromkeys(wanted) if c in schema.names]


def _meta(row: dict, key: str, source: str) -> dict:
    meta = {"key": key, "url": row.get("url"), "sha256": row.get("sha256"),
            ORIGINAL: row.get(ORIGINAL), RECAPTION: row.get(RECAPTION)}
    meta.update({c: v for c, v in row.items() if c.startswith("re_caption") and c not in meta})
    meta.update({c: row[c] for c in ("re_clip_score", "org_clip_score") if c in row})
    meta["caption_source"] = source
    return meta


def _export_shard(src: OutputDir, dest: OutputDir, name: str, choice: CaptionChoice, seed: int,
                  sources: ImageSources, settings: dict, images: list[str] | None) -> ShardResult:
    tar = dest.path(f"{name}.tar")
    # The ledger's commit: an earlier export of the shard (--overwrite) stays until this one is
    # complete; a failure or an interrupt leaves it as it was.
    with ShardCommit(dest, name) as commit:
        try:
            table = read_output(src, name)
            choice.check(table.schema, f"shard {name}")
            rows = table.select(_row_columns(table.schema, choice)).to_pylist()
            reasons: Counter = Counter()
            picked_from: Counter = Counter()
            fallbacks = 0
            wanted: dict[str, tuple[dict, str, str, bool]] = {}
            for row in rows:
                if row.get("status", "ok") != "ok":
                    reasons[STATUS_NOT_OK] += 1
                    continue
                text, column, fell_back = choice.pick(row, seed)
                if text is None or not text.strip():
                    reasons[NO_CAPTION] += 1
                elif row["key"] is None:
                    reasons[IMAGE_NOT_FOUND] += 1
                elif row["key"] in wanted:
                    reasons[DUPLICATE_KEY] += 1
                else:
                    wanted[row["key"]] = (row, text, column, fell_back)
            shards, matched = sources.for_shard(name)
            writer = TarShardWriter.into(commit.open("tar"))
            keys = TarKeys()
            for shard in shards:
                if matched and not wanted:
                    break
                with closing(iter(shard)) as samples:
                    for sample in samples:
                        entry = wanted.pop(sample.key, None)
                        if entry is None:
                            continue
                        row, text, column, fell_back = entry
                        if not same_image(row.get("sha256"), sample, trust_claim=images is None):
                            reasons[IMAGE_MISMATCH] += 1
                            continue
                        image, ext = exported_image(sample.image_bytes, settings["format"])
                        if image is None or ext is None:
                            too_large = ext == TOO_LARGE_FOR_FORMAT
                            reasons[TOO_LARGE_FOR_FORMAT if too_large else UNREADABLE_IMAGE] += 1
                            continue
                        meta = json.dumps(_meta(row, sample.key, column), ensure_ascii=False)
                        writer.add(keys(sample.key), {ext: image, "txt": text.encode("utf-8"),
                                                      "json": meta.encode("utf-8")})
                        picked_from[column] += 1
                        fallbacks += fell_back
                        if matched and not wanted:
                            break  # every row has its image: the rest of the shard is not read
            reasons[IMAGE_NOT_FOUND] += len(wanted)
            writer.close()
        except Exception as exc:  # a missing or broken input shard, a changed folder: say which, go on
            if is_output_failure(exc, dest.url):
                raise
            log.info("cannot export %s: %s", name, exc)  # reported by the summary (FAILED)
            return ShardResult(name, name, FAILED, error=error_text(exc))
        reasons_not = {r: reasons[r] for r in REASONS if reasons[r]}
        stats = {"shard": name, "output": settings["from"], "images_from": [s.source for s in shards],
                 "caption": choice.spec, "seed": seed, "rows": len(rows), "exported": writer.samples,
                 "not_exported": reasons_not, "caption_sources": dict(sorted(picked_from.items())),
                 "mix_fallbacks": fallbacks if choice.column is None else None, "keys_renamed": keys.renamed,
                 "tar": tar, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        commit.commit(stats, {**settings, "images": images, "samples": writer.samples,
                              "recaption_version": __version__})
    return _result(name, DONE, len(rows), writer.samples, reasons_not)
