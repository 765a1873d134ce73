"""Text-to-image evaluation of generated shards (docs/dit.md, "Evaluation"): the shapes checker
with no model (`eval_shapes`), CLIP scores, the Frechet distance of a dual encoder's image
features (an FD in that encoder's space, not FID), and all of them (`eval_t2i`). Every sample read
is accounted for: an unreadable image is counted and warned about, never silently left out.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..readers import ColumnConfig, discover_shards
from ..samples.images import decode_sample
from ..shapes import checker
from ..training.inputs import TrainingInputError, shard_errors

log = logging.getLogger(__name__)

META_FIELDS = ("spec", "objects", "style", "complexity", "prompt_index", "description", "seed", "guidance")


@dataclass
class Generated:
    key: str
    image: object  # RGB PIL image
    prompt: str | None
    meta: dict
    source: str = ""  # the shard it came from

    @property
    def from_generate(self) -> bool:
        """Whether it carries recap generate's metadata (its seed and guidance)."""
        return self.meta.get("seed") is not None and self.meta.get("guidance") is not None


@dataclass
class Unreadable:
    """Samples read but not scored for an unusable image: how many, by status, and the first one."""

    count: int = 0
    by_status: Counter = field(default_factory=Counter)
    first: str | None = None

    def add(self, sample, source: str) -> None:
        self.count += 1
        self.by_status[sample.status] += 1
        if self.first is None:
            self.first = f"{source} {sample.key}: {sample.error or sample.status}"

    def report(self) -> dict:
        return {"count": self.count, "by_status": dict(sorted(self.by_status.items())), "first": self.first}

    def warn(self, where: str) -> None:
        if self.count:
            kinds = ", ".join(f"{status} {n}" for status, n in sorted(self.by_status.items()))
            log.warning("%s: %d sample(s) not scored, their image unreadable (%s); the first: %s",
                        where, self.count, kinds, self.first)


def read_images(inputs: list[str], max_images: int | None = None,
                unreadable: Unreadable | None = None) -> Iterator[Generated]:
    """Images with their captions (prompts) and json fields, from shards of any kind (several
    folders may hold shards of the same name); an unreadable one is counted in `unreadable`."""
    if max_images is not None and max_images < 1:
        raise TrainingInputError(f"--max-images {max_images}: must be at least 1 (leave it out to read every "
                                 "image)")
    count = 0
    for shard in discover_shards(list(inputs), ColumnConfig(extra=META_FIELDS), writes_by_name=False):
        with shard_errors():
            for sample in shard:
                decode_sample(sample, max_side=4096)
                if not sample.ok:
                    if unreadable is not None:
                        unreadable.add(sample, shard.source)
                    continue
                yield Generated(sample.key, sample.image, sample.org_caption, sample.extra, shard.source)
                count += 1
                if max_images is not None and count >= max_images:
                    return


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
    unreadable = Unreadable()
    items = list(read_images(inputs, max_images, unreadable))
    unreadable.warn(", ".join(inputs))
    summary = _shapes_summary(items, inputs)
    summary["unreadable"] = unreadable.count
    return summary


def _shapes_summary(items: list[Generated], inputs: list[str]) -> dict:
    results, layouts, specs, styles, unscored = [], [], [], [], 0
    for item in items:
        spec = spec_of(item)
        if spec is None:
            unscored += 1
            continue
        results.append(checker.check(item.image, spec))
        layouts.append(checker.layout_score(spec, item.image))
        specs.append(spec)
        styles.append(item.meta.get("style") or "unknown")
    if not results:
        raise TrainingInputError(f"no image in {', '.join(inputs)} has a shapes-world prompt to check "
                                 "against (a json spec or objects, or a world description as its caption)")
    summary = checker.summarise(results, specs, styles)
    summary["unscored"] = unscored
    summary["checker"] = "recaption.shapes.checker (no model; validated on world renders)"
    # Colour by cell only: what a model that paints colours before it draws shapes gets right.
    summary["layout"] = checker.summarise(layouts, specs, styles, categories=checker.LAYOUT_CATEGORIES)
    return summary


def _provenance(items: list[Generated], where: str) -> dict:
    """How many images carry generate's metadata; a warning when not all do."""
    made = sum(i.from_generate for i in items)
    out: dict = {"with_generate_metadata": made}
    if made == len(items):
        return out
    other = next(i for i in items if not i.from_generate)
    out["without_generate_metadata"] = {"count": len(items) - made, "first": f"{other.source} {other.key}"}
    if made:
        log.warning("%s: %d of %d images carry no recap generate metadata (seed, guidance), e.g. %s %s; "
                    "they are scored together with the generated ones (name only generate's folders to "
                    "score a model)", where, len(items) - made, len(items), other.source, other.key)
    else:
        log.warning("%s: none of the %d images carries recap generate metadata (seed, guidance): they are "
                    "not recap generate output (a world's own shards score as the truth)", where, len(items))
    return out


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
    value = (((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b)
             - 2 * np.sqrt(np.clip(cross, 0, None)).sum())
    return float(max(value, 0.0))


def eval_t2i(generated: list[str], reference: list[str] | None = None, *, clip_model: str = "tiny-clip",
             feature_model: str | None = None, shapes: bool = True, max_images: int | None = None,
             device: str = "auto", batch_size: int = 64) -> dict:
    """Prompt alignment of generated shards: the shapes checker (when the images carry shapes
    prompts), mean CLIP score with `clip_model`, and, given `reference` shards, the Frechet
    distance of `feature_model`'s image features (default: clip_model's) between the two sets.
    The report counts unreadable samples and the images that carry generate's metadata."""
    where = ", ".join(generated)
    unreadable = Unreadable()
    items = list(read_images(generated, max_images, unreadable))
    if not items:
        more = f" ({unreadable.count} unreadable; the first: {unreadable.first})" if unreadable.count else ""
        raise TrainingInputError(f"no readable images in {where}{more}")
    unreadable.warn(where)
    report: dict = {"images": len(items), "unreadable": unreadable.count}
    if unreadable.count:
        report["unreadable_samples"] = unreadable.report()
    report.update(_provenance(items, where))
    if shapes and any(spec_of(i) for i in items):
        report["shapes"] = _shapes_summary(items, generated)
    scorer = _scorer(clip_model, device, batch_size)
    scored = [i for i in items if i.prompt]
    values = [v for v in clip_scores([i.image for i in scored], [i.prompt for i in scored], scorer)
              if v is not None]
    report["clip_score"] = {"mean": round(float(np.mean(values)), 4) if values else None,
                            "std": round(float(np.std(values)), 4) if values else None, "images": len(values),
                            "unscored": len(items) - len(values),  # no prompt, or not scorable
                            **scorer.provenance()}
    if reference:
        same = feature_model in (None, clip_model)
        features_scorer = scorer if same else _scorer(feature_model, device, batch_size)
        ref_unreadable = Unreadable()
        ref = [r.image for r in read_images(reference, max_images, ref_unreadable)]
        ref_unreadable.warn(", ".join(reference))
        fd = frechet_distance(image_features([i.image for i in items], features_scorer),
                              image_features(ref, features_scorer))
        report["frechet_distance"] = {
            "value": round(fd, 4), "encoder": features_scorer.model_name,
            "features": "get_image_features (projected, not normalised)", "generated": len(items),
            "reference": len(ref), "reference_unreadable": ref_unreadable.count,
            "note": "an FD in this encoder's feature space, not Inception FID; compare runs with one encoder",
        }
    return report
