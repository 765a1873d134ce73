"""Each model-table family, with a tiny random model of its architecture built from config:
prompted in its format, captioned in batches, the same captions as one image at a time."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from recaption.config import CaptionConfig
from recaption.engines.transformers_engine import TransformersCaptioner
from recaption.models.tiny import LLAMA3_CHAT_TEMPLATE, _build_tokenizer


def tiny_llava(folder, chat_template: str | None):
    from transformers import CLIPVisionConfig

    from recaption.models.llava_parts import llava_processor, small_llava

    tok = _build_tokenizer()
    tok.chat_template = chat_template
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    small_llava(
        tok, vision, width=32, layers=1, intermediate=64, heads=2, max_positions=512, seed=0
    ).save_pretrained(folder)
    llava_processor(tok, 28, 14, chat_template).save_pretrained(folder)


def tiny_llava_next(folder):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = _build_tokenizer()
    grid = [[28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=grid
    )
    LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        chat_template=LLAMA3_CHAT_TEMPLATE,
    ).save_pretrained(folder)


IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}<image>{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tiny_idefics3(folder):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tok = _build_tokenizer()
    tiles = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                "<fake_token_around_image>",
                "<global-img>",
                "<end_of_utterance>",
                *tiles,
            ]
        }
    )
    end = tok.convert_tokens_to_ids("<end_of_utterance>")
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tok.bos_token_id,
            eos_token_id=end,
            pad_token_id=tok.pad_token_id,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = end, tok.pad_token_id
    model.save_pretrained(folder)
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 56}, max_image_size={"longest_edge": 28}, do_image_splitting=True
    )
    Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=1, chat_template=IDEFICS3_TEMPLATE
    ).save_pretrained(folder)


VICUNA = None  # no chat template: the family's fallback "USER: <image>\\n{prompt} ASSISTANT:"
FAMILIES = {
    "llava-llama-3": (
        lambda d: tiny_llava(d, LLAMA3_CHAT_TEMPLATE),
        "llava-1.5",
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nPlease generate a detailed caption",
    ),
    "llava-1.5-vicuna": (
        lambda d: tiny_llava(d, VICUNA),
        "llava-1.5",
        "USER: <image>\nPlease generate a detailed caption",
    ),
    "idefics3": (tiny_idefics3, "idefics3", "<|im_start|>User:<image>Please generate a detailed caption"),
    "llava-next": (
        tiny_llava_next,
        "llava-next",
        "<|start_header_id|>user<|end_header_id|>\n\n<image>\nPlease",
    ),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_prompts_and_captions_in_batches(name, tmp_path):
    build, family, prompt_start = FAMILIES[name]
    build(tmp_path / name)
    captioner = TransformersCaptioner(
        CaptionConfig(model=str(tmp_path / name), max_new_tokens=8, device="cpu")
    )
    captioner.setup()
    assert captioner.family.name == family
    prompt = captioner.plain_prompt.removeprefix("<|begin_of_text|>")
    assert prompt.startswith(prompt_start), prompt
    images = [
        Image.new("RGB", (60, 30), (200, 20, 20)),
        Image.new("RGB", (30, 70), (20, 20, 200)),
        Image.new("RGB", (40, 40), (20, 180, 20)),
    ]
    batch = captioner.generate(captioner.prepare(images, [captioner.plain_prompt] * 3))
    alone = [captioner.generate(captioner.prepare([im], [captioner.plain_prompt]))[0] for im in images]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert all(g.text and g.num_tokens == 8 for g in batch)
