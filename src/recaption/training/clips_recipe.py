"""The CLIPS recipe (arXiv 2411.16828): each image contrasted twice in one step, with its alt-text
and with a PARTIAL recaption (one sentence, then a random block of `block_words` words of it),
the two contrastive losses added. A sample with no recaption uses its alt-text in both places
(and one with no alt-text its recaption), so nothing is dropped.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..quality.long_text import sentences


def partial_recaption(text: str, rng: random.Random, block_words: int) -> str:
    parts = sentences(text) or [text]
    words = rng.choice(parts).split()
    if len(words) > block_words:
        start = rng.randrange(len(words) - block_words + 1)
        words = words[start : start + block_words]
    return " ".join(words)


def clips_texts(orgs: list[str | None], res: list[str | None], rng: random.Random,
                block_words: int) -> tuple[list[str], list[str]]:
    """(alt-texts, partial recaptions) for a batch, in sample order."""
    originals = [org or re or "" for org, re in zip(orgs, res, strict=True)]
    partials = [partial_recaption(re or org or "", rng, block_words)
                for org, re in zip(orgs, res, strict=True)]
    return originals, partials


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over a square image x text logit matrix."""
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels)) / 2


def clips_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """Images (B) against [alt-texts (B), partial recaptions (B)]: the sum of both losses."""
    batch = logits_per_image.shape[0]
    return contrastive_loss(logits_per_image[:, :batch]) + contrastive_loss(logits_per_image[:, batch:])
