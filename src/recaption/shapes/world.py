"""The shapes world: seeded, deterministic images of 1-4 coloured shapes, with

  description  the full truth, objects in reading order:
               "a large red circle in the top left and a small blue square in the center"
  alt_text     web-like and noisy: ONE object only, and
                 - its colour wrong with probability WRONG_COLOUR_RATE (0.25),
                 - its colour left out with probability NO_COLOUR_RATE (0.2),
                 - unrelated words added with probability JUNK_RATE (0.3) ("stock photo", ...)
  label        "{colour} {shape}" of the first object in reading order (24 classes), for
               zero-shot classification

Sample i of a world depends only on (seed, i), so any split into shards gives the same samples.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from ..spine.atomic import TMP_SUFFIX
from ..spine.contract import Step, open_output
from ..spine.errors import RecaptionError

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (240, 210, 20),
           "purple": (140, 40, 170), "orange": (245, 130, 20)}
SIZES = {"small": 0.1, "large": 0.17}  # radius as a share of the side; neighbours never touch
# Cells in reading order, as (name, centre x, centre y) in image-side units.
CELLS = (("top left", 0.25, 0.25), ("top right", 0.75, 0.25), ("center", 0.5, 0.5),
         ("bottom left", 0.25, 0.75), ("bottom right", 0.75, 0.75))
WRONG_COLOUR_RATE = 0.25
NO_COLOUR_RATE = 0.2
JUNK_RATE = 0.3
JUNK = ("stock photo", "free download", "hd wallpaper", "best price", "image", "clipart", "vector art",
        "high quality", "buy now", "royalty free")
CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)


@dataclass
class ShapeObject:
    shape: str
    colour: str
    size: str
    position: str

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} in the {self.position}"


@dataclass
class ShapeSample:
    index: int
    image: bytes  # PNG
    objects: list[ShapeObject]
    description: str
    alt_text: str
    label: str
    extra: dict = field(default_factory=dict)


def describe(objects: list[ShapeObject]) -> str:
    phrases = [o.phrase() for o in objects]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    """`shape` centred at (x, y) with radius r, as the world draws it (the checker too)."""
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        draw.rectangle((x - r * 0.85, y - r * 0.85, x + r * 0.85, y + r * 0.85), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)
    else:  # diamond
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)


class ShapesWorld:
    def __init__(self, seed: int = 0, image_size: int = 64):
        self.seed = seed
        self.image_size = image_size

    def sample(self, index: int) -> ShapeSample:
        rng = random.Random(f"shapes:{self.seed}:{index}")
        cells = sorted(rng.sample(range(len(CELLS)), rng.randint(1, 4)))
        objects = [ShapeObject(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES)),
                               CELLS[c][0]) for c in cells]
        image = self._draw(objects, rng)
        return ShapeSample(index, image, objects, describe(objects), self._alt_text(objects, rng),
                           f"{objects[0].colour} {objects[0].shape}")

    def _draw(self, objects: list[ShapeObject], rng: random.Random) -> bytes:
        scale = 4  # draw large, then shrink: smooth edges, same pixels every time
        side = self.image_size * scale
        tint = tuple(rng.randint(225, 255) for _ in range(3))
        canvas = Image.new("RGB", (side, side), tint)
        draw = ImageDraw.Draw(canvas)
        for obj in objects:
            _, cx, cy = next(c for c in CELLS if c[0] == obj.position)
            draw_shape(draw, obj.shape, cx * side, cy * side, SIZES[obj.size] * side, COLOURS[obj.colour])
        image = canvas.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    @staticmethod
    def _alt_text(objects: list[ShapeObject], rng: random.Random) -> str:
        obj = rng.choice(objects)
        colour = obj.colour
        if rng.random() < WRONG_COLOUR_RATE:
            colour = rng.choice([c for c in COLOURS if c != obj.colour])
        words = [obj.shape] if rng.random() < NO_COLOUR_RATE else [colour, obj.shape]
        if rng.random() < JUNK_RATE:
            words = [rng.choice(JUNK)] + words if rng.random() < 0.5 else words + [rng.choice(JUNK)]
        return " ".join(words)


def write_shapes_shards(folder: str | Path, count: int, seed: int = 0, image_size: int = 64,
                        shard_size: int = 1000, start: int = 0, overwrite: bool = False) -> list[Path]:
    """Samples start..start+count as img2dataset-layout tars: {key}.png, {key}.txt (alt-text),
    {key}.json (url, description, label, objects). `folder` must be new, empty, or hold only
    shapes-world shards; those are refused unless `overwrite`, which also removes the old set's
    shards the new one does not replace (so readers never mix two runs). Wrong values are
    refused (TrainingInputError) before anything is written."""
    _check_counts(count, image_size, shard_size, start)
    # The output contract: only a folder of shapes-world shards is adopted, one writer at a time,
    # OS errors at the output as one line.
    with open_output(str(folder), SHAPES_STEP) as dest:
        out = Path(dest.root)
        old = sorted(out.glob("*.tar"))
        if old and not overwrite:
            raise ShapesOutputError(
                f"--output {folder}: already holds {len(old)} shapes-world shard(s); give a new folder, or "
                "--overwrite to replace them"
            )
        world = ShapesWorld(seed, image_size)

        def record(index: int):
            s = world.sample(index)
            extra = {"description": s.description, "label": s.label, "objects": [vars(o) for o in s.objects]}
            return shapes_record(s, seed, s.alt_text, extra)

        paths = write_tars(out, range(start, start + count), shard_size, record)
        for stale in old:
            if stale not in paths:
                stale.unlink()
    return paths


def shapes_record(sample: ShapeSample, seed: int, caption: str, extra: dict | None = None):
    """A world sample as a shard record: its PNG, `caption`, its shapes:// url and `extra`."""
    from ..samples.shards import ShardRecord

    return ShardRecord(sample.image, caption, f"shapes://{seed}/{sample.index}", "png", extra or {})


def write_tars(folder: str | Path, items, shard_size: int, record) -> list[Path]:
    """`items` (a list or range) as img2dataset-layout tars of `shard_size` samples each
    (00000.tar, ...), `record(item)` making each one's ShardRecord."""
    from ..samples.shards import write_webdataset_shard

    paths = []
    for shard_id, first in enumerate(range(0, len(items), shard_size)):
        paths.append(Path(folder) / f"{shard_id:05d}.tar")
        records = [record(item) for item in items[first : first + shard_size]]
        write_webdataset_shard(paths[-1], records, shard_id=shard_id)
    return paths


MIN_IMAGE_SIZE = 8  # below this the shapes are a pixel or two: nothing to caption or check
MAX_IMAGE_SIZE = 2048


class ShapesOutputError(RecaptionError, ValueError):
    """`recap shapes` cannot write as asked (a wrong count, a folder of earlier shards)."""


def _check_counts(count: int, image_size: int, shard_size: int, start: int) -> None:
    for name, value, least in (("images", count, 1), ("image-size", image_size, MIN_IMAGE_SIZE),
                               ("shard-size", shard_size, 1), ("start", start, 0)):
        if value < least:
            raise ShapesOutputError(f"--{name} {value}: must be at least {least}")
    if image_size > MAX_IMAGE_SIZE:  # drawn at 4x, then shrunk: 2048 is a 200 MB canvas
        raise ShapesOutputError(f"--image-size {image_size}: must be at most {MAX_IMAGE_SIZE}")


def only_shapes_shards(out) -> bool:
    """The folder holds shapes-world shards and nothing else (visible)."""
    present = [p for p in Path(out.root).iterdir()
               if not p.name.startswith(".") and not p.name.endswith(TMP_SUFFIX)]  # a crash's leftovers
    return all(p.suffix == ".tar" and _is_shapes_shard(p) for p in present)


# What `recap shapes` writes (the output contract): a folder of shapes-world shards only.
SHAPES_STEP = Step("shapes", recognise=only_shapes_shards, always_recognise=True)


def _is_shapes_shard(path: Path) -> bool:
    """A tar whose first sample's json has a shapes:// url (what write_shapes_shards writes)."""
    import json
    import tarfile

    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    return str(json.loads(tar.extractfile(member).read()).get("url", "")).startswith("shapes://")
    except (OSError, tarfile.TarError, ValueError, AttributeError):
        return False
    return False
