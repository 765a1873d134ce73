"""What a DiT trains on: image-caption pairs held in memory, and which caption each sample uses.

Inputs are those of `train-clip` (recaption.training.clip_train.load_pairs): shards of any kind
(img2dataset tars, parquet, folders) with the original caption as the caption and, for the
recaption, a json field (`recaption_field`; the shapes world's shards keep the full description
in `description`), or `recap caption` output folders, whose rows are joined with their images.

The paper's mixing, with train-clip's semantics: each time a sample is drawn it uses its ORIGINAL
caption with probability p, else its recaption. Then, with probability `caption_dropout`, the
caption is replaced by the empty text (classifier-free guidance learns the unconditional model
from those).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..training.data import Pair
from ..training.inputs import TrainingInputError

ORIGINAL, RECAPTION, DROPPED = "original", "recaption", "dropped"


def pick_caption(pair: Pair, p: float, caption_dropout: float, rng: random.Random) -> tuple[str, str]:
    """(text, kind): the caption this draw of `pair` trains with; kind is original, recaption or
    dropped (the empty text). A pair without the chosen caption uses the other one."""
    use_original = rng.random() < p
    order = ((pair.org, ORIGINAL), (pair.re, RECAPTION))
    text, kind = order[0] if use_original else order[1]
    if not text:
        text, kind = order[1] if use_original else order[0]
    if rng.random() < caption_dropout:
        return "", DROPPED
    return text or "", kind


def check_captions(pairs: list[Pair], p: float, inputs: list[str]) -> None:
    """Refuse a mix the data cannot give: p < 1 needs recaptions, p > 0 needs originals (else
    every draw would silently fall back to the other caption)."""
    where = ", ".join(inputs)
    if p < 1 and not any(pair.re for pair in pairs):
        raise TrainingInputError(
            f"p={p} trains on recaptions {1 - p:.0%} of the time, but no sample in {where} has one: "
            "give --recaption-field (the shapes world's shards: description) or `recap caption` output"
        )
    if p > 0 and not any(pair.org for pair in pairs):
        raise TrainingInputError(f"p={p} trains on original captions, but no sample in {where} has one")


def square_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """uint8 3 x size x size: the image's centre square, resized (bicubic) when it is not that size."""
    image = image.convert("RGB")
    w, h = image.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


@dataclass
class TrainingSet:
    pairs: list[Pair]
    stored: torch.Tensor  # per image, what the codec draws inputs from (pixels or latent moments)

    def __len__(self) -> int:
        return len(self.pairs)


def training_set(pairs: list[Pair], codec, image_size: int, chunk: int = 256) -> TrainingSet:
    """Pairs with their images prepared once by the codec (pixels, or VAE latent moments); the
    PIL images are dropped afterwards."""
    stored = []
    for i in range(0, len(pairs), chunk):
        pixels = torch.stack([square_pixels(p.image, image_size) for p in pairs[i : i + chunk]])
        stored.append(codec.prepare(pixels))
    for p in pairs:
        p.image = None
    return TrainingSet(pairs, torch.cat(stored))
