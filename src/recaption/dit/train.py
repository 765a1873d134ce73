"""Train a Recap-DiT: text-to-image diffusion on original captions, recaptions, or a mix.

The paper's recipe (arXiv 2406.08478 v2, section 6) where it gives one; the rest chosen here
(docs/dit.md has the table), v-prediction rather than DiT's epsilon among them: in pixel space on
a CPU budget an epsilon model does not learn the layout at high noise (docs/dit.md, "Why
v-prediction"). Pixel space for small images, else latents of an AutoencoderKL (`vae`).
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..training.captions import CaptionMix, check_caption_sources, check_mix_settings
from ..training.checkpoints import latest_checkpoint, require_same_recipe, save_final
from ..training.data import Pair
from ..training.inputs import TrainingInputError, require_counts
from ..training.loop import TrainLoop, finish_run, resume, train_into, trainer_stream
from .data import CAPTION_KINDS, UNCAPTIONED, SquarePixels, pick_caption, pick_mixed_caption
from .model import (
    EMA,
    FORMAT,
    SCHEDULER,
    TEXT_ENCODER,
    TRANSFORMER,
    VAE,
    VERSION,
    WEIGHTS,
    Ema,
    JsonPart,
    LatentCodec,
    Part,
    PixelCodec,
    TextEncoder,
    build_transformer,
    load_vae,
    read_meta,
    resolve_text_encoder,
)  # fmt: skip

log = logging.getLogger(__name__)

# What a resumed run must share with the run it continues.
_FIXED = ("space", "image_size", "patch_size", "layers", "heads", "head_dim", "text_length", "p",
          "caption_dropout", "train_timesteps", "beta_schedule", "prediction_type", "batch_size", "snr_gamma",
          "lr", "weight_decay", "warmup", "mix")
# Runs from before these settings existed trained with these.
_ADDED_DEFAULTS = {"snr_gamma": None, "mix": None}


@dataclass
class DitTrainConfig:
    data: list[str]
    output: str
    p: float = 0.5  # probability of the ORIGINAL caption (the paper's p, as in train-clip)
    text_encoder: str = "tiny-clip"  # any transformers text encoder (folder or hub id)
    text_length: int | None = None  # tokens; None: the encoder's window (CLIP: 77)
    vae: str | None = None  # an AutoencoderKL folder: latent space; None: pixel space
    image_size: int = 64
    patch_size: int = 4
    layers: int = 6
    heads: int = 4
    head_dim: int = 32
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4  # the paper: AdamW, constant, no warm-up, no weight decay
    weight_decay: float = 0.0
    warmup: int = 0
    grad_clip: float | None = 1.0
    caption_dropout: float = 0.1
    ema_decay: float = 0.9999
    train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "v_prediction"  # or "epsilon" (DiT's); see the module's docstring
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' --snr_gamma)
    mixed_precision: str = "no"  # "bf16": autocast on CUDA
    save_every: int = 500
    log_every: int = 50
    seed: int = 0
    caption_field: str | None = None  # plain shards: where the original caption is (default .txt)
    recaption_field: str | None = None  # plain shards: a json field holding the recaption
    mix: str | None = None  # a mix over any caption columns instead of p, as train-clip's
    device: str = "auto"
    extra: dict = field(default_factory=dict)  # anything to record in dit.json (experiment names)
    workers: int = 2  # loader processes that decode and crop (0: in this process); resume with the same
    shuffle_buffer: int = 1000  # samples each loader process shuffles among

    def __post_init__(self):
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError("caption-dropout must be in [0, 1)")
        require_counts(self, ("steps", "batch_size", "save_every", "log_every", "image_size", "patch_size",
                              "layers", "heads", "head_dim"), ("warmup",))
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError("prediction-type must be epsilon or v_prediction")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError("snr-gamma must be positive")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError("mixed-precision must be no or bf16")
        check_mix_settings(self)


def diffusion_loss(prediction, target, timesteps, noise_scheduler, config: DitTrainConfig):
    """Mean squared error of the prediction; with `snr_gamma`, each sample weighted as Min-SNR-gamma
    does (diffusers' training scripts): min(SNR, gamma) in x0 terms, i.e. divided by SNR for
    epsilon and by SNR + 1 for v, so easy low-noise steps stop dominating the gradient."""
    if config.snr_gamma is None:
        return torch.nn.functional.mse_loss(prediction, target)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps).to(prediction.device)
    weight = snr.clamp(max=config.snr_gamma)
    weight = weight / (snr + 1) if config.prediction_type == "v_prediction" else weight / snr
    per_sample = torch.nn.functional.mse_loss(prediction, target, reduction="none").flatten(1).mean(1)
    return (per_sample * weight).mean()


def _every_rank(ranks, flag: bool) -> bool:
    """Whether `flag` holds on every rank (a collective under torchrun: all ranks decide alike)."""
    flags = ranks.gather({"flag": torch.tensor([int(flag)])})
    return all(bool(f["flag"].item()) for f in flags)


def train_dit(config: DitTrainConfig, progress: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) into config.output; `progress` as TrainLoop's. A new output refused before
    its first checkpoint (data without captions, a misspelt field) is removed again."""
    out = Path(config.output).expanduser()
    fresh = not out.exists()
    try:
        return train_into("train-dit", config, _train_dit, (WEIGHTS,), progress)
    except TrainingInputError:
        if fresh and out.is_dir() and latest_checkpoint(out) is None:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _frozen_parts(config: DitTrainConfig, out: Path, device: str):
    """The text encoder and the pixel / latent codec: a run's own copies once it has them, so a
    resumed run uses the same ones; a size the codec and patch cannot tile is refused."""
    saved_encoder = out / TEXT_ENCODER
    source = str(saved_encoder) if saved_encoder.is_dir() else resolve_text_encoder(config.text_encoder)
    text_encoder = TextEncoder(source, device, config.text_length)
    if config.vae:
        codec = LatentCodec(load_vae(str(out / VAE) if (out / VAE).is_dir() else config.vae, device), device)
    else:
        codec = PixelCodec()
    if config.image_size % (codec.factor * config.patch_size):
        raise TrainingInputError(f"--image-size {config.image_size} is not a multiple of the VAE's factor "
                                 f"{codec.factor} x --patch-size {config.patch_size}")
    width, patch_values = config.heads * config.head_dim, config.patch_size**2 * codec.channels
    if width < patch_values:
        log.warning("width %d (heads x head-dim) < %d values per patch (patch %d x %d x %d channels): the "
                    "patch embedding cannot carry the noise through, so the loss stays high and samples "
                    "stay noisy; widen the model or use a smaller patch",
                    width, patch_values, config.patch_size, config.patch_size, codec.channels)
    return text_encoder, codec


def _transformer(config: DitTrainConfig, resume_from: str | None, codec, text_encoder, device: str):
    """(the transformer, the EMA weights or None): a checkpoint's, or a fresh seeded one."""
    from diffusers import PixArtTransformer2DModel

    if resume_from:
        load = PixArtTransformer2DModel.from_pretrained
        transformer = load(Path(resume_from) / TRANSFORMER, low_cpu_mem_usage=False)
        return transformer, load(Path(resume_from) / EMA, low_cpu_mem_usage=False).to(device)
    transformer = build_transformer(config.image_size // codec.factor, config.patch_size, codec.channels,
                                    config.layers, config.heads, config.head_dim, text_encoder.hidden_size,
                                    seed=config.seed)
    return transformer, None


def _train_dit(config: DitTrainConfig, out: Path, resume_from: str | None, ranks,
               progress: Callable[[dict], None] | None) -> dict:
    from diffusers import DDPMScheduler
    from transformers import get_constant_schedule_with_warmup

    rank, device = ranks.rank, ranks.device

    text_encoder, codec = _frozen_parts(config, out, device)
    recipe = {"space": codec.space, "text_length": text_encoder.max_length,
              **{k: getattr(config, k) for k in _FIXED if k not in ("space", "text_length")}}
    meta = {"format": FORMAT, "version": VERSION, **recipe, "text_encoder_source": config.text_encoder,
            "vae_source": config.vae, "train_config": asdict(config)}
    if resume_from:
        before = read_meta(Path(resume_from))
        # A setting added since an older run: what its full config recorded, else the default then.
        recorded = {**(before.get("train_config") or {}), **before}
        require_same_recipe(resume_from, recorded, recipe, _ADDED_DEFAULTS)

    check_caption_sources(config.data, config.p, config.recaption_field, config.mix, config.caption_field)
    stream = trainer_stream(config, SquarePixels(config.image_size), ranks, out)

    transformer, ema_weights = _transformer(config, resume_from, codec, text_encoder, device)
    transformer.to(device).train()
    ema = Ema(transformer, config.ema_decay, ema_weights)
    noise_scheduler = DDPMScheduler(  # clip_sample: x0 lies in [-1, 1] in pixel space only
        num_train_timesteps=config.train_timesteps, beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type, clip_sample=codec.space == "pixel")
    if rank == 0:
        frozen = [] if (out / TEXT_ENCODER).is_dir() else [Part(text_encoder, TEXT_ENCODER)]
        if config.vae and not (out / VAE).is_dir():
            frozen.append(Part(codec.vae, VAE))
        save_final(out, frozen + [Part(noise_scheduler, SCHEDULER)])

    optimizer = torch.optim.AdamW(transformer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_schedule = get_constant_schedule_with_warmup(optimizer, config.warmup)
    torch.manual_seed(config.seed * 1000 + rank + 1)  # noise and timesteps (a resume restores its own)
    resumed = resume(resume_from, ranks, config, optimizer, lr_schedule, stream, {}, (WEIGHTS,))
    rng, batches = resumed.rng, resumed.batches
    captions = {**dict.fromkeys(CAPTION_KINDS, 0), **resumed.extra.get("captions", {})}
    step_loss = _DiffusionStep(config, ranks, text_encoder, codec, noise_scheduler, ranks.wrap(transformer),
                               rng, captions, first=resumed.step == 0)

    def parts(step: int) -> list:
        return [Part(transformer, TRANSFORMER), Part(ema.model, EMA), Part(noise_scheduler, SCHEDULER),
                JsonPart({**meta, "step": step})]

    loop = TrainLoop(ranks, out, optimizer, lr_schedule, list(transformer.parameters()), config.steps,
                     config.log_every, config.save_every, parts=parts,
                     extra=lambda: {"losses": loop.losses, "captions": captions}, rng=rng,
                     grad_clip=config.grad_clip, after_step=lambda step: ema.update(transformer, step),
                     progress=progress, losses=list(resumed.extra.get("losses", [])))
    started = time.perf_counter()
    step = loop.run(batches, resumed.step, step_loss)
    seconds = time.perf_counter() - started
    result = {"steps": step, "losses": loop.losses, "pairs": sum(s.samples for s in stream.shards),
              "captions": captions, "images_per_s": loop.images_per_s}
    finish_run(ranks, batches, out, lambda: save_final(out, parts(step)),
               {**result, "seconds_this_run": round(seconds, 2), "steps_this_run": step - resumed.step,
                "device": device, "world_size": ranks.world_size, "threads": torch.get_num_threads(),
                "config": asdict(config)})
    return {**result, "seconds": seconds}


class _DiffusionStep:
    """One batch's loss: a caption drawn per sample (counted by kind), the images noised at random
    timesteps, the prediction against the noise (or velocity). A first batch with no caption at
    all, on every rank, is refused: that data cannot train text-to-image."""

    def __init__(self, config: DitTrainConfig, ranks, text_encoder, codec, noise_scheduler, trained,
                 rng: random.Random, captions: dict, first: bool):
        self.config, self.ranks, self.text_encoder, self.codec = config, ranks, text_encoder, codec
        self.noise_scheduler, self.trained, self.rng = noise_scheduler, trained, rng
        self.captions, self.first, self.device = captions, first, ranks.device
        self.autocast = torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16,
                                       enabled=config.mixed_precision == "bf16")

    def __call__(self, batch: dict) -> torch.Tensor:
        config, scheduler = self.config, self.noise_scheduler
        if config.mix:
            mix = CaptionMix.parse(config.mix)
            drawn = [pick_mixed_caption(mix, org, re, more, config.caption_dropout, self.rng)
                     for org, re, more in zip(batch["org"], batch["re"], batch["more"], strict=True)]
        else:
            drawn = [pick_caption(Pair(key, None, org, re), config.p, config.caption_dropout, self.rng)
                     for key, org, re in zip(batch["keys"], batch["org"], batch["re"], strict=True)]
        for _, kind in drawn:
            self.captions[kind] = self.captions.get(kind, 0) + 1  # --mix: kinds are its columns
        if self.first and _every_rank(self.ranks, all(kind == UNCAPTIONED for _, kind in drawn)):
            raise TrainingInputError("no sample of the first batch has a caption (neither its own nor "
                                     f"{config.recaption_field or 'a recaption'}): give captioned data (a "
                                     ".txt or a caption column beside each image, --caption-field, "
                                     "--recaption-field, or recap caption output)")
        self.first = False
        features, mask = self.text_encoder.encode([t for t, _ in drawn])
        x0 = self.codec.draw(self.codec.prepare(batch["pixels"]).to(self.device))
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, config.train_timesteps, (len(drawn),), device=self.device)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        with self.autocast:
            prediction = self.trained(noisy, encoder_hidden_states=features, encoder_attention_mask=mask,
                                      timestep=timesteps).sample
        v_prediction = config.prediction_type == "v_prediction"
        target = scheduler.get_velocity(x0, noise, timesteps) if v_prediction else noise
        return diffusion_loss(prediction.float(), target, timesteps, scheduler, config)
