"""recap convert-llava on tiny checkpoints written in the LLaVA repository's layout (random weights):
the converted model's logits equal a reference forward pass written from the LLaVA-repo architecture."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from recaption.models.convert_llava import ConversionError, convert_llava
from recaption.spine.errors import RecaptionError


def llama3_tokenizer(folder):
    """A small LLaMA-3-style tokenizer without an <image> token (the LLaVA repo splices images at
    IMAGE_TOKEN_INDEX = -200 instead)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|eot_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<unk>",
    ]
    tok.train_from_iterator(
        ["user assistant describe the image please a red circle detailed caption"],
        trainers.WordLevelTrainer(special_tokens=specials, show_progress=False),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    return fast


def write_llava_repo_checkpoint(
    root, vision_inside: bool, pickle: bool = False, rope_theta: float | None = None, rope_style: str = "new"
):
    """config.json with mm_* fields, LLaMA weights under model.*, projector model.mm_projector.{0,2},
    sharded safetensors with an index; the CLIP tower in its own folder (named by mm_vision_tower).
    rope_theta in the config's `rope_style`: "old" (top-level rope_theta, as transformers 4 and the
    LLaVA repo write it) or "new" (transformers 5's rope_parameters)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    src, tower = root / "llava-repo", root / "clip-tower"
    src.mkdir()
    tok = llama3_tokenizer(src)
    torch.manual_seed(0)
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        )
    )
    vision.save_pretrained(tower)
    text_config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **({"rope_theta": rope_theta} if rope_theta else {}),
    )
    llama = LlamaForCausalLM(text_config)
    tensors = {k: v.clone() for k, v in llama.state_dict().items()}
    tensors["model.mm_projector.0.weight"] = torch.randn(48, 32) * 0.2
    tensors["model.mm_projector.0.bias"] = torch.randn(48) * 0.1
    tensors["model.mm_projector.2.weight"] = torch.randn(48, 48) * 0.2
    tensors["model.mm_projector.2.bias"] = torch.randn(48) * 0.1
    if vision_inside:
        tensors.update(
            {"model.vision_tower.vision_tower." + k: v.clone() for k, v in vision.state_dict().items()}
        )
    fields = text_config.to_dict()
    if rope_style == "old":
        theta = fields.pop("rope_parameters", {}).get("rope_theta", 10000.0)
        fields.pop("rope_theta", None)
        fields.update(rope_theta=theta, rope_scaling=None)
    else:  # transformers 5 writes rope_parameters
        fields.pop("rope_theta", None)
        fields.pop("rope_scaling", None)
        fields["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta or 10000.0}
    config = {
        **fields,
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "mm_vision_tower": str(tower),
        "mm_hidden_size": 32,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_projector_type": "mlp2x_gelu",
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
    }
    (src / "config.json").write_text(json.dumps(config))
    if pickle:
        torch.save(tensors, src / "pytorch_model.bin")
    else:
        keys = sorted(tensors)
        halves = {
            "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
            "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
        }
        for name, part in halves.items():
            save_file({k: tensors[k].contiguous() for k in part}, str(src / name))
        index = {"metadata": {}, "weight_map": {k: n for n, part in halves.items() for k in part}}
        (src / "model.safetensors.index.json").write_text(json.dumps(index))
    return src, tower, tensors, text_config


def reference_logits(tensors, text_config, tower, pixel_values, before_ids, after_ids):
    """The LLaVA repo's forward: CLIP hidden state at mm_vision_select_layer, patch tokens only,
    mlp2x_gelu projector, image features spliced where IMAGE_TOKEN_INDEX stood, LLaMA on embeddings."""
    from transformers import CLIPVisionModel, LlamaForCausalLM

    vision = CLIPVisionModel.from_pretrained(tower)
    llama = LlamaForCausalLM(text_config)
    llama.load_state_dict(
        {
            k: v
            for k, v in tensors.items()
            if not k.startswith("model.mm_projector") and not k.startswith("model.vision_tower")
        }
    )
    with torch.no_grad():
        hidden = vision(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        h = torch.nn.functional.linear(
            hidden, tensors["model.mm_projector.0.weight"], tensors["model.mm_projector.0.bias"]
        )
        h = torch.nn.functional.gelu(h)
        features = torch.nn.functional.linear(
            h, tensors["model.mm_projector.2.weight"], tensors["model.mm_projector.2.bias"]
        )
        embed = llama.get_input_embeddings()
        sequence = torch.cat(
            [embed(torch.tensor([before_ids]))[0], features[0], embed(torch.tensor([after_ids]))[0]]
        )
        return llama(inputs_embeds=sequence.unsqueeze(0)).logits[0]


def recap(*args):
    from typer.testing import CliRunner

    from recaption.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})  # no wrapping


def converted_rope_theta(text_config):
    parameters = getattr(text_config, "rope_parameters", None) or {}
    return parameters.get("rope_theta", getattr(text_config, "rope_theta", None))


@pytest.mark.parametrize(
    "vision_inside, rope_style, rope_theta",
    [
        (False, "new", None),
        (True, "new", None),
        # LLaMA-3's 500000, written the old way (top-level rope_theta) and the new (rope_parameters).
        (False, "old", 500000.0),
        (False, "new", 500000.0),
    ],
)
def test_converted_logits_equal_the_llava_repo_forward(tmp_path, vision_inside, rope_style, rope_theta):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    src, tower, tensors, text_config = write_llava_repo_checkpoint(
        tmp_path, vision_inside, rope_theta=rope_theta, rope_style=rope_style
    )
    args = ["--vision-tower", tower] if vision_inside else []
    result = recap("convert-llava", src, tmp_path / "hf", *args)
    assert result.exit_code == 0, result.output
    dst = tmp_path / "hf"
    model = LlavaForConditionalGeneration.from_pretrained(dst).eval()
    assert converted_rope_theta(model.config.text_config) == (rope_theta or 10000.0)
    processor = AutoProcessor.from_pretrained(dst)
    assert processor.image_processor.do_pad and processor.image_processor.crop_size["height"] == 56
    prompt = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "describe the image please"}],
            }
        ],
        add_generation_prompt=True,
    )
    assert "<|start_header_id|>assistant<|end_header_id|>" in prompt  # the LLaMA-3 template
    image = Image.new("RGB", (80, 40), (200, 30, 30))
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        ours = model(**inputs).logits[0]
    ids = inputs["input_ids"][0].tolist()
    image_id = model.config.image_token_index
    first, count = ids.index(image_id), ids.count(image_id)
    assert count == 16  # (56 / 14)^2 patches
    reference = reference_logits(
        tensors, text_config, tower, inputs["pixel_values"], ids[:first], ids[first + count :]
    )
    vocab = text_config.vocab_size
    assert ours.shape[0] == reference.shape[0]
    torch.testing.assert_close(ours[:, :vocab], reference, atol=2e-4, rtol=1e-4)
    assert model.config.text_config.vocab_size == vocab + 1  # the <image> token's new row


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path):
    src, tower, _, _ = write_llava_repo_checkpoint(tmp_path, vision_inside=False, pickle=True)
    with pytest.raises(ConversionError, match="--allow-pickle"):
        convert_llava(src, tmp_path / "hf")
    assert (convert_llava(src, tmp_path / "hf", allow_pickle=True) / "config.json").exists()


def test_not_a_llava_repo_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConversionError, match="llava_llama"):
        convert_llava(tmp_path, tmp_path / "out")


def test_wrong_inputs_of_convert_llava_are_one_line(tmp_path):
    def one_error_line(result, *phrases):
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output, result.output
        errors = [line for line in result.output.splitlines() if "error:" in line]
        assert len(errors) == 1, result.output
        for phrase in phrases:
            assert phrase in errors[0], errors[0]

    src, tower, tensors, _ = write_llava_repo_checkpoint(tmp_path, vision_inside=False)
    one_error_line(recap("convert-llava", tmp_path / "no-such", tmp_path / "a"), "no-such: no such folder")
    one_error_line(recap("convert-llava", src / "config.json", tmp_path / "a"), "is a file")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error_line(recap("convert-llava", empty, tmp_path / "a"), "no config.json")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    one_error_line(recap("convert-llava", src, taken), "taken", "not an empty folder")
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    one_error_line(
        recap("convert-llava", src, tmp_path / "b", "--vision-tower", tmp_path / "no-tower"),
        "vision tower",
        "no-tower",
        "--vision-tower",
    )
    one_error_line(
        recap("convert-llava", src, tmp_path / "b", "--tokenizer", tmp_path / "no-tokenizer"),
        "tokenizer",
        "no-tokenizer",
    )
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob("b.*")), "nothing half-written"
    # A projector-only checkpoint (the LLaVA repo's pretraining output) is not a whole model.
    for name in src.glob("model-0000*.safetensors"):
        name.unlink()
    (src / "model.safetensors.index.json").unlink()
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in tensors.items() if "mm_projector" in k}, str(src / "model.safetensors")
    )
    one_error_line(recap("convert-llava", src, tmp_path / "c"), "no language model", "projector-only")


def test_convert_llava_reads_only_its_folder_and_writes_only_outside_it(tmp_path):
    """An index naming weights elsewhere, DST inside SRC, a FIFO for weights: one line each; a
    link to an empty folder as DST takes the model where it leads."""
    src, _, _, _ = write_llava_repo_checkpoint(tmp_path, vision_inside=True)
    index = src / "model.safetensors.index.json"
    original = index.read_text()
    with pytest.raises(RecaptionError, match="lies inside the input"):
        convert_llava(src, src / "converted")
    assert not (src / "converted").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = sorted(src.glob("model-0000*.safetensors"))[-1]
    shard.rename(elsewhere / shard.name)
    weight_map = json.loads(original)["weight_map"]
    moved = {k: (str(elsewhere / v) if v == shard.name else v) for k, v in weight_map.items()}
    index.write_text(json.dumps({"weight_map": moved}))
    with pytest.raises(ConversionError, match=f"names {elsewhere / shard.name}, which is not in"):
        convert_llava(src, tmp_path / "a")
    index.write_text(json.dumps({"weight_map": {"w": 1}}))
    with pytest.raises(ConversionError, match="not a safetensors index .*something other than files"):
        convert_llava(src, tmp_path / "a")
    index.write_text(original)
    os.mkfifo(shard)
    with pytest.raises(ConversionError, match="is a FIFO"):  # at once, not blocked on the FIFO
        convert_llava(src, tmp_path / "b")
    assert not list(tmp_path.glob("b*")), "nothing half-written"
    shard.unlink()
    os.symlink(elsewhere / shard.name, shard)  # as a hub cache's snapshot links to its blobs: read
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    convert_llava(src, tmp_path / "link")
    assert (target / "config.json").exists() and (tmp_path / "link").is_symlink()
