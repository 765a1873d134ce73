"""The parts of a Recap-DiT and the folder they are saved in (docs/dit.md has its layout).

The transformer is diffusers' PixArtTransformer2DModel (cross-attention to the caption's token
features in every block, its output layer zeroed as DiT's); the text encoder any frozen
transformers text encoder; the codec pixel space ([-1, 1]) or an AutoencoderKL's latents.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..training.inputs import TrainingInputError, load_pretrained, model_source

log = logging.getLogger(__name__)

DIT_JSON = "dit.json"
FORMAT = "recaption-dit"
VERSION = 1
TRANSFORMER, EMA, SCHEDULER = "transformer", "transformer_ema", "scheduler"
TEXT_ENCODER, VAE = "text_encoder", "vae"
WEIGHTS = f"{TRANSFORMER}/diffusion_pytorch_model.safetensors"


def build_transformer(sample_size: int, patch_size: int, in_channels: int, layers: int, heads: int,
                      head_dim: int, caption_channels: int, seed: int = 0):
    """A PixArtTransformer2DModel with random weights from `seed` (its output layer zeroed)."""
    from diffusers import PixArtTransformer2DModel

    if sample_size % patch_size:
        raise TrainingInputError(f"--patch-size {patch_size} does not divide the {sample_size} px input")
    torch.manual_seed(seed)
    # out_channels: the noise only (fixed variance); the caption projection maps text features to
    # cross_attention_dim
    model = PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=in_channels, num_layers=layers, sample_size=sample_size, patch_size=patch_size,
        cross_attention_dim=heads * head_dim, caption_channels=caption_channels,
        use_additional_conditions=False, norm_num_groups=1)
    torch.nn.init.zeros_(model.proj_out.weight)
    torch.nn.init.zeros_(model.proj_out.bias)
    return model


class Ema:
    """Exponential moving average of a model's weights, with diffusers' warm-up: the decay at
    step t is min(decay, (1 + t) / (10 + t)), so short runs average their last tenth or so."""

    def __init__(self, model: torch.nn.Module, decay: float, weights: torch.nn.Module | None = None):
        self.decay = decay
        self.model = weights if weights is not None else copy.deepcopy(model)
        self.model.requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        ema = [p for p in self.model.parameters()]
        now = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema, strict=True)]
        torch._foreach_lerp_(ema, now, 1.0 - decay)


def resolve_text_encoder(name: str) -> str:
    """A folder or hub id from_pretrained can load: the built-in CLIPs by name, else as given."""
    from ..models.tiny_clip import builtin_clip

    builtin = builtin_clip(name)
    if builtin is not None:
        return str(builtin[0])
    return model_source(name, "--text-encoder")


class TextEncoder:
    """A frozen transformers text encoder: `encode(texts)` -> (features B x L x C, mask B x L)."""

    def __init__(self, source: str, device: str = "cpu", max_length: int | None = None,
                 option: str = "--text-encoder"):
        from transformers import AutoModel, AutoTokenizer

        self.source = source
        self.full = load_pretrained(lambda s: AutoModel.from_pretrained(s, dtype=torch.float32), source,
                                    option)
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, option)
        self.tokenizer.padding_side = "right"  # absolute positions: the text starts at position 0
        self.encoder = getattr(self.full, "text_model", self.full).to(device).eval().requires_grad_(False)
        self.device = device
        config = getattr(self.full.config, "text_config", self.full.config)
        self.hidden_size = int(config.hidden_size if hasattr(config, "hidden_size") else config.d_model)
        window = getattr(config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.max_length = min(max_length or window, window)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        out = self.encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return out.last_hidden_state.float(), tokens["attention_mask"]

    def save_pretrained(self, folder: Path) -> None:
        self.full.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def pad_features(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (features, mask) batches of different lengths, padding with masked zeros."""
    length = max(f.shape[1] for f, _ in parts)
    features, masks = [], []
    for f, m in parts:
        extra = length - f.shape[1]
        features.append(torch.nn.functional.pad(f, (0, 0, 0, extra)))
        masks.append(torch.nn.functional.pad(m, (0, extra)))
    return torch.cat(features), torch.cat(masks)


class PixelCodec:
    """Pixel space: the model works on the image itself, scaled to [-1, 1]."""

    space = "pixel"
    factor = 1
    channels = 3

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the training set stores per image (uint8 pixels, B x 3 x H x W)."""
        return pixels

    def draw(self, stored: torch.Tensor) -> torch.Tensor:
        """A training input x0 from what was stored."""
        return stored.float() / 127.5 - 1.0

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B x 3 x H x W) from model space."""
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class LatentCodec:
    """Latent space through a diffusers AutoencoderKL: the training set stores each image's latent
    distribution (mean, log-variance) and each step draws a latent from it, as diffusers'
    trainers do; scaled by the VAE's scaling_factor (and shift_factor, when it has one)."""

    space = "latent"

    def __init__(self, vae, device: str = "cpu", batch_size: int = 32):
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.device = device
        self.batch_size = batch_size
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = int(vae.config.latent_channels)
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(pixels), self.batch_size):
            x = pixels[i : i + self.batch_size].to(self.device).float() / 127.5 - 1.0
            out.append(self.vae.encode(x).latent_dist.parameters.float().cpu())
        return torch.cat(out)

    def draw(self, stored: torch.Tensor) -> torch.Tensor:
        mean, logvar = stored.chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return (mean + std * torch.randn_like(mean) - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(x.to(self.device).float() / self.scale + self.shift).sample
        return PixelCodec().decode(images)


def load_vae(name: str, device: str = "cpu"):
    """An AutoencoderKL from a VAE folder, a diffusers pipeline folder with vae/, or a hub id."""
    from diffusers import AutoencoderKL

    path = Path(name).expanduser()
    pipeline = (path / "vae" / "config.json").is_file() and not (path / "config.json").is_file()
    subfolder = "vae" if pipeline else None
    source = str(path) if path.exists() else name
    try:
        return AutoencoderKL.from_pretrained(source, subfolder=subfolder, low_cpu_mem_usage=False).to(device)
    except (OSError, ValueError, KeyError) as exc:
        why = " ".join(str(exc).split())
        raise TrainingInputError(f"--vae {name}: cannot load an AutoencoderKL ({why})") from None


class Part:
    """One component saved into a sub-folder (for checkpoints.save_checkpoint / save_final)."""

    def __init__(self, obj, name: str):
        self.obj, self.name = obj, name

    def save_pretrained(self, folder) -> None:
        self.obj.save_pretrained(Path(folder) / self.name)


class JsonPart:
    """dit.json, written beside the components."""

    def __init__(self, payload: dict):
        self.payload = payload

    def save_pretrained(self, folder) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / DIT_JSON).write_text(json.dumps(self.payload, indent=2, sort_keys=True))


def read_meta(folder: Path) -> dict:
    path = Path(folder) / DIT_JSON
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingInputError(f"{folder}: not a trained DiT (no readable {DIT_JSON}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise TrainingInputError(f"{path}: not a recaption DiT")
    if meta.get("version") != VERSION:
        raise TrainingInputError(f"{path}: DiT format version {meta.get('version')}; this recaption reads "
                                 f"{VERSION}")
    return meta


def component(folder: Path, name: str) -> Path:
    """A component of a DiT folder: inside it, or, for a checkpoint, inside the run's folder."""
    for candidate in (Path(folder) / name, Path(folder).parent / name):
        if candidate.is_dir():
            return candidate
    raise TrainingInputError(f"{folder}: no {name}/ in it or beside it")


@dataclass
class LoadedDit:
    transformer: torch.nn.Module
    text_encoder: TextEncoder
    codec: object
    scheduler_config: dict
    meta: dict
    folder: Path

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])


def load_dit(folder: str | Path, device: str = "cpu", use_ema: bool = True) -> LoadedDit:
    """A trained DiT folder (or one of its checkpoints) ready to sample."""
    from diffusers import DDPMScheduler, PixArtTransformer2DModel

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TrainingInputError(f"--model {folder}: no such folder")
    meta = read_meta(folder)
    weights = folder / (EMA if use_ema and (folder / EMA).is_dir() else TRANSFORMER)
    transformer = PixArtTransformer2DModel.from_pretrained(weights, low_cpu_mem_usage=False).to(device).eval()
    text_encoder = TextEncoder(str(component(folder, TEXT_ENCODER)), device, meta.get("text_length"))
    latent = meta["space"] == "latent"
    codec = LatentCodec(load_vae(str(component(folder, VAE)), device), device) if latent else PixelCodec()
    scheduler = DDPMScheduler.from_pretrained(component(folder, SCHEDULER))
    return LoadedDit(transformer, text_encoder, codec, dict(scheduler.config), meta, folder)
