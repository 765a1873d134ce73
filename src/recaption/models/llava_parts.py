"""Pieces every LLaVA-1.5 model we build or convert shares: the processor (CLIP normalisation,
LLaVA-1.5's pad-to-square) and a small model from a tokenizer and a vision config."""

from __future__ import annotations

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def llava_processor(tokenizer, image_size: int, patch_size: int, chat_template: str | None, pad: bool = True,
                    strategy: str = "default"):
    """Pad to a square with the mean colour (image_aspect_ratio: pad), resize and crop to
    image_size, CLIP-normalise; the image token expands to (image_size / patch_size)^2 tokens."""
    from transformers import LlavaImageProcessor, LlavaProcessor

    image_processor = LlavaImageProcessor(do_pad=pad, size={"shortest_edge": image_size},
                                          crop_size={"height": image_size, "width": image_size},
                                          image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy=strategy, num_additional_image_tokens=1,
                          chat_template=chat_template)


def toy_vision_config(image_size: int, patch_size: int, intermediate: int, **extra):
    """The vision tower of the toy LLaVAs (the tiny captioner, train-captioner's fresh model): a
    CLIP ViT 64 wide, 2 layers, 2 heads."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=64, intermediate_size=intermediate, num_hidden_layers=2,
                            num_attention_heads=2, image_size=image_size, patch_size=patch_size, **extra)


def small_llava(tokenizer, vision_config, width: int, layers: int, intermediate: int, heads: int,
                max_positions: int, seed: int):
    """A LlavaForConditionalGeneration with a LLaMA of the given shape, random weights from `seed`,
    and the tokenizer's special tokens in its config and generation config."""
    import torch
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=max_positions, **ids)
    config = LlavaConfig(vision_config=vision_config, text_config=text, projector_hidden_act="gelu",
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    return model
