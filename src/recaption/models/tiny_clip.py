"""A tiny CLIP built deterministically from config, for scoring offline (tests, demo).

Real CLIPModel architecture at toy widths with seeded random weights, the tiny captioner's
word-level tokenizer and a 64 px CLIP image processor. Its scores carry no meaning; they exist
so scoring runs with no download. `--clip-model tiny-clip` selects it.
"""

from __future__ import annotations

from pathlib import Path

from .tiny import cached_build, tiny_model_path

TINY_CLIP_NAME = "tiny-clip"
TINY_CLIP_VERSION = "v1"
TEXT_WINDOW = 77  # CLIP's text positions


def tiny_clip_path(cache_dir: Path | None = None) -> Path:
    return cached_build(f"tiny-clip-{TINY_CLIP_VERSION}", build_tiny_clip, cache_dir)


def build_tiny_clip(folder: Path) -> None:
    model, tokenizer, image_processor = small_clip(
        width=32,
        intermediate=64,
        heads=2,
        layers=2,
        image_size=64,
        patch_size=16,
        projection_dim=16,
        text_length=TEXT_WINDOW,
        seed=0,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)


def small_clip(
    width: int,
    intermediate: int,
    heads: int,
    layers: int,
    image_size: int,
    patch_size: int,
    projection_dim: int,
    text_length: int,
    seed: int,
):
    """(CLIPModel, tokenizer, image processor) at toy widths with random weights from `seed`.

    The tokenizer is the tiny captioner's word-level one, made to wrap every text in begin ...
    end tokens (CLIP pools the text at its end token) and to pad on the right."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = text_length
    tower = dict(
        hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads
    )
    config = CLIPConfig(
        text_config=dict(
            **tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=text_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(**tower, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPModel(config), tokenizer, image_processor
