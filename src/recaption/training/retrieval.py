"""Retrieval and zero-shot evaluation of a CLIP-style dual encoder.

image->text Recall@K: for image i, is its own caption among the K texts most similar to it;
text->image likewise. Each image has one caption (its row's), so ranks are over N candidates.
Zero-shot classification: each image's label against prompts "a {label}" for every label seen.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..quality.clip import ClipScorer
from .data import check_fields, image_text_pairs
from .inputs import TrainingInputError, check_device, check_dual_encoder, load_pretrained, model_source

KS = (1, 5, 10)


def recall_at_k(similarity: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """similarity[i, j] = image i vs text j; the match of image i is text i."""
    n = similarity.shape[0]
    target = torch.arange(n)
    # Rank of the correct item = how many candidates score strictly higher.
    i2t = (similarity > similarity[target, target].unsqueeze(1)).sum(1)
    t2i = (similarity.T > similarity[target, target].unsqueeze(1)).sum(1)
    out = {}
    for k in ks:  # counted, then divided in Python: float64 shares (0.73, not float32 0.7300000190734863)
        out[f"image_to_text_R@{k}"] = int((i2t < k).sum()) / n
        out[f"text_to_image_R@{k}"] = int((t2i < k).sum()) / n
    return out


@dataclass
class EvalResult:
    n: int  # image-text pairs evaluated
    metrics: dict[str, float]
    without_caption: int = 0  # samples read but left out: no caption to retrieve


def evaluate(model: str, data: list[str], caption_field: str | None = None, label_field: str | None = None,
             device: str = "auto", batch_size: int = 64, limit: int | None = None) -> EvalResult:
    from ..quality.clip import resolve_clip_model

    if limit is not None and limit < 1:
        raise TrainingInputError("--limit must be at least 1")
    check_device(device)
    model_source(model, "model")  # a wrong folder is named as one; built-in names and hub ids pass
    resolved = resolve_clip_model(model, "MODEL")  # built-ins, folders, hub ids (a wrong one: ValueError)
    check_dual_encoder(getattr(resolved, "path", resolved), "model", model)
    scorer = ClipScorer(model, device=device, batch_size=batch_size)
    load_pretrained(lambda _: scorer.setup(), model, "model")
    pairs = list(itertools.islice(image_text_pairs(data, caption_field, label_field), limit))
    if not pairs:
        raise TrainingInputError(f"no readable image-text pairs in {', '.join(data)}")
    check_fields(pairs, data, caption=caption_field, label=label_field)
    captioned = [p for p in pairs if p.org is not None]  # an empty text would tie, and ties count as hits
    if not captioned:
        raise TrainingInputError(f"no sample in {', '.join(data)} has a caption: nothing to retrieve")
    images, texts, labels = ([p.image for p in captioned], [p.org for p in captioned],
                             [p.label for p in captioned])

    def embedded(embed, items: list) -> torch.Tensor:
        starts = range(0, len(items), batch_size)
        return torch.cat([embed(items[i : i + batch_size]).float().cpu() for i in starts])

    image_emb = embedded(lambda batch: scorer.image_embeddings(scorer.pixel_values(batch)), images)
    text_emb = embedded(scorer.text_embeddings, texts)
    metrics = recall_at_k(image_emb @ text_emb.T)
    if label_field and all(label is not None for label in labels):
        classes = sorted(set(labels))
        class_emb = scorer.text_embeddings([f"a {c}" for c in classes]).float().cpu()
        predicted = (image_emb @ class_emb.T).argmax(1).tolist()
        metrics["zero_shot_accuracy"] = sum(
            classes[p] == y for p, y in zip(predicted, labels, strict=True)
        ) / len(labels)
        metrics["zero_shot_classes"] = len(classes)
    return EvalResult(len(images), metrics, len(pairs) - len(captioned))
