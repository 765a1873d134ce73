"""`recap convert-llava`: a LLaVA-repo checkpoint (llava_llama) -> a transformers
LlavaForConditionalGeneration folder (docs/models.md). Tensors are renamed and streamed one
source shard at a time; pickle checkpoints are refused unless allow_pickle (then read with
weights_only); the output is built in a temporary folder beside DST and renamed at the end, so
DST is a whole converted model or absent. Wrong inputs raise ConversionError, in one line."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ..spine.atomic import temporary_name
from ..spine.contract import Step, check_output, output_errors
from ..spine.errors import RecaptionError
from ..spine.files import NotRegularFile, check_regular, open_input
from .loading import first_line, load_or_explain
from .tiny import LLAMA3_CHAT_TEMPLATE

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
# Fields of a LLaVA-repo config.json that are not the language model's (besides every `mm_*`
# field): the multimodal settings, the training script's, and what describes the file rather than
# the model (dtype is a loading choice, left to the loader as for any converted model).
LLAVA_REPO_FIELDS = frozenset({
    "architectures", "model_type", "auto_map", "transformers_version", "_name_or_path", "torch_dtype",
    "dtype", "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length",
    "tokenizer_padding_side", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "use_mm_proj",
    "unfreeze_mm_vision_tower", "s2", "s2_scales", "s2_max_split_size",
})
VISION_PREFIX_IN_CHECKPOINT = "model.vision_tower.vision_tower.vision_model."
VOCABULARY_ROWS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")


class ConversionError(RecaptionError, ValueError):
    pass


def rename(key: str) -> str | None:
    """LLaVA-repo name -> the name transformers' LlavaForConditionalGeneration files use."""
    if key.startswith("model.mm_projector."):
        index, rest = key[len("model.mm_projector.") :].split(".", 1)
        linear = {"0": "linear_1", "2": "linear_2"}.get(index)
        return f"multi_modal_projector.{linear}.{rest}" if linear else None
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
        try:
            with open_input(index, "r") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            if not all(isinstance(name, str) for name in files):
                raise TypeError("its weight_map names something other than files")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError,
                RecursionError, NotRegularFile) as exc:
            raise ConversionError(f"{index}: not a safetensors index ({first_line(exc)})") from None
        # By name (`..`, an absolute path), not by link: a hub cache's snapshot links each file to
        # its blob beside the snapshot folder.
        folder = os.path.normpath(os.path.abspath(src))
        outside = [f for f in files
                   if not os.path.normpath(os.path.join(folder, f)).startswith(folder + os.sep)]
        if outside:
            raise ConversionError(f"{index}: names {outside[0]}, which is not in {src}; a checkpoint's "
                                  "weights are read from its own folder only")
        missing = [f for f in files if not (src / f).exists()]
        if missing:
            raise ConversionError(f"{src}: {', '.join(missing)} named in {index.name} but missing")
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
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except SafetensorError as exc:
            raise ConversionError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's fault
            raise ConversionError(
                f"{path}: cannot be read as plain weights ({first_line(exc)}); pickle files holding "
                "anything but tensors are refused"
            ) from None
        if not isinstance(loaded, dict):
            raise ConversionError(f"{path}: holds a {type(loaded).__name__}, not a dict of tensors")
        yield from loaded.items()


def _load(what: str, load, name: str, hint: str = ""):
    """from_pretrained with a missing or wrong folder / hub id as one ConversionError line."""
    return load_or_explain(load, name, f"{what} {name}", ConversionError, hint)


def vision_tensors(vision_tower: str) -> dict:
    """Vision weights, renamed, from a CLIP folder or hub id (CLIPVisionModel or CLIPModel)."""
    from transformers import CLIPVisionModel

    model = _load("vision tower", CLIPVisionModel.from_pretrained, vision_tower, VISION_HINT)
    # transformers 5 names CLIPVisionModel's tensors without the "vision_model." prefix; older ones with it.
    return {"vision_tower." + k.removeprefix("vision_model."): v for k, v in model.state_dict().items()}


VISION_HINT = "; pass --vision-tower a CLIP folder or hub id"


def read_source_config(src: Path) -> dict:
    """The LLaVA-repo config.json, with a missing or wrong folder said in one line."""
    if not src.exists():
        raise ConversionError(f"{src}: no such folder")
    if not src.is_dir():
        raise ConversionError(f"{src}: is a file; give the checkpoint's folder")
    path = src / "config.json"
    if not path.is_file():
        raise ConversionError(f"{src}: no config.json; not a LLaVA-repo checkpoint folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConversionError(f"{path}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: not a config (a JSON object)")
    architectures = config.get("architectures") or []
    if config.get("model_type") != "llava_llama" and "LlavaLlamaForCausalLM" not in architectures:
        raise ConversionError(
            f"{src}: model_type {config.get('model_type')!r} is not a LLaVA-repo llava_llama model"
        )
    if config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConversionError(
            f"mm_projector_type {config['mm_projector_type']!r}: only mlp2x_gelu is supported"
        )
    return config


def _rope_theta(fields) -> float | None:
    """rope_theta from a config dict or object, old style (top-level) or new (rope_parameters)."""
    get = fields.get if isinstance(fields, dict) else lambda key: getattr(fields, key, None)
    parameters = get("rope_parameters")
    if isinstance(parameters, dict) and parameters.get("rope_theta") is not None:
        return parameters["rope_theta"]
    return get("rope_theta")


def text_config_from(config: dict):
    """The language model's config: the WHOLE source config but the LLaVA repo's own fields,
    through transformers' LlamaConfig, which reads rope settings in either style."""
    from transformers import LlamaConfig

    fields = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in LLAVA_REPO_FIELDS}
    if "rope_scaling" in fields and fields["rope_scaling"] is None:
        del fields["rope_scaling"]  # old style's "no scaling" (transformers 5 warns on the key)
    try:
        text = LlamaConfig(**fields)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConversionError(f"config.json: not a LLaMA text config ({first_line(exc)})") from None
    wanted = _rope_theta(config)
    if wanted is not None and _rope_theta(text) != wanted:  # whatever style this transformers uses
        raise ConversionError(
            f"config.json: rope_theta {wanted} did not survive into the LLaMA config ({_rope_theta(text)})"
        )
    return text


CONVERT = Step("convert-llava")  # a new or empty folder: the converted model, renamed into place


def convert_llava(src: str | Path, dst: str | Path, vision_tower: str | None = None,
                  tokenizer: str | None = None, allow_pickle: bool = False) -> Path:
    """Convert SRC into DST (which must not exist or be empty); see the module docstring."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    config = read_source_config(src)
    text = text_config_from(config)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"{dst}: already exists and is not an empty folder; choose a new output folder")
    check_output(str(dst), CONVERT, [str(src)])  # not inside SRC, a writable place, no dangling link
    if dst.is_symlink():  # a link to an empty folder: the model goes where it leads
        dst = Path(os.path.realpath(dst))
    shards = source_shards(src, allow_pickle)
    for shard in shards:
        try:
            check_regular(shard)  # a FIFO would block the read forever
        except NotRegularFile as exc:
            raise ConversionError(str(exc)) from None
    work = Path(temporary_name(str(dst)))
    with output_errors(str(dst), writes_shards=False):
        work.mkdir(parents=True)
        try:
            _convert(src, work, config, text, shards, vision_tower, tokenizer)
            if dst.exists():
                dst.rmdir()  # empty, checked above
            os.replace(work, dst)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return dst


def _convert(src: Path, dst: Path, config: dict, text, shards: list[Path], vision_tower, tokenizer) -> None:
    from transformers import AutoConfig, AutoTokenizer, CLIPVisionConfig

    # Everything named (vision tower, tokenizer) is checked before the weights are streamed.
    tower = vision_tower or config.get("mm_vision_tower")
    if not tower:
        raise ConversionError(f"{src}: names no vision tower (mm_vision_tower){VISION_HINT}")
    tower_config = _load("vision tower", AutoConfig.from_pretrained, tower, VISION_HINT)
    kind = getattr(tower_config, "model_type", "")
    if kind not in ("clip", "clip_vision_model"):
        raise ConversionError(f"vision tower {tower}: a {kind or 'unknown'} model, not CLIP{VISION_HINT}")
    hint = "" if tokenizer else f"; {src} has no usable tokenizer: pass --tokenizer"
    tok = _load("tokenizer", AutoTokenizer.from_pretrained, tokenizer or str(src), hint)
    old_vocab = text.vocab_size
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    new_vocab = max(old_vocab, len(tok))
    tok.chat_template = LLAMA3_CHAT_TEMPLATE

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
            if name in VOCABULARY_ROWS and tensor.shape[0] < new_vocab:  # new rows: the mean row
                extra = tensor.float().mean(0, keepdim=True).to(tensor.dtype)
                tensor = torch.cat([tensor, extra.expand(new_vocab - tensor.shape[0], -1)])
            tensors[name] = tensor
        _save_part(dst, number, tensors, outputs)
        log.info("converted %s (%d tensors)", shard.name, len(tensors))
        del tensors
    found = {name for _, shapes in outputs for name in shapes}
    for needed, what in (("multi_modal_projector.linear_1.weight", "projector (model.mm_projector.*)"),
                         (VOCABULARY_ROWS[0], "language model (model.embed_tokens.*)")):
        if needed not in found:
            raise ConversionError(f"{src}: no {what} weights; a full LLaVA-repo checkpoint is needed (not a "
                                  "projector-only or LoRA one)")
    # The vision config comes from the named tower's config, its weights too unless in the checkpoint.
    vision_config = CLIPVisionConfig(**getattr(tower_config, "vision_config", tower_config).to_dict())
    if not vision_in_checkpoint:
        _save_part(dst, len(shards), vision_tensors(tower), outputs)
    _finalise_names(dst, outputs)
    text.vocab_size = new_vocab
    _write_configs(dst, config, text, tok, vision_config)


def _write_configs(dst: Path, config: dict, text, tok, vision_config) -> None:
    """The LlavaConfig, generation config and processor of the converted model."""
    from transformers import GenerationConfig, LlavaConfig

    from .llava_parts import llava_processor

    text.pad_token_id = tok.pad_token_id
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    strategy = "default" if config.get("mm_vision_select_feature", "patch") == "patch" else "full"
    llava = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text.to_dict(),
                        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
                        vision_feature_layer=config.get("mm_vision_select_layer", -2),
                        vision_feature_select_strategy=strategy, image_seq_length=patches)
    llava.architectures = ["LlavaForConditionalGeneration"]
    llava.save_pretrained(dst)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    with_eot = isinstance(eot, int) and eot not in (tok.unk_token_id, tok.eos_token_id)
    eos = [tok.eos_token_id, eot] if with_eot else [tok.eos_token_id]
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0],
                     pad_token_id=tok.pad_token_id).save_pretrained(dst)
    pad = config.get("image_aspect_ratio", "pad") == "pad"
    llava_processor(tok, vision_config.image_size, vision_config.patch_size, LLAMA3_CHAT_TEMPLATE, pad=pad,
                    strategy=strategy).save_pretrained(dst)


def _save_part(dst: Path, number: int, tensors: dict, outputs: list) -> None:
    """Tensors into dst/part-{number}.safetensors, recorded in `outputs` (name, shapes)."""
    from safetensors.torch import save_file

    filename = f"part-{number:05d}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / filename), metadata={"format": "pt"})
    outputs.append((filename, {k: tuple(v.shape) for k, v in tensors.items()}))


def _finalise_names(dst: Path, outputs: list) -> None:
    weight_map: dict[str, str] = {}
    total = len(outputs)
    for number, (filename, shapes) in enumerate(outputs, 1):
        final = f"model-{number:05d}-of-{total:05d}.safetensors"
        (dst / filename).rename(dst / final)
        weight_map.update(dict.fromkeys(shapes, final))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                  indent=2))
