"""The built-in offline CLIPs: `tiny-clip`, trained on the synthetic shapes world and shipped
(`benchmarks/train_tiny_clip.py` retrains it; its scores mean nothing for real photos:
TINY_CLIP_NOTE), and `tiny-clip-random`, seeded random weights built into the cache (plumbing
tests only)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .tiny import cached_build, tiny_model_path

TINY_CLIP_NAME = "tiny-clip"
TINY_CLIP_RANDOM_NAME = "tiny-clip-random"
# Recorded with every score column it makes (a rerun of `recap score` rescores files scored by an
# older version). v1 was the random-weight model now called tiny-clip-random.
TINY_CLIP_VERSION = "v2-shapes-world"
TINY_CLIP_RANDOM_VERSION = "v1-random"
TEXT_WINDOW = 77  # CLIP's text positions

TINY_CLIP_NOTE = (
    "tiny-clip: trained on the synthetic shapes world only; its scores rank shapes-world captions "
    "and mean nothing for real photos"
)
TINY_CLIP_RANDOM_NOTE = "tiny-clip-random: random weights; its scores mean nothing"


def shipped_tiny_clip() -> Path:
    """The trained shapes-world CLIP shipped in the package (recaption/data/tiny-clip)."""
    return Path(str(resources.files("recaption") / "data" / "tiny-clip"))


def builtin_clip(name: str) -> tuple[Path, str, str] | None:
    """(folder, version, note) of a built-in CLIP (tiny-clip-random built on first use), else None."""
    facts = builtin_clip_facts(name)
    if facts is None:
        return None
    if name == TINY_CLIP_NAME:
        return shipped_tiny_clip(), *facts
    return cached_build(f"tiny-clip-{TINY_CLIP_RANDOM_VERSION}", build_tiny_clip_random), *facts


def builtin_clip_facts(name: str) -> tuple[str, str] | None:
    """(version, note) of a built-in CLIP without building or loading anything; None otherwise."""
    return {
        TINY_CLIP_NAME: (TINY_CLIP_VERSION, TINY_CLIP_NOTE),
        TINY_CLIP_RANDOM_NAME: (TINY_CLIP_RANDOM_VERSION, TINY_CLIP_RANDOM_NOTE),
    }.get(name)


def build_tiny_clip_random(folder: Path) -> None:
    parts = small_clip(width=32, intermediate=64, heads=2, layers=2, image_size=64, patch_size=16,
                       projection_dim=16, text_length=TEXT_WINDOW, seed=0)
    for part in parts:  # the model, its tokenizer and image processor
        part.save_pretrained(folder)


def small_clip(width: int, intermediate: int, heads: int, layers: int, image_size: int, patch_size: int,
               projection_dim: int, text_length: int, seed: int):
    """(CLIPModel, tokenizer, image processor) at toy widths, random weights from `seed`; the tiny
    captioner's tokenizer, wrapping texts in begin ... end (CLIP pools at the end token)."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    special = [(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)]
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A {eos}",
                                                                    special_tokens=special)
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = text_length
    tower = dict(hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers,
                 num_attention_heads=heads)
    text = dict(**tower, vocab_size=len(tokenizer), max_position_embeddings=text_length,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(**tower, image_size=image_size, patch_size=patch_size)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(seed)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return CLIPModel(config), tokenizer, image_processor
