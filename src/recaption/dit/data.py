"""What a DiT trains on: streamed image-caption pairs (training/stream.py) cropped square, and
which caption each sample uses.

Inputs are those of `train-clip`: shards of any kind
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
    dropped = rng.random() < caption_dropout  # drawn for every sample: the same draws on resume
    if not text:
        return "", UNCAPTIONED
    if dropped:
        return "", DROPPED
    return text, kind


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


class SquarePixels:
    """The stream's image processor for the DiT: each image's centre square at `size`, uint8
    (picklable: loader workers get a copy)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, images: list, return_tensors: str = "pt") -> dict:
        return {"pixel_values": torch.stack([square_pixels(image, self.size) for image in images])}


def check_caption_sources(data: list[str], p: float, recaption_field: str | None, mix: str | None = None,
                          caption_field: str | None = None) -> None:
    """Refuse a mix the data cannot give, before streaming (training/captions.check_mix and
    check_mix_columns, the rules every trainer shares)."""
    from ..training.captions import CaptionMix, check_mix, check_mix_columns

    if mix:
        check_mix_columns(data, CaptionMix.parse(mix), recaption_field, caption_field)
    else:
        check_mix(data, p, recaption_field)


def pick_mixed_caption(mix, org: str | None, re: str | None, more: dict, caption_dropout: float,
                       rng: random.Random) -> tuple[str, str]:
    """(text, kind) for --mix: the column drawn (training/captions.CaptionMix.pick; kind is the
    column, "COLUMN (fallback)" when the drawn one was empty), then dropout as pick_caption."""
    text, column, fell_back = mix.pick({"org_caption": org, "re_caption": re, **more}, rng.random())
    dropped = rng.random() < caption_dropout
    if not text:
        return "", UNCAPTIONED
    if dropped:
        return "", DROPPED
    return text, f"{column} (fallback)" if fell_back else column
