"""Compositional alignment of an image with a shapes-world prompt, with no model at all: the
shapes world knows the truth, so, as GenEval does with an object detector, find the objects by
geometry and check each thing the prompt asks for.

detect(image)            the objects in an image: segment by colour (each pixel unmixed against
                         the background along the line to each of the world's six colours, so
                         anti-aliased edges count where they are more than half covered), one
                         connected region per object; its shape from the region's geometry (fill
                         of its bounding box, vertical asymmetry), its size from its area, its
                         position the world's nearest cell
score(spec, objects)     per prompt: `present` (every asked shape is there), `colour` (each asked
                         colour is bound to the asked shape), `count` (as many of each colour-shape
                         as asked), `exact` (no objects beyond those asked), `position` (cells and
                         relations such as "above", "next to"), `size`; `all` = every one that the
                         prompt asks about. Categories a prompt does not ask about are None.
summarise(results)       rates per category, overall and by complexity (number of objects, 1-4)
validate(...)            the checker on the world's own renders (clean: all right) and on wrong
                         renders (a swapped colour, a missing object, a moved one, a resized one:
                         caught), so its numbers can be trusted before a model is scored with it

A spec is what a prompt asks for (recaption.shapes.prompts makes them; `spec_from_objects` turns a
world sample's objects into one): {"groups": [{"shape", "colour", "size" or None, "count",
"positions": [cells] or None}], "relations": [{"a": group, "rel": "above", "b": group}]}.
"""

from __future__ import annotations

import io
import itertools
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .world import CELLS, COLOURS, SHAPES, SIZES, ShapeObject, ShapesWorld, draw_shape

CATEGORIES = ("present", "colour", "count", "exact", "position", "size", "all")
RELATIONS = ("above", "below", "left of", "right of", "next to")
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_COLOUR_NAMES = tuple(COLOURS)
# Area of each shape as drawn by the world, in units of its radius squared.
_AREA = {"circle": np.pi, "square": 1.7**2, "triangle": 1.8, "diamond": 2.0}
_SIZE_SPLIT = float(np.sqrt(SIZES["small"] * SIZES["large"]))  # radius (share of the side)
MIN_AREA = 0.006  # regions smaller than this share of the image are specks, not objects
MAX_RESIDUAL = 70.0  # a pixel further than this from every colour line is nobody's


@dataclass
class Detected:
    colour: str
    shape: str
    size: str
    position: str
    cx: float  # centroid, share of the side (0 left/top, 1 right/bottom)
    cy: float
    area: float  # share of the image
    radius: float  # estimated radius, share of the side


# ---- detection ----


def _rgb(image) -> np.ndarray:
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    return np.asarray(image, dtype=np.float32)[..., :3]


def colour_labels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the index of the world colour it is (more than half) made of, or -1 for
    background; and how much of each colour it holds (H x W x 6, 0-1: the pixel unmixed as
    background + alpha x (colour - background)). The background is the median border pixel."""
    h, w, _ = pixels.shape
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    offset = pixels.reshape(-1, 1, 3) - background  # (P, 1, 3)
    direction = (_PALETTE - background)[None]  # (1, 6, 3)
    norm = np.maximum((direction**2).sum(-1), 1.0)
    alpha = np.clip((offset * direction).sum(-1) / norm, 0.0, 1.0)  # (P, 6)
    residual = np.linalg.norm(offset - alpha[..., None] * direction, axis=-1)
    residual = np.where(alpha > 0.5, residual, np.inf)
    best = residual.argmin(-1)
    ok = residual[np.arange(len(best)), best] < MAX_RESIDUAL
    return np.where(ok, best, -1).reshape(h, w), alpha.reshape(h, w, len(_PALETTE))


def _regions(labels: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Connected regions (4-neighbour) of equal non-negative label: (label, ys, xs)."""
    h, w = labels.shape
    seen = np.zeros_like(labels, dtype=bool)
    found = []
    for y0, x0 in zip(*np.nonzero(labels >= 0), strict=True):
        if seen[y0, x0]:
            continue
        label = labels[y0, x0]
        stack, ys, xs = [(y0, x0)], [], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and labels[ny, nx] == label:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        found.append((int(label), np.array(ys), np.array(xs)))
    return found


def shape_cover(shape: str, cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    """How much of each pixel (0-1) `shape` covers, drawn as the world draws it, centred at
    (cx, cy) with radius r, all in pixels."""
    from PIL import ImageDraw

    scale = 4
    canvas = Image.new("L", (width * scale, height * scale), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, cx * scale, cy * scale, r * scale, 255)
    return np.asarray(canvas, dtype=np.float32).reshape(height, scale, width, scale).mean(axis=(1, 3)) / 255


def classify_shape(cover: np.ndarray) -> tuple[str, float, float]:
    """(shape, radius in pixels, overlap) of one region's coverage map (a window around it): each
    of the four shapes is drawn with the region's area at the region's centre of mass (a
    triangle's sits 0.2 r below its centre) and the one that overlaps it best (soft IoU) wins."""
    height, width = cover.shape
    area = float(cover.sum())
    ys, xs = np.mgrid[0:height, 0:width]
    cx, cy = (cover * (xs + 0.5)).sum() / area, (cover * (ys + 0.5)).sum() / area
    best = ("circle", 0.0, -1.0)
    for shape in ("circle", "square", "triangle", "diamond"):
        r = float(np.sqrt(area / _AREA[shape]))
        drawn = shape_cover(shape, cx, cy - (0.2 * r if shape == "triangle" else 0.0), r, height, width)
        overlap = float(np.minimum(drawn, cover).sum() / max(np.maximum(drawn, cover).sum(), 1e-6))
        if overlap > best[2]:
            best = (shape, r, overlap)
    return best


def nearest_cell(cx: float, cy: float) -> str:
    return min(CELLS, key=lambda c: (c[1] - cx) ** 2 + (c[2] - cy) ** 2)[0]


def _measure(cover: np.ndarray, top: int, left: int, colour: int, height: int, width: int):
    """(Detected, overlap with its shape) of one region's coverage window at (top, left)."""
    shape, radius, overlap = classify_shape(cover)
    total = float(cover.sum())
    wy, wx = np.mgrid[top : top + cover.shape[0], left : left + cover.shape[1]]
    cx = float((cover * (wx + 0.5)).sum() / total) / width
    cy = float((cover * (wy + 0.5)).sum() / total) / height
    radius /= float(max(height, width))
    size = "large" if radius > _SIZE_SPLIT else "small"
    area = total / (height * width)
    return Detected(_COLOUR_NAMES[colour], shape, size, nearest_cell(cx, cy), cx, cy, area, radius), overlap


def detect(image, min_area: float = MIN_AREA, split_below: float = 0.85) -> list[Detected]:
    """The objects in an image (PIL image, bytes or HxWx3 array), largest first.

    Two same-coloured objects in neighbouring cells can touch (a large triangle's base corner
    reaches into the centre cell): a region that no single shape fits (overlap < split_below) is
    cut along the borders between the world's cells, and kept cut when its parts fit better."""
    pixels = _rgb(image)
    height, width = pixels.shape[:2]
    labels, alpha = colour_labels(pixels)
    gy, gx = np.mgrid[0:height, 0:width]
    centres = np.array([(c[1] * width, c[2] * height) for c in CELLS])
    distance = (gx[..., None] + 0.5 - centres[:, 0]) ** 2 + (gy[..., None] + 0.5 - centres[:, 1]) ** 2
    cell_of = distance.argmin(-1)
    found = []
    for label, ys, xs in _regions(labels):
        if len(ys) / (height * width) < min_area:
            continue
        # The region's coverage map: its colour's share of each pixel in a window around it,
        # counting pixels that are this region's or background (not another object's).
        top, left = max(ys.min() - 2, 0), max(xs.min() - 2, 0)
        bottom, right = min(ys.max() + 3, height), min(xs.max() + 3, width)
        window = labels[top:bottom, left:right]
        mine = np.zeros_like(window, dtype=bool)
        mine[ys - top, xs - left] = True
        cover = np.where(mine | (window == -1), alpha[top:bottom, left:right, label], 0.0)
        whole, overlap = _measure(cover, top, left, label, height, width)
        objects = [whole]
        cells = cell_of[top:bottom, left:right]
        held = [c for c in np.unique(cells[mine])
                if (mine & (cells == c)).sum() / (height * width) >= min_area]
        if overlap < split_below and len(held) > 1:
            parts = [_measure(np.where(cells == c, cover, 0.0), top, left, label, height, width)
                     for c in held]
            if np.mean([o for _, o in parts]) > overlap:
                objects = [d for d, _ in parts]
        found += objects
    return sorted(found, key=lambda d: -d.area)


# ---- specs ----


def spec_from_objects(objects) -> dict:
    """The spec of a world description: every object with its colour, shape, size and cell."""
    fields = [o if isinstance(o, dict) else asdict(o) for o in objects]
    groups = [{"shape": o["shape"], "colour": o["colour"], "size": o["size"], "count": 1,
               "positions": [o["position"]]} for o in fields]
    return {"groups": groups, "relations": []}


_PHRASE = re.compile(
    rf"an? ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) "
    rf"in the ({'|'.join(c[0] for c in CELLS)})"
)


def spec_from_description(text: str) -> dict | None:
    """The spec of a text in the world's description style ("a large red circle in the top left
    and a small blue square in the center"), or None when the text is not one."""
    phrases = re.split(r", | and ", text.strip().rstrip("."))
    objects = []
    for phrase in phrases:
        match = _PHRASE.fullmatch(phrase.strip())
        if not match:
            return None
        size, colour, shape, position = match.groups()
        objects.append({"shape": shape, "colour": colour, "size": size, "position": position})
    return spec_from_objects(objects) if objects else None


def complexity(spec: dict) -> int:
    """Number of objects a prompt asks for."""
    return sum(g["count"] for g in spec["groups"])


def _relation_holds(rel: str, a: Detected, b: Detected, margin: float = 0.1) -> bool:
    if rel == "above":
        return a.cy < b.cy - margin
    if rel == "below":
        return a.cy > b.cy + margin
    if rel == "left of":
        return a.cx < b.cx - margin
    if rel == "right of":
        return a.cx > b.cx + margin
    if rel == "next to":  # beside, in the same row
        return abs(a.cy - b.cy) < margin and abs(a.cx - b.cx) > margin
    raise ValueError(f"unknown relation {rel!r}; known: {', '.join(RELATIONS)}")


def score(spec: dict, objects: list[Detected]) -> dict:
    """Each category right (True), wrong (False) or not asked (None) for one image."""
    groups, relations = spec["groups"], spec.get("relations", [])
    # One required instance per object asked for: (group index, cell or None).
    wanted = []
    for g_index, g in enumerate(groups):
        cells = g.get("positions") or [None] * g["count"]
        wanted += [(g_index, cell) for cell in cells]
    candidates = [[i for i, d in enumerate(objects)
                   if (d.colour, d.shape) == (groups[g]["colour"], groups[g]["shape"])] + [None]
                  for g, _ in wanted]
    asks_position = any(c is not None for _, c in wanted) or bool(relations)
    asks_size = any(g.get("size") for g in groups)

    def judge(assignment):
        matched = sum(a is not None for a in assignment)
        cells_ok = [cell is None or (a is not None and objects[a].position == cell)
                    for (_, cell), a in zip(wanted, assignment, strict=True)]
        sizes_ok = [not groups[g].get("size") or (a is not None and objects[a].size == groups[g]["size"])
                    for (g, _), a in zip(wanted, assignment, strict=True)]
        first = {}  # a relation names groups; it binds their first instances
        for (g, _), a in zip(wanted, assignment, strict=True):
            first.setdefault(g, a)
        rel_ok = [first.get(r["a"]) is not None and first.get(r["b"]) is not None
                  and _relation_holds(r["rel"], objects[first[r["a"]]], objects[first[r["b"]]])
                  for r in relations]
        rank = (matched, sum(cells_ok) + sum(rel_ok), sum(sizes_ok))
        return rank, all(cells_ok) and all(rel_ok), all(sizes_ok)

    def distinct(assignment) -> bool:  # no detected object stands for two asked ones
        used = [a for a in assignment if a is not None]
        return len(used) == len(set(used))

    # The first best assignment (the all-missing one is always there).
    best = max(map(judge, filter(distinct, itertools.product(*candidates))), key=lambda judged: judged[0])
    _, position_ok, size_ok = best

    counts = defaultdict(int)
    for g in groups:
        counts[(g["colour"], g["shape"])] += g["count"]
    seen = Counter((d.colour, d.shape) for d in objects)
    shapes_seen = {d.shape for d in objects}
    result = {
        "present": all(g["shape"] in shapes_seen for g in groups),
        "colour": all(seen[(g["colour"], g["shape"])] > 0 for g in groups),
        "count": all(seen[key] == n for key, n in counts.items()),
        "exact": len(objects) == complexity(spec),
        "position": position_ok if asks_position else None,
        "size": size_ok if asks_size else None,
    }
    result["all"] = all(v for v in result.values() if v is not None)
    return result


def check(image, spec: dict) -> dict:
    return score(spec, detect(image))


def summarise(results: list[dict], specs: list[dict], groups: list[str] | None = None,
              categories=CATEGORIES) -> dict:
    """Rates of each category over the images that ask about it, overall, by complexity and, when
    `groups` names one group per image (a prompt style, say), by group too. `categories`:
    LAYOUT_CATEGORIES for layout_score's results."""

    def rates(rows):
        out = {"images": len(rows)}
        for cat in categories:
            asked = [r[cat] for r in rows if r[cat] is not None]
            out[cat] = round(sum(asked) / len(asked), 4) if asked else None
        return out

    def rates_by(keys):
        grouped = defaultdict(list)
        for r, key in zip(results, keys, strict=True):
            grouped[key].append(r)
        return {k: rates(v) for k, v in sorted(grouped.items())}

    summary = {"overall": rates(results), "by_complexity": rates_by(map(complexity, specs))}
    if groups is not None:
        summary["by_group"] = rates_by(groups)
    return summary


# ---- layout: colour by cell, a coarser reading for models that do not draw shapes yet ----

LAYOUT_CATEGORIES = ("object_cells", "cell_colour", "cell_empty", "layout")
LAYOUT_WINDOW = SIZES["large"]  # half-side of the square read around each cell's centre
LAYOUT_MIN_COVER = 0.1  # share of that square a colour must cover to count (a small triangle: ~0.16)


def cell_colours(image) -> dict[str, str | None]:
    """Per world cell, the world colour covering most of the square around its centre (at least
    LAYOUT_MIN_COVER of it), or None when the cell is empty. No shapes, sizes or regions: only
    what colour is where."""
    labels, _ = colour_labels(_rgb(image))
    h, w = labels.shape
    found = {}
    for name, cx, cy in CELLS:
        top, bottom = int(round((cy - LAYOUT_WINDOW) * h)), int(round((cy + LAYOUT_WINDOW) * h))
        left, right = int(round((cx - LAYOUT_WINDOW) * w)), int(round((cx + LAYOUT_WINDOW) * w))
        window = labels[max(top, 0) : bottom, max(left, 0) : right]
        counts = np.bincount(window[window >= 0].ravel(), minlength=len(_COLOUR_NAMES))
        best = int(counts.argmax())
        found[name] = _COLOUR_NAMES[best] if counts[best] >= LAYOUT_MIN_COVER * window.size else None
    return found


def layout_score(spec: dict, image) -> dict:
    """Per prompt, on colour by cell only: `object_cells` (the share of asked objects whose cell
    shows their colour: partial credit), `cell_colour` (every asked object's cell shows its
    colour), `cell_empty` (every cell the prompt leaves free is empty; None when some object's
    cell is not given), `layout` (both). Groups without cells are not scored; None when no group
    has one. Shapes and sizes are not read: `score` is the full check."""
    found = cell_colours(image)
    asked = {cell: g["colour"] for g in spec["groups"] for cell in (g.get("positions") or [])}
    if not asked:
        return dict.fromkeys(LAYOUT_CATEGORIES)
    matched = [found[cell] == colour for cell, colour in asked.items()]
    colour_ok = all(matched)
    every_cell_given = all(g.get("positions") for g in spec["groups"])
    empty_ok = all(found[c[0]] is None for c in CELLS if c[0] not in asked) if every_cell_given else None
    return {"object_cells": sum(matched) / len(matched), "cell_colour": colour_ok, "cell_empty": empty_ok,
            "layout": colour_ok and (empty_ok is not False)}


# ---- renders, right and wrong, to validate the checker ----


def render(objects: list[ShapeObject], image_size: int = 64, seed: int = 0) -> bytes:
    """PNG of these objects drawn exactly as the world draws them (background tint from `seed`)."""
    return ShapesWorld(seed, image_size)._draw(objects, random.Random(f"render:{seed}"))


def corrupt(objects: list[ShapeObject], kind: str, rng: random.Random) -> list[ShapeObject] | None:
    """A wrong version of a sample's objects, or None when this kind cannot apply:
    colour (one object's colour swapped for another), missing (one object left out), moved (one
    object in a free cell), resized (one object's size flipped)."""
    objects = [ShapeObject(**asdict(o)) for o in objects]
    victim = rng.randrange(len(objects))
    if kind == "colour":
        objects[victim].colour = rng.choice([c for c in COLOURS if c != objects[victim].colour])
    elif kind == "missing":
        if len(objects) < 2:
            return None
        del objects[victim]
    elif kind == "moved":
        free = [c[0] for c in CELLS if c[0] not in {o.position for o in objects}]
        objects[victim].position = rng.choice(free)
    elif kind == "resized":
        objects[victim].size = "small" if objects[victim].size == "large" else "large"
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return objects


CORRUPTIONS = {"colour": "colour", "missing": "count", "moved": "position", "resized": "size"}


def validate(images: int = 500, seed: int = 0, start: int = 0, image_size: int = 64) -> dict:
    """The checker on the world's own renders (share scored right in every category) and on
    wrong renders: for each corruption, the share caught (`all` False) and the share caught by
    the category it breaks (colour, count, position, size)."""
    world = ShapesWorld(seed, image_size)
    rng = random.Random(f"validate:{seed}")
    clean, specs = [], []
    wrong = defaultdict(lambda: {"tried": 0, "caught": 0, "caught_by_category": 0})
    for index in range(start, start + images):
        sample = world.sample(index)
        spec = spec_from_objects(sample.objects)
        specs.append(spec)
        clean.append(check(sample.image, spec))
        for kind, category in CORRUPTIONS.items():
            bad = corrupt(sample.objects, kind, rng)
            if bad is None:
                continue
            result = check(render(bad, image_size, seed=index), spec)
            wrong[kind]["tried"] += 1
            wrong[kind]["caught"] += not result["all"]
            wrong[kind]["caught_by_category"] += result[category] is False
    caught = {k: {**v, "caught_rate": round(v["caught"] / max(v["tried"], 1), 4)} for k, v in wrong.items()}
    return {"clean": summarise(clean, specs), "wrong": caught}
