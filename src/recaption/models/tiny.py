"""The built-in offline model: a tiny LLaVA-1.5 (the real architecture at toy widths, seeded random
weights, a word-level tokenizer over a fixed corpus), built once into the cache directory, so the
pipeline, tests, demo and benchmarks run with no download. Its captions carry no meaning."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TINY_MODEL_NAME = "tiny"
# Bump when the recipe below changes, so stale caches are rebuilt rather than reused.
TINY_MODEL_VERSION = "v4"
IMAGE_SIZE = 336
PATCH_SIZE = 14

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}{{ '\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>' }}{{ '\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>' }}{{ '\n\n' }}{% endif %}"
)

_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|eot_id|>", "<|pad|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<image>"]

# Words a captioner would use; the tokenizer learns its merges from these.
_CORPUS = """
Please generate a detailed caption of this image. Please be as descriptive as possible.
The image shows a red circle and a blue square on a white background. A small green triangle
sits in the top left corner next to a large yellow star. Two purple ellipses overlap near the
center. A photograph of a cat sitting on a wooden table beside a cup of coffee. An astronaut in
a white suit stands in front of a flag. A rocket launches into a clear sky, leaving a trail of
smoke. Orange, pink, brown, black, grey and cyan shapes are arranged in a row. The scene is
bright, colorful and simple, with sharp edges and flat colors.
"""


def tiny_model_path(cache_dir: Path | None = None) -> Path:
    """Return the folder of the tiny model, building it there on first use."""
    return cached_build(f"tiny-llava-{TINY_MODEL_VERSION}", build_tiny_model, cache_dir)


def cached_build(folder: str, build, cache_dir: Path | None = None) -> Path:
    """`cache/models/{folder}`, made by `build(staging_dir)` on first use."""
    cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    root = cache_dir or Path(os.environ.get("RECAPTION_CACHE") or os.path.join(cache, "recaption"))
    target = root / "models" / folder
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so concurrent workers never see a half-built model.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        build(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def shapes_vocabulary() -> str:
    """Every word the shapes world writes, so its models never see an unknown word."""
    from ..shapes.world import CELLS, COLOURS, JUNK, SHAPES, SIZES

    words = [*SHAPES, *COLOURS, *SIZES, *(c[0] for c in CELLS), *JUNK, "a", "in", "the", "and", ","]
    return " ".join(words)


def _build_tokenizer(special_tokens: tuple[str, ...] = (), named_tokens: dict[str, str] | None = None):
    """A word-level tokenizer over the corpus words (random weights then emit real words), with
    `special_tokens` added after ours and `named_tokens` (`{"image_token": "<|image_pad|>"}`)."""
    named = {"image_token": "<image>", **(named_tokens or {})}
    extra = [t for t in (*special_tokens, *named.values()) if t not in _SPECIAL_TOKENS]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        special_tokens=_SPECIAL_TOKENS + ["<unk>"] + list(dict.fromkeys(extra)), show_progress=False
    )
    tok.train_from_iterator([_CORPUS, shapes_vocabulary()], trainer=trainer)
    # Join words with spaces but none before punctuation ("left, a" rather than "left , a").
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|pad|>",
        unk_token="<unk>", extra_special_tokens=named, padding_side="left",
        chat_template=LLAMA3_CHAT_TEMPLATE)


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny LLaVA model folder (config, safetensors, tokenizer, processor) to out_dir."""
    import torch

    from .llava_parts import llava_processor, small_llava, toy_vision_config

    tokenizer = _build_tokenizer()
    vision = toy_vision_config(IMAGE_SIZE, PATCH_SIZE, intermediate=128, projection_dim=64)
    model = small_llava(tokenizer, vision, width=64, layers=2, intermediate=128, heads=2, max_positions=2048,
                        seed=seed).eval()
    with torch.no_grad():
        # Random weights: keep the end token's logit at 0 so it (almost) never wins and every
        # caption runs to max_new_tokens, as before; a trained model learns when to stop.
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.save_pretrained(out_dir)
    llava_processor(tokenizer, IMAGE_SIZE, PATCH_SIZE, LLAMA3_CHAT_TEMPLATE).save_pretrained(out_dir)
    return out_dir


TINY_TEXT_NAME = "tiny-text"
TINY_TEXT_VERSION = "v1"  # bump when build_tiny_text_model changes


def tiny_text_model_path(cache_dir: Path | None = None) -> Path:
    """The folder of the built-in text LLM (`model: tiny-text` in a passes file), built on first use."""
    return cached_build(f"tiny-text-{TINY_TEXT_VERSION}", build_tiny_text_model, cache_dir)


def build_tiny_text_model(out_dir: Path, seed: int = 1) -> Path:
    """Write a tiny Llama text LLM (seeded random weights, the captioner's tokenizer) so text-only
    passes run offline; its answers carry no meaning."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=2048, **ids)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # As the random captioner: the end token's logit held at 0, so answers run to the budget.
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
