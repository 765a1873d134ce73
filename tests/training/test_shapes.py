"""The shapes world: deterministic, truthful descriptions, alt-text noise at the documented rates."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image

from recaption.shapes import ShapesWorld, write_shapes_shards
from recaption.shapes.world import CLASSES, COLOURS, JUNK, NO_COLOUR_RATE, SHAPES, WRONG_COLOUR_RATE


def test_same_seed_same_samples_other_seed_other_samples():
    a, b, c = ShapesWorld(3), ShapesWorld(3), ShapesWorld(4)
    for i in (0, 7, 123):
        assert a.sample(i) == b.sample(i)
    assert [a.sample(i).image for i in range(5)] != [c.sample(i).image for i in range(5)]


def test_descriptions_tell_the_truth_about_the_pixels():
    world = ShapesWorld(0, image_size=64)
    for i in range(50):
        s = world.sample(i)
        assert 1 <= len(s.objects) <= 4 and s.label in CLASSES
        assert s.label == f"{s.objects[0].colour} {s.objects[0].shape}"
        pixels = np.asarray(Image.open(io.BytesIO(s.image)).convert("RGB")).astype(int)
        for obj in s.objects:
            assert obj.phrase() in s.description
            cx, cy = {
                "top left": (16, 16),
                "top right": (48, 16),
                "center": (32, 32),
                "bottom left": (16, 48),
                "bottom right": (48, 48),
            }[obj.position]
            # The object's colour is at its cell's centre (every shape covers its centre).
            assert np.abs(pixels[cy, cx] - COLOURS[obj.colour]).max() < 40, (i, obj)


def test_alt_text_noise_rates():
    world = ShapesWorld(1)
    n, wrong, no_colour, junk = 3000, 0, 0, 0
    for i in range(n):
        s = world.sample(i)
        words = s.alt_text
        shape = next(sh for sh in SHAPES if sh in words.split())
        colours = [c for c in COLOURS if c in words.split()]
        junk += any(j in words for j in JUNK)
        if not colours:
            no_colour += 1
        elif not any(o.colour == colours[0] and o.shape == shape for o in s.objects):
            wrong += 1
    # Wrong colour: 0.25 of coloured alt-texts, less the cases where another object has that colour.
    assert abs(no_colour / n - NO_COLOUR_RATE) < 0.03
    assert (
        0.6 * WRONG_COLOUR_RATE * (1 - NO_COLOUR_RATE)
        < wrong / n
        < WRONG_COLOUR_RATE * (1 - NO_COLOUR_RATE) + 0.03
    )
    assert abs(junk / n - 0.3) < 0.03


def test_shards_are_img2dataset_layout_and_split_invariant(tmp_path):
    one = write_shapes_shards(tmp_path / "one", 10, seed=2, shard_size=10)
    two = write_shapes_shards(tmp_path / "two", 10, seed=2, shard_size=4)
    assert [p.name for p in two] == ["00000.tar", "00001.tar", "00002.tar"]

    def members(paths):
        out = {}
        for p in paths:
            with tarfile.open(p) as tar:
                for m in tar.getmembers():
                    if m.name.endswith(".json"):
                        meta = json.loads(tar.extractfile(m).read())
                        out[meta["url"]] = (meta["description"], meta["label"], meta["caption"])
        return out

    assert members(one) == members(two) and len(members(one)) == 10
