"""CLIP scores with open_clip models (`--clip-model open_clip:FOLDER|hf-hub:ORG/NAME|ARCH:PRETRAINED`,
or a folder holding open_clip_config.json): the same 100 x cosine and long-text rule as the
transformers scorer (docs/quality.md). open_clip needs torchvision: `pip install 'recaption[vision]'`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from .clip import ClipModelError, TextScoring, _normalised

log = logging.getLogger(__name__)

PREFIX = "open_clip:"
CONFIG_FILE = "open_clip_config.json"


def is_open_clip(name: str) -> bool:
    return name.startswith(PREFIX) or (Path(name).expanduser() / CONFIG_FILE).is_file()


def open_clip_spec(name: str) -> tuple[str, str | None]:
    """(model_name, pretrained) for open_clip.create_model_and_transforms, or ClipModelError."""
    spec = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if not spec:
        raise ClipModelError(f"--clip-model {name}: say which open_clip model after {PREFIX}")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not (folder / CONFIG_FILE).is_file():
            raise ClipModelError(
                f"--clip-model {name}: {folder} has no {CONFIG_FILE} (not an open_clip folder)")
        return f"local-dir:{folder.resolve()}", None
    if spec.startswith("hf-hub:"):
        return spec, None
    arch, _, pretrained = spec.partition(":")
    return arch, pretrained or None


class OpenClipScorer(TextScoring):
    """The ClipScorer interface over an open_clip model (loads in `setup()`)."""

    library = "open_clip"

    def setup(self) -> None:
        arch, pretrained = open_clip_spec(self.model_name)
        try:
            import open_clip
        except ImportError as exc:
            raise ClipModelError(
                f"open_clip models need open_clip and torchvision: pip install 'recaption[vision]' ({exc})"
            ) from None
        from ..hardware import pick_device

        if not arch.startswith(("local-dir:", "hf-hub:")) and arch not in open_clip.list_models():
            raise ClipModelError(f"--clip-model {self.model_name}: open_clip has no architecture {arch} "
                                 "(open_clip.list_models() lists them)")
        self.device = pick_device(self.requested_device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained,
                                                                         device=self.device)
            self.tokenizer = open_clip.get_tokenizer(arch)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            reason = " ".join(str(exc).split())
            raise ClipModelError(f"cannot load open_clip model {self.model_name}: {reason}") from exc
        self.model = model.eval()
        self.preprocess = preprocess
        self.window = int(self.tokenizer.context_length)
        self.spec = (arch, pretrained)
        log.info("open_clip scorer %s on %s, text window %d", arch, self.device, self.window)

    def _origin(self) -> tuple[str | None, str | None]:
        return getattr(self, "spec", (None, None))  # (architecture, pretrained tag) once set up

    @property
    def image_processor_call(self):
        return functools.partial(_preprocessed, self.preprocess)

    def image_embeddings(self, pixel_values):
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(pixel_values.to(self.device))
        return _normalised(features)

    def text_embeddings(self, texts: list[str]):
        import torch

        with torch.inference_mode():
            features = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return _normalised(features)

    def token_counts(self, texts: list[str]) -> list[int]:
        """open_clip's tokenizers cut silently: count with the underlying encoder."""
        encode = getattr(self.tokenizer, "encode", None)  # SimpleTokenizer: BPE ids, no specials
        if encode is not None:
            return [len(encode(t)) + 2 for t in texts]  # + start and end of text
        inner = self.tokenizer.tokenizer  # HFTokenizer
        return [len(ids) for ids in inner(texts, truncation=False)["input_ids"]]


def _preprocessed(preprocess, images: list):
    """open_clip's image transform over a list of images (picklable, for loader workers)."""
    import torch

    return torch.stack([preprocess(image) for image in images])
