"""`recap convert-llava`: a LLaVA-repo checkpoint (llava_llama) -> a transformers
LlavaForConditionalGeneration folder.

The paper's captioner (tennant/llava-llama-3-8b-hqedit) is stored the way the original LLaVA
repository saves models: `model_type: llava_llama`, LLaMA weights under `model.*`, the projector as
`model.mm_projector.{0,2}.*` (mlp2x_gelu), the vision tower inside the checkpoint
(`model.vision_tower.vision_tower.vision_model.*`) or only named by `mm_vision_tower`, and its
settings in `mm_*` config fields. transformers cannot load that. This writes:

  config.json              LlavaConfig: the LLaMA text config, the CLIP vision config, the image
                           token, vision_feature_layer = mm_vision_select_layer, feature strategy
  model-0000k-of-0000n.safetensors (+ index)   tensors renamed, streamed one source shard at a
                           time (an 8B model converts in a few GB of RAM), embeddings and LM head
                           grown by one row for the added <image> token (initialised to the mean)
  tokenizer + processor    the `<image>` token added, the LLaMA-3 chat template, CLIP ViT-L/14-336
                           preprocessing with LLaVA-1.5's pad-to-square (image_aspect_ratio: pad)
Pickle checkpoints (.bin, .pt) are refused unless allow_pickle, and even then read with
torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .tiny import LLAMA3_CHAT_TEMPLATE

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "head_dim",
)
VISION_PREFIX_IN_CHECKPOINT = "model.vision_tower.vision_tower.vision_model."


class ConversionError(ValueError):
    pass


def rename(key: str) -> str | None:
    """LLaVA-repo name -> the name transformers' LlavaForConditionalGeneration files use."""
    if key.startswith("model.mm_projector."):
        index, rest = key[len("model.mm_projector.") :].split(".", 1)
        return {
            "0": f"multi_modal_projector.linear_1.{rest}",
            "2": f"multi_modal_projector.linear_2.{rest}",
        }.get(index)
    if key.startswith(VISION_PREFIX_IN_CHECKPOINT):
        return "vision_tower." + key[len(VISION_PREFIX_IN_CHECKPOINT) :]
    if key.startswith("model.vision_tower."):
        return None  # other vision-tower bookkeeping
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith("model."):
        return "language_model.model." + key[len("model.") :]
    return None


def source_shards(src: Path, allow_pickle: bool) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [src / f for f in files]
    if (src / "model.safetensors").exists():
        return [src / "model.safetensors"]
    pickles = sorted(p for p in src.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickles and not allow_pickle:
        raise ConversionError(
            f"{src} holds only pickle checkpoints ({', '.join(p.name for p in pickles)}); "
            "pickle can run code when loaded: pass --allow-pickle if you trust the source"
        )
    if not pickles:
        raise ConversionError(f"{src}: no model.safetensors, safetensors index or checkpoint files")
    return pickles


def iter_tensors(path: Path):
    """(name, tensor) one at a time from a safetensors file; pickle files load whole (weights only)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
    else:
        yield from torch.load(path, map_location="cpu", weights_only=True).items()


def vision_tensors(vision_tower: str):
    """Vision weights (renamed) and config from a CLIP folder or hub id (CLIPVisionModel or CLIPModel)."""
    from transformers import AutoConfig, CLIPVisionModel

    config = AutoConfig.from_pretrained(vision_tower)
    vision_config = getattr(config, "vision_config", config)
    model = CLIPVisionModel.from_pretrained(vision_tower)
    # transformers 5 names CLIPVisionModel's tensors without the "vision_model." prefix; older ones with it.
    tensors = {"vision_tower." + k.removeprefix("vision_model."): v for k, v in model.state_dict().items()}
    return tensors, vision_config


def convert_llava(
    src: str | Path,
    dst: str | Path,
    vision_tower: str | None = None,
    tokenizer: str | None = None,
    allow_pickle: bool = False,
) -> Path:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig

    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    if config.get("model_type") != "llava_llama" and "LlavaLlamaForCausalLM" not in config.get(
        "architectures", []
    ):
        raise ConversionError(
            f"{src}: model_type {config.get('model_type')!r} is not a LLaVA-repo llava_llama model"
        )
    if config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConversionError(
            f"mm_projector_type {config['mm_projector_type']!r}: only mlp2x_gelu is supported"
        )
    shards = source_shards(src, allow_pickle)
    dst.mkdir(parents=True, exist_ok=True)

    tok = AutoTokenizer.from_pretrained(tokenizer or src)
    old_vocab = config["vocab_size"]
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    new_vocab = max(old_vocab, len(tok))
    tok.chat_template = LLAMA3_CHAT_TEMPLATE

    weight_map: dict[str, str] = {}
    outputs: list[tuple[str, dict]] = []
    vision_in_checkpoint = False
    # Pass 1 over the source, one shard at a time: rename, grow the vocabulary rows, write.
    for number, shard in enumerate(shards):
        tensors = {}
        for key, tensor in iter_tensors(shard):
            vision_in_checkpoint |= key.startswith(VISION_PREFIX_IN_CHECKPOINT)
            name = rename(key)
            if name is None:
                continue
            if (
                name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")
                and tensor.shape[0] < new_vocab
            ):
                extra = (
                    tensor.float()
                    .mean(0, keepdim=True)
                    .to(tensor.dtype)
                    .expand(new_vocab - tensor.shape[0], -1)
                )
                tensor = torch.cat([tensor, extra])
            tensors[name] = tensor.contiguous()
        filename = f"part-{number:05d}.safetensors"
        save_file(tensors, str(dst / filename), metadata={"format": "pt"})
        outputs.append((filename, {k: tuple(v.shape) for k, v in tensors.items()}))
        log.info("converted %s (%d tensors)", shard.name, len(tensors))
        del tensors
    if vision_in_checkpoint:
        vision_config = CLIPVisionConfig(**_vision_config_from(config, vision_tower))
    else:
        tower = vision_tower or config.get("mm_vision_tower")
        if not tower:
            raise ConversionError("the checkpoint has no vision tower and names none: pass --vision-tower")
        tensors, vision_config = vision_tensors(tower)
        filename = f"part-{len(shards):05d}.safetensors"
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(dst / filename), metadata={"format": "pt"}
        )
        outputs.append((filename, {k: tuple(v.shape) for k, v in tensors.items()}))
    _finalise_names(dst, outputs, weight_map)

    text = LlamaConfig(**{k: config[k] for k in TEXT_FIELDS if k in config})
    text.vocab_size = new_vocab
    text.pad_token_id = tok.pad_token_id
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    strategy = "default" if config.get("mm_vision_select_feature", "patch") == "patch" else "full"
    llava = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_layer=config.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=strategy,
        image_seq_length=patches,
    )
    llava.architectures = ["LlavaForConditionalGeneration"]
    llava.save_pretrained(dst)
    _write_generation_config(dst, tok)
    _write_processor(dst, tok, vision_config, strategy, pad=config.get("image_aspect_ratio", "pad") == "pad")
    return dst


def _vision_config_from(config: dict, vision_tower: str | None) -> dict:
    """With the tower's weights inside the checkpoint, its shape still comes from a config."""
    from transformers import AutoConfig

    tower = vision_tower or config.get("mm_vision_tower")
    if not tower:
        raise ConversionError(
            "the vision tower's config is needed: pass --vision-tower (a CLIP folder or id)"
        )
    loaded = AutoConfig.from_pretrained(tower)
    return getattr(loaded, "vision_config", loaded).to_dict()


def _finalise_names(dst: Path, outputs: list, weight_map: dict) -> None:
    total = len(outputs)
    for number, (filename, shapes) in enumerate(outputs, 1):
        final = f"model-{number:05d}-of-{total:05d}.safetensors"
        (dst / filename).rename(dst / final)
        weight_map.update(dict.fromkeys(shapes, final))
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
    )


def _write_generation_config(dst: Path, tok) -> None:
    from transformers import GenerationConfig

    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    eos = [tok.eos_token_id] + (
        [eot] if isinstance(eot, int) and eot != tok.unk_token_id and eot != tok.eos_token_id else []
    )
    GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos if len(eos) > 1 else eos[0],
        pad_token_id=tok.pad_token_id,
    ).save_pretrained(dst)


def _write_processor(dst: Path, tok, vision_config, strategy: str, pad: bool) -> None:
    from .llava_parts import llava_processor

    processor = llava_processor(
        tok,
        vision_config.image_size,
        vision_config.patch_size,
        LLAMA3_CHAT_TEMPLATE,
        pad=pad,
        strategy=strategy,
    )
    processor.save_pretrained(dst)
