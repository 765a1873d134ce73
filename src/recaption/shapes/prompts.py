"""Test prompts for text-to-image models of the shapes world, each with the spec of what it asks
for (what recaption.shapes.checker scores an image against).

Two styles:

  recaption  the world's own full descriptions, the style the recaptions train on: "a large red
             circle in the top left and a small blue square in the center"
  human      a harder language that neither training caption uses, the counterpart of the
             paper's evaluation on human-written COCO captions: objects in any order, varied
             templates and word order, synonyms ("little", "big", "in the upper left corner",
             "in the middle"), counts in words ("two small red circles"), relations between
             objects ("above", "below", "next to", "to the left of"), and now and then an
             attribute left out (then it is not scored):
             "There are two little red circles, one in the upper left corner and one in the
             middle, and a blue square below the big green diamond."

A prompt is made from a world sample (`index`), whose render is the prompt's reference image.
The same (seed, index, style) always gives the same prompt.

Words outside a text encoder's vocabulary reach it as one unknown token: the built-in tiny-clip
knows only the words its captions used (the world's words plus a few), so to it "above", "two"
or "little" are unknown. `unknown_words` lists them for any tokenizer, to read results honestly.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from .checker import complexity, spec_from_objects
from .world import CELLS, ShapeObject, ShapesWorld, describe, shapes_record, write_tars

STYLES = ("recaption", "human")
PROMPT_START = 400_000  # world indices of test prompts: outside every training range in docs
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
PLACES = {
    "top left": ("in the upper left corner", "at the top left", "in the top-left corner",
                 "up in the left corner"),
    "top right": ("in the upper right corner", "at the top right", "in the top-right corner",
                  "up in the right corner"),
    "center": ("in the middle", "in the centre", "at the center", "right in the middle"),
    "bottom left": ("in the lower left corner", "at the bottom left", "in the bottom-left corner",
                    "down on the left"),
    "bottom right": ("in the lower right corner", "at the bottom right", "in the bottom-right corner",
                     "down on the right"),
}
RELATION_WORDS = {
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "next to": ("next to", "beside"),
    "left of": ("to the left of",),
    "right of": ("to the right of",),
}
_XY = {name: (x, y) for name, x, y in CELLS}


@dataclass
class Prompt:
    text: str
    spec: dict
    style: str
    index: int  # the world sample it was made from (its render is the reference image)
    seed: int  # the world's seed

    @property
    def complexity(self) -> int:
        return complexity(self.spec)


# ---- the human-style language ----


def _noun_phrase(colour: str, shape: str, size: str | None, count: int, rng: random.Random) -> str:
    noun = shape + ("s" if count > 1 else "")
    size_word = rng.choice(SIZE_WORDS[size]) if size else None
    if count > 1:
        quantity = COUNT_WORDS[count]
    else:
        quantity = rng.choice(["a", "one"]) if rng.random() < 0.3 else "a"
    forms = [f"{size_word} {colour} {noun}" if size_word else f"{colour} {noun}"]
    if size_word:
        forms += [f"{size_word} {noun} in {colour}", f"{size_word} {noun} coloured {colour}"]
    else:
        forms += [f"{noun} in {colour}"]
    phrase = f"{quantity} {rng.choice(forms)}"
    if quantity == "a" and phrase.split()[1][0] in "aeiou":
        phrase = "an" + phrase[1:]
    return phrase


def _relation(a: str, b: str) -> list[str]:
    """Relations that hold between cells a and b, as the checker reads them (same column: above /
    below; same row: next to, left of, right of)."""
    (xa, ya), (xb, yb) = _XY[a], _XY[b]
    if xa == xb and ya != yb:
        return ["above" if ya < yb else "below"]
    if ya == yb and xa != xb:
        return ["next to", "left of" if xa < xb else "right of"]
    return []


def _assemble(clauses: list[tuple[str, bool, int]], rng: random.Random) -> str:
    """The prompt's text from its clauses (text, stands alone, how many its subject is)."""
    # A clause that starts with its place stands as a sentence of its own.
    sentences = [text for text, alone, _ in clauses if alone]
    listed = [text for text, alone, _ in clauses if not alone]
    if listed:
        joined = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
        plural = sum(named for _, alone, named in clauses if not alone) > 1
        template = rng.choice(["{x}", "There {be} {x}", "A picture of {x}", "I see {x}",
                               "{x} on a plain background", "Draw {x}", "Some shapes: {x}"])
        lead = template.format(x=joined, be="are" if plural else "is")
        sentences.insert(rng.randrange(len(sentences) + 1), lead)
    text = ". ".join(s[0].upper() + s[1:] for s in sentences)
    if rng.random() < 0.7:
        text += "."
    text = text.replace(", with", " with") if rng.random() < 0.5 else text
    return text


def human_prompt(objects: list[ShapeObject], rng: random.Random, omit_size: float = 0.2,
                 omit_position: float = 0.15, relation_rate: float = 0.5) -> tuple[str, dict]:
    """(text, spec) of a human-style prompt for these objects (see the module's docstring)."""
    by_kind: dict[tuple[str, str, str], list[str]] = {}
    for o in objects:
        by_kind.setdefault((o.colour, o.shape, o.size), []).append(o.position)
    kinds = list(by_kind.items())
    rng.shuffle(kinds)  # not reading order
    groups = []
    for (colour, shape, size), cells in kinds:
        positions = None if rng.random() < omit_position else list(cells)
        size = size if rng.random() >= omit_size else None
        groups.append({"shape": shape, "colour": colour, "size": size, "count": len(cells),
                       "positions": positions, "_cells": cells})
    relations, relation = [], None
    singles = [i for i, g in enumerate(groups) if g["count"] == 1]
    pairs = [(a, b) for a in singles for b in singles
             if a != b and _relation(groups[a]["_cells"][0], groups[b]["_cells"][0])]
    if pairs and rng.random() < relation_rate:
        a, b = rng.choice(pairs)
        rel = rng.choice(_relation(groups[a]["_cells"][0], groups[b]["_cells"][0]))
        # inline: "A above a B" (else: "B ..., with A above it")
        relation = {"a": a, "rel": rel, "b": b, "inline": rng.random() < 0.5}
        relations.append({k: relation[k] for k in ("a", "rel", "b")})
        groups[a]["positions"] = None  # placed by the relation instead
        if relation["inline"]:
            groups[b]["positions"] = None

    def place(cells: list[str]) -> str:
        if len(cells) == 1:
            return rng.choice(PLACES[cells[0]])
        words = [rng.choice(PLACES[c]) for c in cells]
        if rng.random() < 0.5:
            words = [f"one {w}" for w in words]
        return ", ".join(words[:-1]) + " and " + words[-1]

    def np(i: int) -> str:
        g = groups[i]
        return _noun_phrase(g["colour"], g["shape"], g["size"], g["count"], rng)

    clauses = []  # (text, stands alone as a sentence, how many its subject is: "there is / are")
    for i, g in enumerate(groups):
        if relation and i == relation["a"]:
            continue  # said with its anchor
        if relation and relation["inline"] and i == relation["b"]:
            word = rng.choice(RELATION_WORDS[relation["rel"]])
            clauses.append((f"{np(relation['a'])} {word} {np(i)}", False, 1))  # its subject: one object
            continue
        phrase, alone, named = np(i), False, g["count"]
        if g["positions"] and g["count"] == 1 and rng.random() < 0.3:
            where = place(g["positions"])
            phrase = f"{where} {rng.choice(['is', 'there is', 'sits'])} {phrase}"
            alone = True
        elif g["positions"]:
            phrase += (", " if g["count"] > 1 else " ") + place(g["positions"])
        if relation and i == relation["b"]:
            phrase += f", with {np(relation['a'])} {rng.choice(RELATION_WORDS[relation['rel']])} it"
        clauses.append((phrase, alone, named))
    text = _assemble(clauses, rng)
    for g in groups:
        del g["_cells"]
    return text, {"groups": groups, "relations": relations}


def recaption_prompt(objects: list[ShapeObject]) -> tuple[str, dict]:
    """(text, spec) in the recaptions' own style: the world's full description."""
    return describe(objects), spec_from_objects(objects)


# ---- prompt sets ----


def prompt_set(count: int, style: str = "human", seed: int = 0, start: int = PROMPT_START,
               complexities: tuple[int, ...] | None = None) -> list[Prompt]:
    """`count` prompts made from world samples start, start+1, ... (samples whose number of
    objects is not in `complexities` are skipped, to balance a set by complexity)."""
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; known: {', '.join(STYLES)}")
    world = ShapesWorld(seed)
    prompts, index = [], start
    while len(prompts) < count:
        objects = world.sample(index).objects
        if complexities is None or len(objects) in complexities:
            if style == "recaption":
                text, spec = recaption_prompt(objects)
            else:
                text, spec = human_prompt(objects, random.Random(f"human:{seed}:{index}"))
            prompts.append(Prompt(text, spec, style, index, seed))
        index += 1
    return prompts


def balanced_prompt_set(per_complexity: int, style: str = "human", seed: int = 0, start: int = PROMPT_START):
    """`per_complexity` prompts each of 1, 2, 3 and 4 objects."""
    return [p for n in (1, 2, 3, 4) for p in prompt_set(per_complexity, style, seed, start, (n,))]


def write_prompts(prompts: list[Prompt], path: str | Path) -> Path:
    """JSON lines (prompt, spec, style, index, seed, complexity), atomically."""
    from fsspec.implementations.local import LocalFileSystem

    from ..spine.atomic import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt": p.text, **{k: v for k, v in asdict(p).items() if k != "text"},
                         "complexity": p.complexity}) for p in prompts]
    write_text_atomic(LocalFileSystem(), str(path.absolute()), "\n".join(lines) + "\n")
    return path


def write_prompt_shards(folder: str | Path, prompts: list[Prompt], shard_size: int = 1000,
                        image_size: int = 64) -> list[Path]:
    """The prompts with their reference renders as img2dataset-layout tars: {key}.png, {key}.txt
    (the prompt), {key}.json (prompt, spec, style, complexity, index, the world's description).
    A retrieval test set in the prompts' style (`recap eval-retrieval FOLDER`), and the reference
    images of a Frechet distance."""
    worlds: dict[int, ShapesWorld] = {}

    def record(p: Prompt):
        sample = worlds.setdefault(p.seed, ShapesWorld(p.seed, image_size)).sample(p.index)
        extra = {"spec": p.spec, "style": p.style, "complexity": p.complexity, "index": p.index,
                 "description": sample.description}
        return shapes_record(sample, p.seed, p.text, extra)

    return write_tars(folder, prompts, shard_size, record)


def unknown_words(texts: list[str], tokenizer) -> dict[str, int]:
    """Words of `texts` that `tokenizer` turns into its unknown token, with how often they occur."""
    import re

    unknown: dict[str, int] = {}
    unk = tokenizer.unk_token_id
    for text in texts:
        for word in re.findall(r"[A-Za-z]+(?:-[A-Za-z]+)?", text):
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if unk is not None and unk in ids:
                unknown[word] = unknown.get(word, 0) + 1
    return dict(sorted(unknown.items(), key=lambda kv: -kv[1]))
