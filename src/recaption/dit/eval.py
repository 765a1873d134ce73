"""Text-to-image evaluation of generated shards (what `generate` writes, or any img2dataset-layout
images with their prompts as captions).

eval_shapes(inputs)      shapes-world compositional alignment with no model (recaption.shapes.checker):
                         per category (present, colour, count, exact, position, size, all), by
                         complexity (1-4 objects) and by prompt style. The spec of each image is
                         its json `spec` (prompts from recaption.shapes.prompts), else its json
                         `objects` (the world's own shards: the truth), else its caption read as a
                         world description.
clip_scores(...)         CLIP score of each prompt against its image: 100 x cosine, with any
                         transformers dual encoder (recaption.quality.clip.ClipScorer: tiny-clip,
                         a folder, a hub id in the local cache).
frechet_distance(a, b)   between two sets of features (Gaussian fit, as FID).
eval_t2i(...)            all of them for generated shards, with a reference set for the Frechet
                         distance. Its features come from `feature_model` (default: the same dual
                         encoder's image tower, get_image_features before normalisation), never
                         Inception, which is not here to download; so the number is an FD in that
                         encoder's space (FD-CLIP, as Kynkaanniemi et al. 2023 argue for), not FID,
                         and is comparable only between runs with the same encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..images import decode_sample
from ..readers import ColumnConfig, ShardError, discover_shards
from ..shapes import checker
from ..training.inputs import TrainingInputError

log = logging.getLogger(__name__)

META_FIELDS = ("spec", "objects", "style", "complexity", "prompt_index", "description")


@dataclass
class Generated:
    key: str
    image: object  # RGB PIL image
    prompt: str | None
    meta: dict


def read_images(inputs: list[str], max_images: int | None = None) -> Iterator[Generated]:
    """Images with their captions (prompts) and json fields, from shards of any kind."""
    count = 0
    for shard in discover_shards(list(inputs), ColumnConfig(extra=META_FIELDS)):
        try:
            for sample in shard:
                decode_sample(sample, max_side=4096)
                if not sample.ok:
                    continue
                yield Generated(sample.key, sample.image, sample.org_caption, sample.extra)
                count += 1
                if max_images is not None and count >= max_images:
                    return
        except ShardError as exc:
            raise TrainingInputError(f"broken shard {exc}") from None


def spec_of(item: Generated) -> dict | None:
    if item.meta.get("spec"):
        return item.meta["spec"]
    if item.meta.get("objects"):
        return checker.spec_from_objects(item.meta["objects"])
    for text in (item.prompt, item.meta.get("description")):
        spec = checker.spec_from_description(text) if text else None
        if spec:
            return spec
    return None


def eval_shapes(inputs: list[str], max_images: int | None = None) -> dict:
    """The checker over shapes-world images: rates overall, by complexity, by prompt style."""
    results, specs, styles, unscored = [], [], [], 0
    for item in read_images(inputs, max_images):
        spec = spec_of(item)
        if spec is None:
            unscored += 1
            continue
        results.append(checker.check(item.image, spec))
        specs.append(spec)
        styles.append(item.meta.get("style") or "unknown")
    if not results:
        raise TrainingInputError(
            f"no image in {', '.join(inputs)} has a shapes-world prompt to check against "
            "(a json spec or objects, or a world description as its caption)"
        )
    summary = checker.summarise(results, specs, styles)
    summary["unscored"] = unscored
    summary["checker"] = "recaption.shapes.checker (no model; validated on world renders)"
    return summary


# ---- any data ----


def _scorer(model: str, device: str, batch_size: int):
    from ..quality.clip import ClipScorer

    scorer = ClipScorer(model, device, batch_size)
    scorer.setup()
    return scorer


def clip_scores(images: list, prompts: list[str], scorer) -> list[float | None]:
    """100 x cosine of each image with its prompt (texts past the encoder's window truncated)."""
    out: list[float | None] = []
    for i in range(0, len(images), scorer.batch_size):
        pixels = scorer.pixel_values(images[i : i + scorer.batch_size])
        embeddings = scorer.image_embeddings(pixels)
        out += [s.score for s in scorer.score(embeddings, prompts[i : i + scorer.batch_size])]
    return out


def image_features(images: list, scorer) -> np.ndarray:
    """The dual encoder's image features (before normalisation), float64, N x D."""
    import torch

    rows = []
    for i in range(0, len(images), scorer.batch_size):
        pixels = scorer.pixel_values(images[i : i + scorer.batch_size]).to(scorer.device, scorer.model.dtype)
        with torch.inference_mode():
            features = scorer.model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
        rows.append(features.float().cpu().numpy())
    return np.concatenate(rows).astype(np.float64)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to two feature
    sets (rows are samples). tr (S_a S_b)^1/2 = sum of sqrt of the eigenvalues of
    S_a^1/2 S_b S_a^1/2, which is symmetric, so no complex matrix square root is needed."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a Frechet distance needs at least two samples on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    value = (
        ((mu_a - mu_b) ** 2).sum()
        + np.trace(s_a)
        + np.trace(s_b)
        - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    )
    return float(max(value, 0.0))


def eval_t2i(
    generated: list[str],
    reference: list[str] | None = None,
    *,
    clip_model: str = "tiny-clip",
    feature_model: str | None = None,
    shapes: bool = True,
    max_images: int | None = None,
    device: str = "auto",
    batch_size: int = 64,
) -> dict:
    """Prompt alignment of generated shards: the shapes checker (when the images carry shapes
    prompts), mean CLIP score with `clip_model`, and, given `reference` shards, the Frechet
    distance of `feature_model`'s image features (default: clip_model's) between the two sets."""
    items = list(read_images(generated, max_images))
    if not items:
        raise TrainingInputError(f"no readable images in {', '.join(generated)}")
    report: dict = {"images": len(items)}
    if shapes and any(spec_of(i) for i in items):
        report["shapes"] = eval_shapes(generated, max_images)
    scorer = _scorer(clip_model, device, batch_size)
    scored = [i for i in items if i.prompt]
    values = [
        v for v in clip_scores([i.image for i in scored], [i.prompt for i in scored], scorer) if v is not None
    ]
    report["clip_score"] = {
        "mean": round(float(np.mean(values)), 4) if values else None,
        "std": round(float(np.std(values)), 4) if values else None,
        "images": len(values),
        **scorer.provenance(),
    }
    if reference:
        features_scorer = (
            scorer if feature_model in (None, clip_model) else _scorer(feature_model, device, batch_size)
        )
        ref = [r.image for r in read_images(reference, max_images)]
        fd = frechet_distance(
            image_features([i.image for i in items], features_scorer), image_features(ref, features_scorer)
        )
        report["frechet_distance"] = {
            "value": round(fd, 4),
            "encoder": features_scorer.model_name,
            "features": "get_image_features (projected, not normalised)",
            "generated": len(items),
            "reference": len(ref),
            "note": "an FD in this encoder's feature space, not Inception FID; compare runs with one encoder",
        }
    return report


__all__ = ["clip_scores", "eval_shapes", "eval_t2i", "frechet_distance", "image_features", "read_images"]
