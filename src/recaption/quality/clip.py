"""CLIP scores: 100 x cosine similarity of image and text embeddings (the common CLIP-score
convention; not clamped at 0, not the 2.5 x max(cos, 0) of CLIPScore the metric).

Any transformers dual encoder with get_image_features / get_text_features: CLIPModel,
SiglipModel, or a long-text CLIP (LongCLIP converted) through AutoModel. Texts longer than the
text encoder's window (CLIP: 77 tokens) are truncated to it, and the row records that it was
(`re_clip_truncated`, `org_clip_truncated`); give a long-text CLIP to avoid it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class TextScore:
    score: float | None
    truncated: bool | None


def resolve_clip_model(name: str) -> str:
    from ..models.tiny_clip import TINY_CLIP_NAME, tiny_clip_path

    return str(tiny_clip_path()) if name == TINY_CLIP_NAME else name


class ClipScorer:
    """Loads in `setup()`. `pixel_values(images)` is the CPU half (picklable image processor)."""

    def __init__(
        self, model: str = "openai/clip-vit-large-patch14", device: str = "auto", batch_size: int = 64
    ):
        self.model_name = model
        self.requested_device = device
        self.batch_size = batch_size
        self.model = None

    def setup(self) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        from ..engines.transformers_engine import pick_device

        source = resolve_clip_model(self.model_name)
        self.device = pick_device(self.requested_device)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModel.from_pretrained(source, dtype=dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.tokenizer.padding_side = "right"  # absolute positions: text must start at position 0
        self.image_processor = AutoImageProcessor.from_pretrained(source)
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.window = int(text_config.max_position_embeddings)
        self.pad_to_window = self.model.config.model_type == "siglip"  # trained on max-length padding
        log.info("CLIP scorer %s on %s, text window %d", source, self.device, self.window)

    def pixel_values(self, images: list):
        return self.image_processor_call(images)

    @property
    def image_processor_call(self):
        """The CPU half as a picklable callable, for loader workers."""
        return _PixelValues(self.image_processor)

    def image_embeddings(self, pixel_values):
        import torch

        with torch.inference_mode():
            features = self.model.get_image_features(
                pixel_values=pixel_values.to(self.device, self.model.dtype, non_blocking=True)
            )
        return _normalised(features)

    def text_embeddings(self, texts: list[str]):
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(
                texts,
                truncation=True,
                max_length=self.window,
                return_tensors="pt",
                padding="max_length" if self.pad_to_window else True,
            ).to(self.device)
            # SigLIP was trained on max-length padding with no attention mask; CLIP masks padding.
            keys = ("input_ids",) if self.pad_to_window else ("input_ids", "attention_mask")
            features = self.model.get_text_features(**{k: v for k, v in tokens.items() if k in keys})
        return _normalised(features)

    def truncated(self, texts: list[str]) -> list[bool]:
        lengths = self.tokenizer(texts, truncation=False)["input_ids"]
        return [len(ids) > self.window for ids in lengths]

    def score(self, image_embeddings, texts: list[str | None]) -> list[TextScore]:
        """Scores of each text against the image embedding in the same row."""
        present = [i for i, t in enumerate(texts) if t]
        scores = [TextScore(None, None)] * len(texts)
        for start in range(0, len(present), self.batch_size):
            rows = present[start : start + self.batch_size]
            batch = [texts[i] for i in rows]
            cosine = (image_embeddings[rows] * self.text_embeddings(batch)).sum(-1).float().cpu().tolist()
            for i, c, cut in zip(rows, cosine, self.truncated(batch), strict=True):
                scores[i] = TextScore(round(100.0 * c, 4), cut)
        return scores


class _PixelValues:
    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, images: list):
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"]


def _normalised(features):
    embeddings = getattr(features, "pooler_output", features)  # transformers 5 returns an output object
    return embeddings / embeddings.norm(dim=-1, keepdim=True)
