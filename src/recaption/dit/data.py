"""What a DiT trains on: streamed image-caption pairs (training/stream.py) cropped square, and the
caption each draw uses: the ORIGINAL with probability p, else the recaption (train-clip's p), then
the empty text with probability `caption_dropout` (classifier-free guidance learns from those)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from ..training.data import Pair

ORIGINAL, RECAPTION, DROPPED = "original", "recaption", "dropped"
# A draw whose chosen caption the sample lacks uses the other one, and is counted apart, so a
# run says how far its data kept it from the p asked for.
ORIGINAL_NO_RECAPTION = "original (no recaption)"
RECAPTION_NO_ORIGINAL = "recaption (no original)"
UNCAPTIONED = "no caption"  # neither: the empty text, as a dropped caption
CAPTION_KINDS = (ORIGINAL, RECAPTION, DROPPED, ORIGINAL_NO_RECAPTION, RECAPTION_NO_ORIGINAL, UNCAPTIONED)


def pick_caption(pair: Pair, p: float, caption_dropout: float, rng: random.Random) -> tuple[str, str]:
    """(text, kind): the caption this draw of `pair` trains with; kind is one of CAPTION_KINDS.
    A pair without the chosen caption uses the other one (kinds "... (no ...)")."""
    use_original = rng.random() < p
    order = ((pair.org, ORIGINAL), (pair.re, RECAPTION))
    text, kind = order[0] if use_original else order[1]
    if not text:
        text = order[1][0] if use_original else order[0][0]
        kind = RECAPTION_NO_ORIGINAL if use_original else ORIGINAL_NO_RECAPTION
    return _dropout(text, kind, caption_dropout, rng)


def pick_mixed_caption(mix, org: str | None, re: str | None, more: dict, caption_dropout: float,
                       rng: random.Random) -> tuple[str, str]:
    """(text, kind) for --mix: the column drawn (CaptionMix.choose), then dropout as pick_caption."""
    return _dropout(*mix.choose(org, re, more, rng.random()), caption_dropout, rng)


def _dropout(text: str | None, kind: str, caption_dropout: float, rng: random.Random) -> tuple[str, str]:
    dropped = rng.random() < caption_dropout  # drawn for every sample: the same draws on resume
    if not text:
        return "", UNCAPTIONED
    if dropped:
        return "", DROPPED
    return text, kind


class SquarePixels:
    """The stream's image processor for the DiT: each image's centre square at `size`, uint8
    3 x size x size, resized (bicubic) when it is not that size (picklable: loader workers get a copy)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, images: list, return_tensors: str = "pt") -> dict:
        return {"pixel_values": torch.stack([self.square(image) for image in images])}

    def square(self, image: Image.Image) -> torch.Tensor:
        image, size = image.convert("RGB"), self.size
        w, h = image.size
        if w != h:
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            image = image.crop((left, top, left + side, top + side))
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
