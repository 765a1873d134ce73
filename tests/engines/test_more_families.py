"""The families added for today's captioners (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, InternVL,
Florence-2), each with a tiny random model of its architecture built from config, as in
test_model_families.py: detected, prompted in its format, batched captions equal to one image
at a time (also when a batch is split into smaller ones), and `recap caption` end to end.
Tiny random models only: real weights are not reachable where these tests run."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from recaption.cli import app
from recaption.config import CaptionConfig
from recaption.engines.transformers_engine import TransformersCaptioner
from recaption.models.processors import image_only
from recaption.models.registry import PAPER_PROMPT
from recaption.models.tiny import _build_tokenizer

from ..conftest import write_shards

SMALL_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
CHATML = (  # Qwen's and InternVL's chat format; `image` is how each marks the image
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _save(model, tok, end: int, folder) -> None:
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = end, tok.pad_token_id
    model.save_pretrained(folder)


def tiny_qwen(folder, kind: str):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: a 28 (32) px unit per image token, images from 4 to 16
    units, so the 3 test images get different token counts."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _build_tokenizer(
        ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"),
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    ids = {
        f"{name}_id": tok.convert_tokens_to_ids(f"<|{token}|>")
        for name, token in [
            ("image_token", "image_pad"),
            ("video_token", "video_pad"),
            ("vision_start_token", "vision_start"),
            ("vision_end_token", "vision_end"),
        ]
    }
    end = tok.convert_tokens_to_ids("<|im_end|>")
    # mrope: the rotary halves of a 16-wide head split over (time, height, width).
    text = dict(
        SMALL_TEXT,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=end,
        pad_token_id=tok.pad_token_id,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]},
    )
    patch = 16 if kind == "qwen3_vl" else 14
    if kind == "qwen2_vl":
        vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=patch)
        config, model, processor = "Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"
    elif kind == "qwen2_5_vl":
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            patch_size=patch,
            window_size=56,
            fullatt_block_indexes=[1],
        )
        config, model, processor = (
            "Qwen2_5_VLConfig",
            "Qwen2_5_VLForConditionalGeneration",
            "Qwen2_5_VLProcessor",
        )
    else:
        text["head_dim"] = 16
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=32,
            patch_size=patch,
            num_position_embeddings=64,
            deepstack_visual_indexes=[1],
        )
        config, model, processor = "Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"
    torch.manual_seed(0)
    model = getattr(transformers, model)(
        getattr(transformers, config)(text_config=text, vision_config=vision, **ids)
    )
    _save(model, tok, end, folder)
    unit = patch * 2
    images = Qwen2VLImageProcessorPil(
        min_pixels=unit * unit * 4,
        max_pixels=unit * unit * 16,
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
    )
    # Built without a video processor: transformers' needs torchvision (see models/processors.py).
    template = CHATML.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
    image_only(getattr(transformers, processor))(images, tok, chat_template=template).save_pretrained(folder)


def tiny_gemma3(folder):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = _build_tokenizer(
        ("<start_of_turn>", "<end_of_turn>"),
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    )
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    config = Gemma3Config(
        text_config=dict(
            SMALL_TEXT,
            num_hidden_layers=2,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=16,
            query_pre_attn_scalar=16,
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=end,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=7,
        ),
        mm_tokens_per_image=4,  # 16 patches pooled to 4 tokens
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    torch.manual_seed(0)
    _save(Gemma3ForConditionalGeneration(config), tok, end, folder)
    Gemma3Processor(
        Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
        tok,
        chat_template=GEMMA3_TEMPLATE,
        image_seq_length=4,
    ).save_pretrained(folder)


def tiny_internvl(folder):
    """InternVL: 28 px tiles (1 token each) by aspect ratio, up to 4, plus a thumbnail."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tok = _build_tokenizer(
        ("<|im_start|>", "<|im_end|>"),
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    end = tok.convert_tokens_to_ids("<|im_end|>")
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        text_config=dict(
            SMALL_TEXT,
            model_type="qwen2",
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=end,
            pad_token_id=tok.pad_token_id,
        ),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=1,
        tie_word_embeddings=False,  # tied, this seed's captions are all special tokens (empty text)
    )
    torch.manual_seed(0)
    _save(InternVLForConditionalGeneration(config), tok, end, folder)
    images = GotOcr2ImageProcessorPil(size={"height": 28, "width": 28}, crop_to_patches=True, max_patches=4)
    image_only(InternVLProcessor)(
        images, tok, image_seq_length=1, chat_template=CHATML.replace("IMAGE", "<IMG_CONTEXT>\n")
    ).save_pretrained(folder)


def tiny_florence2(folder):
    """Florence-2: a DaViT vision tower (2 stages: 32 px -> 4x4) into a BART encoder-decoder."""
    from transformers import (
        BartConfig,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _build_tokenizer(("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"))
    bos, eos = tok.bos_token_id, tok.eos_token_id
    # BART's conventions: the decoder starts from the end token, and one is forced at the limit.
    text = BartConfig(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        decoder_start_token_id=eos,
        forced_eos_token_id=eos,
    )
    vision = dict(
        depths=[1, 1],
        patch_size=[7, 3],
        patch_stride=[4, 2],
        patch_padding=[3, 1],
        patch_prenorm=[False, True],
        embed_dim=[16, 32],
        num_heads=[2, 2],
        num_groups=[2, 2],
        window_size=2,
        projection_dim=32,
        drop_path_rate=0.0,
    )
    config = Florence2Config(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=False,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config)
    with torch.no_grad():  # random weights: keep the end token from winning, so captions run to the limit
        model.lm_head.weight[eos].zero_()
    model.save_pretrained(folder)
    # 16 patch tokens plus the pooled one
    images = CLIPImageProcessorPil(
        size={"height": 32, "width": 32}, do_center_crop=False, image_seq_length=17
    )
    Florence2Processor(images, tok).save_pretrained(folder)


CHATML_START = "<|im_start|>user\n{image}Please generate a detailed caption"
FAMILIES = {
    "qwen2-vl": (
        lambda d: tiny_qwen(d, "qwen2_vl"),
        "qwen-vl",
        CHATML_START.format(image="<|vision_start|><|image_pad|><|vision_end|>"),
    ),
    "qwen2.5-vl": (
        lambda d: tiny_qwen(d, "qwen2_5_vl"),
        "qwen-vl",
        CHATML_START.format(image="<|vision_start|><|image_pad|><|vision_end|>"),
    ),
    "qwen3-vl": (
        lambda d: tiny_qwen(d, "qwen3_vl"),
        "qwen-vl",
        CHATML_START.format(image="<|vision_start|><|image_pad|><|vision_end|>"),
    ),
    "gemma3": (
        tiny_gemma3,
        "gemma3",
        "<start_of_turn>user\n<start_of_image>Please generate a detailed caption",
    ),
    "internvl": (tiny_internvl, "internvl", CHATML_START.format(image="<IMG_CONTEXT>\n")),
    "florence-2": (tiny_florence2, "florence-2", "<MORE_DETAILED_CAPTION>"),
}
IMAGES = [  # different shapes: different token or tile counts where the family's vary
    Image.new("RGB", (60, 30), (200, 20, 20)),
    Image.new("RGB", (30, 70), (20, 20, 200)),
    Image.new("RGB", (40, 40), (20, 180, 20)),
]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Each family's tiny model, built once for this module (about 1 s each)."""
    built = {}

    def folder(name):
        if name not in built:
            built[name] = tmp_path_factory.mktemp(name)
            FAMILIES[name][0](built[name])
        return built[name]

    return folder


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_prompts_and_captions_in_batches(name, model_dirs):
    _, family, prompt_start = FAMILIES[name]
    captioner = TransformersCaptioner(
        CaptionConfig(model=str(model_dirs(name)), max_new_tokens=8, device="cpu")
    )
    captioner.setup()
    assert captioner.family.name == family
    prompt = captioner.plain_prompt.removeprefix("<|begin_of_text|>")
    assert prompt.startswith(prompt_start), prompt
    inputs = captioner.prepare(IMAGES, [captioner.plain_prompt] * 3)
    batch = captioner.generate(inputs)
    alone = [captioner.generate(captioner.prepare([im], [captioner.plain_prompt]))[0] for im in IMAGES]
    captioner.max_rows = 2  # as after an out-of-memory back-off: the batch split into 2 + 1 rows
    split = captioner.generate(inputs)
    assert [g.text for g in batch] == [g.text for g in alone] == [g.text for g in split]
    assert all(g.text and g.num_tokens == 8 and g.truncated for g in batch)


def test_dynamic_resolution_families_give_images_their_own_token_counts(model_dirs):
    """Qwen-VL and InternVL: the image token count follows the image (so prompts are padded per
    batch, never precomputed), and Qwen's max_pixels lowers it."""

    def image_tokens(name, image_token, images=IMAGES, **options):
        config = CaptionConfig(model=str(model_dirs(name)), device="cpu", **options)
        captioner = TransformersCaptioner(config)
        captioner.setup()
        assert not captioner.family.fixed_image_tokens
        image_id = captioner.processor.tokenizer.convert_tokens_to_ids(image_token)
        inputs = captioner.prepare(images, [captioner.plain_prompt] * len(images))
        return (inputs["input_ids"] == image_id).sum(dim=1).tolist()

    assert len(set(image_tokens("internvl", "<IMG_CONTEXT>"))) > 1
    assert len(set(image_tokens("qwen2-vl", "<|image_pad|>"))) > 1
    # 112x56 px is 4x2 units of 28 px (one token each after the 2x2 merge); max_pixels 3136 allows
    # 4 units. Both spellings: transformers 5.24 maps max_pixels onto size["longest_edge"].
    large = [Image.new("RGB", (112, 56), (200, 20, 20))]
    assert image_tokens("qwen2-vl", "<|image_pad|>", large) == [8]
    for option in ["max_pixels=3136", 'size={"shortest_edge": 784, "longest_edge": 3136}']:
        [tokens] = image_tokens("qwen2-vl", "<|image_pad|>", large, processor_options=[option])
        assert tokens <= 4, (option, tokens)


def test_gemma3_pan_and_scan_is_off_unless_asked(model_dirs):
    folder = str(model_dirs("gemma3"))
    default = TransformersCaptioner(CaptionConfig(model=folder, device="cpu"))
    default.setup()
    asked = TransformersCaptioner(
        CaptionConfig(model=folder, device="cpu", processor_options={"do_pan_and_scan": True})
    )
    asked.setup()
    assert default.processor.image_processor.do_pan_and_scan is False
    assert asked.processor.image_processor.do_pan_and_scan is True


def test_processor_options_are_checked_and_recorded(model_dirs):
    from recaption.models.loading import ModelError

    config = CaptionConfig(
        model=str(model_dirs("qwen2-vl")), device="cpu", processor_options=["max_pixls=3136"]
    )  # misspelt: refused, not ignored
    with pytest.raises(ModelError, match="max_pixls: Qwen2VLProcessor has no such setting"):
        TransformersCaptioner(config).setup()
    assert CaptionConfig(processor_options=["max_pixels=3136", "do_resize=true"]).provenance()[
        "processor_options"
    ] == {"do_resize": True, "max_pixels": 3136}
    assert "processor_options" not in CaptionConfig().provenance()  # older output still resumes
    with pytest.raises(ValueError, match="give KEY=VALUE"):
        CaptionConfig(processor_options=["max_pixels"])


def test_florence2_task_tokens(model_dirs):
    """The paper's prompt means <MORE_DETAILED_CAPTION>; a task token passes through; other free
    text (and so --conditional) is refused when the engine starts, in one line."""
    from recaption.models.registry import FLORENCE2

    assert FLORENCE2.render_prompt(None, PAPER_PROMPT) == "<MORE_DETAILED_CAPTION>"
    assert FLORENCE2.render_prompt(None, "<CAPTION>") == "<CAPTION>"
    folder = str(model_dirs("florence-2"))
    named = TransformersCaptioner(
        CaptionConfig(model=folder, device="cpu", max_new_tokens=4, passes=["short=<CAPTION>"])
    )
    named.setup()
    [short] = named.generate(named.prepare(IMAGES[:1], [named.preparer.render("<CAPTION>")]))
    assert short.num_tokens == 4 and short.truncated
    for config in [
        CaptionConfig(model=folder, device="cpu", prompt="Describe the image."),
        CaptionConfig(model=folder, device="cpu", conditional=True),
    ]:
        with pytest.raises(ValueError, match="takes a task token, not free text"):
            TransformersCaptioner(config).setup()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_recap_caption_end_to_end(name, model_dirs, tmp_path):
    [shard] = write_shards(tmp_path / "in", 1, 3)
    result = CliRunner().invoke(
        app,
        [
            "caption",
            shard,
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(model_dirs(name)),
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert len(rows) == 3 and all(r["status"] == "ok" and r["re_caption"] for r in rows), rows


def test_processor_option_reaches_the_output_marker(model_dirs, tmp_path):
    [shard] = write_shards(tmp_path / "in", 1, 2)
    result = CliRunner().invoke(
        app,
        [
            "caption",
            shard,
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(model_dirs("qwen2-vl")),
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
            "--processor-option",
            "max_pixels=3136",
        ],
    )
    assert result.exit_code == 0, result.output
    marker = json.loads((tmp_path / "out" / "00000.done").read_text())
    assert marker["processor_options"] == {"max_pixels": 3136}


def test_models_lists_the_new_families():
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for family in ("qwen-vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl", "florence-2"):
        assert family in result.output, result.output


def test_a_malformed_processor_option_is_one_line(tmp_path):
    [shard] = write_shards(tmp_path / "in", 1, 1)
    result = CliRunner().invoke(
        app, ["caption", shard, "-o", str(tmp_path / "out"), "--processor-option", "max_pixels"]
    )
    assert result.exit_code == 2 and "give KEY=VALUE" in result.output, result.output


@pytest.mark.parametrize("name", ["qwen2-vl", "qwen2.5-vl"])
def test_qwen_inputs_through_the_fast_path_equal_the_processors(name, model_dirs):
    """Qwen's pixels come from recaption.preprocess (faster: docs/benchmarks.md); the prepared
    batch equals what the processor alone gives: token ids, grids, pixels."""
    from recaption.models.processors import load_processor
    from recaption.preprocess import FastImageProcessor

    captioner = TransformersCaptioner(CaptionConfig(model=str(model_dirs(name)), device="cpu"))
    captioner.setup()
    assert isinstance(captioner.processor.image_processor, FastImageProcessor)
    ours = captioner.prepare(IMAGES, [captioner.plain_prompt] * 3)
    plain = load_processor(str(model_dirs(name)), captioner.model.config.model_type)
    plain.tokenizer.padding_side = "left"
    theirs = plain(images=IMAGES, text=[captioner.plain_prompt] * 3, return_tensors="pt", padding=True)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    assert torch.allclose(ours["pixel_values"].float(), theirs["pixel_values"].float(), atol=1e-5)


def test_the_qwen_preparer_travels_to_loader_workers(model_dirs):
    """Loader workers get a pickled copy of the preparer: the image-only processor (no
    torchvision) and the fast image path included."""
    import pickle

    captioner = TransformersCaptioner(CaptionConfig(model=str(model_dirs("qwen2-vl")), device="cpu"))
    captioner.setup()
    copy = pickle.loads(pickle.dumps(captioner.preparer))
    prompts = [captioner.plain_prompt] * 3
    ours, theirs = copy.prepare(IMAGES, prompts), captioner.prepare(IMAGES, prompts)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
