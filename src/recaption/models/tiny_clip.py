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
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path())
    # CLIP pools the text at its end token: every text gets begin ... end, padded on the right.
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    tokenizer.padding_side = "right"
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=TEXT_WINDOW,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.model_max_length = TEXT_WINDOW
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(
        folder
    )
