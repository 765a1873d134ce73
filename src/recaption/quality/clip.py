"""CLIP scores (100 x cosine of image and text embeddings) from any transformers dual encoder, and
which model a `--clip-model` name loads (`resolve_clip_model`: built in, a folder, or a hub id,
never waiting when there is no network). docs/quality.md ("CLIP scores") says the rules.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from ..models.hub import cached_snapshot, is_hub_id, require_on_hub
from ..spine.errors import RecaptionError

log = logging.getLogger(__name__)

# The paper scored with CLIP ViT-L/14; real users get it by default (a 1.7 GB download once).
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")


class ClipModelError(RecaptionError, ValueError):
    """A CLIP model that cannot be used here, in one line that says what to do instead."""


@dataclass
class TextScore:
    score: float | None
    truncated: bool | None


@dataclass(frozen=True)
class ClipSource:
    name: str  # as asked for: tiny-clip, a folder, a hub id
    path: str  # what from_pretrained loads: a local folder, or the hub id to download
    builtin: bool = False
    version: str | None = None  # built-in models: which build made the scores
    note: str | None = None  # what a reader must know beside its scores
    revision: str | None = None  # hub commit, when read from the local Hugging Face cache


def local_choices(option: str = "--clip-model") -> str:
    from ..models.tiny_clip import TINY_CLIP_NAME

    return (f"Give {option} one that is here: {TINY_CLIP_NAME} (built in; trained on the synthetic "
            "shapes world only, its scores mean nothing for real photos), or a folder with a "
            "transformers CLIP / SigLIP model (save_pretrained, or `hf download MODEL --local-dir "
            "DIR` on a machine with a network).")


def resolve_clip_model(name: str, option: str = "--clip-model") -> ClipSource:
    """Where `name` loads from, or ClipModelError at once (see the module's docstring), its
    message naming `option` (what the user typed the name into)."""
    from ..models.tiny_clip import builtin_clip

    builtin = builtin_clip(name)
    if builtin is not None:
        folder, version, note = builtin
        if not (folder / "config.json").is_file():
            raise ClipModelError(f"the built-in CLIP {name} is missing from this installation ({folder})")
        return ClipSource(name, str(folder), builtin=True, version=version, note=note)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ClipModelError(f"{option} {name}: {path} is not a transformers model folder "
                                 "(no config.json in it)")
        return ClipSource(name, str(path.resolve()))
    if not is_hub_id(name):
        raise ClipModelError(f"{option} {name}: no such folder, and not a hub id (owner/name). "
                             f"{local_choices(option)}")
    cached = cached_snapshot(name, (_WEIGHTS, _TOKENIZER, ("preprocessor_config.json",)))
    if cached is not None:
        return ClipSource(name, str(cached), revision=cached.name)
    require_on_hub(name, f"CLIP model {name}", local_choices(option), ClipModelError)
    return ClipSource(name, name)


class TextScoring:
    """What every scorer shares (transformers CLIP here, open_clip in open_clip_scorer.py):
    100 x cosine of each row's image and text, long texts truncated or chunked (long_text.py),
    and the provenance recorded beside the scores. A scorer loads in `setup()` and provides
    `window`, `image_processor_call` (the CPU half: a picklable callable, for loader workers),
    `text_embeddings(texts)` (normalised, cut at the window), `token_counts(texts)` and
    `_origin()` (what its provenance names as the model's path and revision)."""

    library = "transformers"
    builtin, version, note = False, None, None

    def __init__(self, model: str, device: str = "auto", batch_size: int = 64, long_text: str = "truncate"):
        from ..config import check_long_text

        self.long_text = check_long_text(long_text)
        self.model_name = model
        self.requested_device = device
        self.batch_size = batch_size
        self.model = None

    def provenance(self) -> dict:
        """What to record beside the score columns it made (the parquet file's metadata)."""
        path, revision = self._origin()
        return {"clip_model": self.model_name, "clip_model_builtin": self.builtin,
                "clip_model_version": self.version, "clip_model_note": self.note, "clip_model_path": path,
                "clip_model_revision": revision,
                "clip_library": self.library, "clip_text_window": getattr(self, "window", None),
                "clip_long_text": self.long_text}

    def pixel_values(self, images: list):
        return self.image_processor_call(images)

    def truncated(self, texts: list[str]) -> list[bool]:
        return [n > self.window for n in self.token_counts(texts)]

    def text_features(self, texts: list[str]):
        """(normalised embeddings, whether each text was cut) under the long-text rule."""
        counts = self.token_counts(texts)
        if self.long_text == "truncate" or all(n <= self.window for n in counts):
            return self.text_embeddings(texts), [n > self.window for n in counts]
        from .long_text import sentence_chunks

        pieces, owners, cut = [], [], []
        for i, (text, n) in enumerate(zip(texts, counts, strict=True)):
            chunks, too_long = [text], False  # within the window: embedded whole
            if n > self.window:
                chunks, too_long = sentence_chunks(text, lambda t: self.token_counts([t])[0], self.window)
            pieces += chunks
            owners += [i] * len(chunks)
            cut.append(too_long)
        chunk_embeddings = self.text_embeddings(pieces)
        import torch

        summed = torch.zeros(len(texts), chunk_embeddings.shape[-1], dtype=chunk_embeddings.dtype,
                             device=chunk_embeddings.device)
        summed.index_add_(0, torch.tensor(owners, device=summed.device), chunk_embeddings)
        return _normalised(summed), cut

    def score(self, image_embeddings, texts: list[str | None]) -> list[TextScore]:
        """Scores of each text against the image embedding in the same row."""
        present = [i for i, t in enumerate(texts) if t]
        scores = [TextScore(None, None)] * len(texts)
        for start in range(0, len(present), self.batch_size):
            rows = present[start : start + self.batch_size]
            embeddings, cut = self.text_features([texts[i] for i in rows])
            cosine = (image_embeddings[rows] * embeddings).sum(-1).float().cpu().tolist()
            for i, c, was_cut in zip(rows, cosine, cut, strict=True):
                scores[i] = TextScore(round(100.0 * c, 4), was_cut)
        return scores


class ClipScorer(TextScoring):
    """A transformers dual encoder (see the module's docstring)."""

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str = "auto", batch_size: int = 64,
                 long_text: str = "truncate"):
        from ..models.tiny_clip import builtin_clip_facts

        super().__init__(model, device, batch_size, long_text)
        self.source: ClipSource | None = None
        facts = builtin_clip_facts(model)
        self.builtin = facts is not None
        # Known before loading, so `recap score` can say it and skip files this model scored.
        self.version, self.note = facts or (None, None)

    def setup(self) -> None:
        # Where from, first: a model that is not here fails before torch and transformers load.
        self.source = resolve_clip_model(self.model_name)
        source = self.source.path
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        from ..hardware import pick_device

        self.device = pick_device(self.requested_device)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            model = AutoModel.from_pretrained(source, dtype=dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.image_processor = AutoImageProcessor.from_pretrained(source)
        except (OSError, ValueError, KeyError) as exc:
            raise ClipModelError(f"cannot load CLIP model {self.model_name} ({source}): "
                                 f"{' '.join(str(exc).split())}") from exc
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ClipModelError(f"--clip-model {self.model_name} is a {type(model).__name__}, not a dual "
                                 "encoder (CLIP / SigLIP / long-text CLIP with get_image_features and "
                                 "get_text_features)")
        self.model = model.to(self.device).eval()
        self.tokenizer.padding_side = "right"  # absolute positions: text must start at position 0
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.window = int(text_config.max_position_embeddings)
        self.pad_to_window = self.model.config.model_type == "siglip"  # trained on max-length padding
        log.info("CLIP scorer %s on %s, text window %d", source, self.device, self.window)

    def _origin(self) -> tuple[str | None, str | None]:
        return (self.source.path, self.source.revision) if self.source else (None, None)

    @property
    def image_processor_call(self):
        return functools.partial(_pixel_values, self.image_processor)

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
            tokens = self.tokenizer(texts, truncation=True, max_length=self.window, return_tensors="pt",
                                    padding="max_length" if self.pad_to_window else True).to(self.device)
            # SigLIP was trained on max-length padding with no attention mask; CLIP masks padding.
            keys = ("input_ids",) if self.pad_to_window else ("input_ids", "attention_mask")
            features = self.model.get_text_features(**{k: v for k, v in tokens.items() if k in keys})
        return _normalised(features)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Each text's tokens, special tokens included, uncut."""
        return [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]


def _pixel_values(image_processor, images: list):
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


def _normalised(features):
    embeddings = getattr(features, "pooler_output", features)  # transformers 5 returns an output object
    return embeddings / embeddings.norm(dim=-1, keepdim=True)
