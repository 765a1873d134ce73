"""The model-free checker of shapes-world images, and the human-style prompt language."""

from __future__ import annotations

import random
import re

import pytest

from recaption.shapes import ShapesWorld
from recaption.shapes.checker import (
    CORRUPTIONS,
    Detected,
    check,
    corrupt,
    detect,
    render,
    score,
    spec_from_description,
    spec_from_objects,
    validate,
)
from recaption.shapes.prompts import balanced_prompt_set, human_prompt, prompt_set, unknown_words
from recaption.shapes.world import ShapeObject


def test_the_worlds_own_renders_score_right_and_wrong_renders_are_caught():
    report = validate(images=120, seed=0, start=300_000)
    clean = report["clean"]["overall"]
    assert clean["images"] == 120 and clean["all"] >= 0.98
    for n in (1, 2, 3, 4):
        assert report["clean"]["by_complexity"][n]["all"] >= 0.95
    for kind in CORRUPTIONS:
        wrong = report["wrong"][kind]
        assert wrong["tried"] > 50 and wrong["caught_rate"] >= 0.98, (kind, wrong)
        # ... and mostly by the category the corruption breaks (colour, count, position, size).
        assert wrong["caught_by_category"] / wrong["tried"] >= 0.9, (kind, wrong)


def test_detect_reads_objects_off_a_render():
    objects = [
        ShapeObject("triangle", "orange", "large", "top right"),
        ShapeObject("square", "orange", "large", "center"),  # touches the triangle's corner
        ShapeObject("diamond", "purple", "small", "bottom left"),
    ]
    found = {(d.colour, d.shape, d.size, d.position) for d in detect(render(objects, seed=3))}
    assert found == {(o.colour, o.shape, o.size, o.position) for o in objects}


def test_one_wrong_thing_fails_its_own_category():
    truth = [
        ShapeObject("circle", "red", "large", "top left"),
        ShapeObject("square", "blue", "small", "center"),
    ]
    spec = spec_from_objects(truth)
    rng = random.Random(0)
    assert check(render(truth), spec)["all"]
    moved = corrupt(truth, "moved", rng)
    result = check(render(moved), spec)
    assert result["position"] is False and result["colour"] and result["count"] and result["size"]
    resized = corrupt(truth, "resized", rng)
    result = check(render(resized), spec)
    assert result["size"] is False and result["position"] and result["colour"]
    missing = check(render(truth[:1]), spec)
    assert missing["count"] is False and missing["present"] is False


def test_relations_counts_and_unasked_categories():
    def at(colour, shape, x, y, size="small", cell="center"):
        return Detected(colour, shape, size, cell, x, y, 0.02, 0.1)

    spec = {
        "groups": [
            {"shape": "circle", "colour": "red", "size": None, "count": 1, "positions": None},
            {"shape": "square", "colour": "blue", "size": None, "count": 2, "positions": None},
        ],
        "relations": [{"a": 0, "rel": "above", "b": 1}],
    }
    above = [
        at("red", "circle", 0.25, 0.25),
        at("blue", "square", 0.25, 0.75),
        at("blue", "square", 0.75, 0.75),
    ]
    expected = dict(present=True, colour=True, count=True, exact=True, position=True, size=None, all=True)
    assert score(spec, above) == expected
    below = [
        at("red", "circle", 0.25, 0.75),
        at("blue", "square", 0.25, 0.25),
        at("blue", "square", 0.75, 0.25),
    ]
    assert score(spec, below)["position"] is False
    one_square = above[:2]
    assert score(spec, one_square)["count"] is False and score(spec, one_square)["colour"] is True
    extra = above + [at("green", "diamond", 0.5, 0.5)]
    assert score(spec, extra)["exact"] is False and score(spec, extra)["count"] is True


def test_descriptions_parse_to_the_truth():
    world = ShapesWorld(0)
    for i in range(100):
        s = world.sample(i)
        assert spec_from_description(s.description) == spec_from_objects(s.objects)
        assert spec_from_description(s.alt_text) is None


def test_human_prompts_say_the_truth_in_a_style_no_training_caption_uses():
    world = ShapesWorld(0)
    prompts = balanced_prompt_set(40, "human")
    assert [p.complexity for p in prompts] == [n for n in (1, 2, 3, 4) for _ in range(40)]
    for p in prompts:
        # Its own reference render satisfies everything it asks for ...
        assert check(world.sample(p.index).image, p.spec)["all"], p.text
        # ... and it is not the world's description style.
        assert spec_from_description(p.text) is None
        assert p.text != world.sample(p.index).description
    texts = " ".join(p.text for p in prompts)
    for phrase in ("next to", "above", "below", "two", "in the middle", "little", "upper left"):
        assert phrase in texts, phrase
    assert any(p.spec["relations"] for p in prompts)
    # Varied: many distinct openings, objects not always in reading order.
    assert len({" ".join(p.text.split()[:2]) for p in prompts}) >= 15
    # Deterministic.
    again = prompt_set(5, "human", start=prompts[0].index)
    assert [p.text for p in again][:1] == [prompts[0].text]


def test_recaption_style_prompts_are_the_descriptions():
    world = ShapesWorld(0)
    for p in prompt_set(10, "recaption"):
        assert p.text == world.sample(p.index).description and p.style == "recaption"


def test_unknown_words_for_a_word_level_tokenizer():
    from recaption.models.tiny_clip import shipped_tiny_clip

    tokenizer = pytest.importorskip("transformers").AutoTokenizer.from_pretrained(shipped_tiny_clip())
    unknown = unknown_words(["A little red circle above two blue squares"], tokenizer)
    assert "above" in unknown and "red" not in unknown and "circle" not in unknown


def test_human_prompt_groups_identical_objects_with_a_count_word():
    objects = [ShapeObject("circle", "red", "small", c) for c in ("top left", "top right", "bottom left")]
    text, spec = human_prompt(objects, random.Random(1), omit_size=0, omit_position=0, relation_rate=0)
    assert re.search(r"\bthree\b", text) and "circles" in text
    assert spec["groups"] == [
        {
            "shape": "circle",
            "colour": "red",
            "size": "small",
            "count": 3,
            "positions": ["top left", "top right", "bottom left"],
        }
    ]


def test_prompt_shards_hold_the_reference_renders(tmp_path):
    import json
    import tarfile

    from recaption.shapes.prompts import write_prompt_shards

    prompts = prompt_set(6, "human")
    paths = write_prompt_shards(tmp_path, prompts, shard_size=4)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar"]
    with tarfile.open(paths[0]) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    key = sorted(files)[0].split(".")[0]
    meta = json.loads(files[f"{key}.json"])
    assert files[f"{key}.txt"].decode() == prompts[0].text and meta["spec"] == prompts[0].spec
    assert check(files[f"{key}.png"], meta["spec"])["all"]


def test_layout_reads_colour_by_cell_and_catches_swaps_moves_and_missing_objects():
    from recaption.shapes.checker import LAYOUT_CATEGORIES, corrupt, layout_score, render, summarise

    world, rng = ShapesWorld(0), random.Random(3)
    results, specs, caught = [], [], {"colour": 0, "moved": 0, "missing": 0, "resized": 0}
    for index in range(200_000, 200_060):
        sample = world.sample(index)
        spec = spec_from_objects(sample.objects)
        results.append(layout_score(spec, sample.image))
        specs.append(spec)
        for kind in caught:
            bad = corrupt(sample.objects, kind, rng)
            if bad is not None:
                caught[kind] += not layout_score(spec, render(bad, 64, seed=index))["layout"]
    summary = summarise(results, specs, categories=LAYOUT_CATEGORIES)
    assert summary["overall"]["layout"] == 1.0 and summary["overall"]["cell_empty"] == 1.0
    assert summary["overall"]["object_cells"] == 1.0
    assert caught["colour"] == 60 and caught["moved"] == 60
    assert caught["missing"] == sum(len(world.sample(i).objects) > 1 for i in range(200_000, 200_060))
    assert caught["resized"] < 5  # sizes (and shapes) are not what layout reads
    # Partial credit: one of two objects recoloured leaves half of them in place.
    two = next(world.sample(i) for i in range(1000) if len(world.sample(i).objects) == 2)
    recoloured = corrupt(two.objects, "colour", random.Random(0))
    partial = layout_score(spec_from_objects(two.objects), render(recoloured, 64, seed=two.index))
    assert partial["object_cells"] == 0.5 and partial["cell_colour"] is False
    # A prompt that gives no cell is not scored.
    assert layout_score({"groups": [{"shape": "circle", "colour": "red", "size": None, "count": 1,
                                     "positions": None}], "relations": []}, sample.image)["layout"] is None
