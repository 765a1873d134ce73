"""Prompts -> images with a trained DiT, written as an img2dataset-layout shard (so `recap score`,
`report` and the evaluators read it) plus a contact sheet beside the folder (docs/dit.md).

Every image has its own noise generator, seeded from (seed, image number), so it does not depend
on its batch. Classifier-free guidance: eps(empty) + guidance x (eps(prompt) - eps(empty)).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from ..samples.shards import ShardRecord, write_webdataset_shard
from ..spine.atomic import TMP_SUFFIX, write_bytes_atomic, write_json_atomic
from ..spine.contract import Step, open_output
from ..spine.contract import check_output as check_contract
from ..spine.files import open_input
from ..training.inputs import TrainingInputError, check_device
from .model import EMA, SCHEDULER, LoadedDit, component, load_dit, pad_features, read_meta
from .prompt_files import load_prompts, looks_like_prompt_file, read_prompts

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "dpm", "ddpm")
GENERATE_JSON = "generate.json"


def image_seed(seed: int, number: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:8], "little") >> 1


# Guidance scales past this only amplify noise: eps differences times 1e39 overflow float32 into
# black images. Published models use 1-20.
MAX_GUIDANCE = 100.0


def check_guidance(guidance: float) -> float:
    """A scale in [0, MAX_GUIDANCE] (1: no guidance, 0: unconditional; a negative one would steer away)."""
    if not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise TrainingInputError(f"--guidance {guidance}: give a number from 0 to {MAX_GUIDANCE:g} (1 = no "
                                 "guidance, 0 = ignore the prompt, above 1 = follow it more closely; the "
                                 "paper: 10)")
    return float(guidance)


def make_scheduler(dit: LoadedDit, sampler: str):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if sampler not in SAMPLERS:
        raise TrainingInputError(f"--sampler {sampler}: choose {', '.join(SAMPLERS)}")
    cls = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}[sampler]
    return cls.from_config(dit.scheduler_config)


@torch.no_grad()
def sample(dit: LoadedDit, prompts: list[str], seeds: list[int], guidance: float = 4.0, steps: int = 50,
           sampler: str = "ddim") -> torch.Tensor:
    """uint8 images (B x 3 x H x W) for `prompts`, image i from noise seeded with seeds[i]."""
    check_guidance(guidance)
    device = next(dit.transformer.parameters()).device
    scheduler = make_scheduler(dit, sampler)
    scheduler.set_timesteps(steps, device=device)
    size = dit.image_size // dit.codec.factor
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(dit.codec.channels, size, size, generator=g) for g in generators]).to(device)
    x = x * scheduler.init_noise_sigma
    guided = guidance != 1.0
    parts = [dit.text_encoder.encode(prompts)]
    if guided:
        parts.insert(0, dit.text_encoder.encode([""] * len(prompts)))
    features, mask = pad_features(parts)
    for t in scheduler.timesteps:
        inputs = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
        timestep = t.expand(inputs.shape[0]).to(device)
        eps = dit.transformer(inputs, encoder_hidden_states=features, encoder_attention_mask=mask,
                              timestep=timestep).sample
        if guided:
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
        x = scheduler.step(eps, t, x, generator=generators).prev_sample
    return dit.codec.decode(x).cpu()


def png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(images: list[bytes], columns: int = 8, pad: int = 2) -> Image.Image:
    tiles = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    w, h = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    return sheet


def _check_model(model, steps: int, use_ema: bool) -> tuple[Path, bool]:
    """The DiT folder and whether its EMA weights will be used (asked for, and there); refused
    before anything is loaded: not a DiT folder, more steps than its train timesteps."""
    folder = Path(model).expanduser()
    if not folder.exists():
        raise TrainingInputError(f"model {model}: no such folder (give a folder recap train-dit wrote)")
    if not folder.is_dir():
        raise TrainingInputError(f"model {model}: is a file, not a folder (give one recap train-dit wrote)")
    meta = read_meta(folder)
    config = component(folder, SCHEDULER) / "scheduler_config.json"
    try:
        settings = json.loads(config.read_text())
        timesteps = int(settings.get("num_train_timesteps", meta.get("train_timesteps", 1000)))
    except (OSError, ValueError) as exc:
        raise TrainingInputError(f"model {model}: unreadable {config.name} ({exc})") from None
    if steps > timesteps:
        raise TrainingInputError(f"--steps {steps}: the model was trained with {timesteps} timesteps; give "
                                 f"at most {timesteps}")
    return folder, use_ema and (folder / EMA).is_dir()


def check_output_folder(output, owner: str, overwrite: bool) -> tuple[Path, list[Path]]:
    """The output folder and the shards already in it (to replace): refused before any work when
    it holds `owner`'s shards and not `overwrite` (whether it may be written: the output contract)."""
    out = Path(output).expanduser()
    old = sorted(out.glob("*.tar")) if out.is_dir() else []
    if old and not overwrite:
        raise TrainingInputError(f"--output {output}: already holds {len(old)} shard(s) from an earlier "
                                 f"{owner}; give a new folder, or --overwrite to replace them")
    return out, old


def sheet_path(out: Path, sheet: str | None) -> Path:
    """Where the contact sheet goes (`sheet`, or OUTPUT-contact-sheet.png beside the folder);
    refused before any work when a file is there that no earlier run into `out` wrote (a user's
    picture, the prompt file, a link): it is outside the output folder the contract guards."""
    base = out.absolute()
    path = Path(sheet).expanduser().absolute() if sheet else base.with_name(f"{base.name}-contact-sheet.png")
    if path.exists() or path.is_symlink():
        ours = _recorded(out).get("contact_sheet")
        same = isinstance(ours, str) and os.path.realpath(ours) == os.path.realpath(path)
        if not same or path.is_symlink() or not path.is_file():
            raise TrainingInputError(f"the contact sheet {path}: something is there already that an earlier "
                                     f"generate into {out} did not write; move it, or choose another output "
                                     "folder (Python: or another sheet=)")
    return path


def _recorded(out: Path) -> dict:
    """The folder's generate.json ({}: none, unreadable, a FIFO in its place)."""
    try:
        with open_input(out / GENERATE_JSON, "r") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _made_by_generate(out) -> bool:
    """The folder holds generate.json and nothing else but the shards it lists (how the
    contract knows generate's folders from before they were stamped)."""
    folder = Path(out.root)
    listed = _recorded(folder).get("shards")
    if not isinstance(listed, list):
        return False
    listed = {name for name in listed if isinstance(name, str)}
    # what a user sees in the folder: no hidden files, no temporaries a crash left
    visible = (p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(TMP_SUFFIX))
    return all(p.name == GENERATE_JSON or p.name in listed for p in visible)


# What `recap generate` writes (the output contract): a folder of image shards and generate.json.
GENERATE = Step("generate", recognise=_made_by_generate, always_recognise=True)


def _sample_records(dit: LoadedDit, items: list[dict], images_per_prompt: int, batch_size: int, seed: int,
                    guidance: float, steps: int, sampler: str, progress) -> list[ShardRecord]:
    """Every prompt's images, in batches, each with its own seed and the row it came from."""
    jobs = [(p, k) for p in range(len(items)) for k in range(images_per_prompt)]
    records: list[ShardRecord] = []
    if progress:
        progress(0, len(jobs))
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        numbers = range(start, start + len(chunk))
        seeds = [image_seed(seed, n) for n in numbers]
        images = sample(dit, [items[p]["prompt"] for p, _ in chunk], seeds, guidance, steps, sampler)
        for (p, k), image, s, n in zip(chunk, images, seeds, numbers, strict=True):
            extra = {k2: v for k2, v in items[p].items() if k2 != "prompt"}
            extra.update(prompt_index=p, image_index=k, seed=seed, image_seed=s, guidance=guidance,
                         steps=steps, sampler=sampler)
            records.append(ShardRecord(image=png(image), caption=items[p]["prompt"],
                                       url=f"generated://{seed}/{n}", extension="png", extra=extra))
        if progress:
            progress(len(records), len(jobs))
    return records


def generate(model: str | Path, prompts, output: str | Path, *, column: str | None = None, seed: int = 0,
             images_per_prompt: int = 1, batch_size: int = 32, guidance: float = 4.0, steps: int = 50,
             sampler: str = "ddim", use_ema: bool = True, device: str = "auto", shard_size: int = 10_000,
             sheet_images: int = 64, sheet: str | Path | None = None,
             progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> dict:
    """Images for `prompts` (see load_prompts) from the DiT folder `model`, into `output`; returns
    the summary also written to generate.json. Every input is checked before the model loads.
    `output` must be new, empty, or generate's; one holding shards is refused unless `overwrite`
    (then the old set's leftover shards are removed, so readers never mix two sets). `sheet`: the
    contact sheet's path; `progress(done, total)` before the first batch and after each; `use_ema`:
    the EMA weights when the folder has them (else the raw ones, with a warning)."""
    counts = {"images-per-prompt": images_per_prompt, "batch-size": batch_size, "steps": steps,
              "shard-size": shard_size}
    for name, value in counts.items():
        if value < 1:
            raise TrainingInputError(f"--{name} {value}: must be at least 1")
    guidance = check_guidance(guidance)
    if sampler not in SAMPLERS:
        raise TrainingInputError(f"--sampler {sampler}: choose {', '.join(SAMPLERS)}")
    items, skipped, note = read_prompts(prompts, column)
    folder, ema = _check_model(model, steps, use_ema)
    inputs = [str(folder), *([str(prompts)] if isinstance(prompts, (str, Path)) else [])]
    check_contract(str(output), GENERATE, inputs)
    out, old_shards = check_output_folder(output, "recap generate", overwrite)
    sheet_file = sheet_path(out, sheet)
    device = check_device(device)
    # Said once every input has passed, so a refusal stays the only line.
    if note:
        log.warning("%s", note)
    if use_ema and not ema:
        log.warning("model %s has no %s/: generating with its raw (non-EMA) weights; generate.json "
                    "records use_ema false", model, EMA)
    use_ema = ema
    dit = load_dit(folder, device, use_ema)
    started = time.perf_counter()
    records = _sample_records(dit, items, images_per_prompt, batch_size, seed, guidance, steps, sampler,
                              progress)
    seconds = time.perf_counter() - started
    summary = {"model": str(model), "use_ema": use_ema, "prompts": len(items), "skipped_prompts": skipped,
               "images": len(records), "seed": seed, "guidance": guidance, "steps": steps, "sampler": sampler,
               "batch_size": batch_size, "device": device, "seconds": round(seconds, 3),
               "images_per_s": round(len(records) / seconds, 3) if seconds > 0 else None}
    # Only now is the folder made (a run that fails while sampling leaves none), through the
    # output contract: locked, and OS errors at the output as one line.
    with open_output(str(out), GENERATE, inputs):
        fs = LocalFileSystem()
        # Marks the folder as generate's before the first shard lands, so a run stopped while
        # writing can be redone with overwrite; replaced by the summary at the end.
        planned = [f"{i:05d}.tar" for i in range(math.ceil(len(records) / shard_size))]
        write_json_atomic(fs, str((out / GENERATE_JSON).absolute()),
                          {**summary, "shards": sorted({*planned, *(p.name for p in old_shards)}),
                           "contact_sheet": str(sheet_file),
                           "incomplete": "stopped while writing shards; run again with --overwrite"})
        shards = []
        for shard_id, first in enumerate(range(0, len(records), shard_size)):
            path = out / f"{shard_id:05d}.tar"
            write_webdataset_shard(path, records[first : first + shard_size], shard_id=shard_id)
            shards.append(path.name)
        for stale in old_shards:
            if stale.name not in shards:
                stale.unlink()
        columns = images_per_prompt if images_per_prompt > 1 else 8
        grid = contact_sheet([r.image for r in records[:sheet_images]], columns)
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        write_bytes_atomic(fs, str(sheet_file), buf.getvalue())
        summary.update(shards=shards, contact_sheet=str(sheet_file), image_size=dit.image_size)
        write_json_atomic(fs, str((out / GENERATE_JSON).absolute()), summary)
        return summary


__all__ = ["SAMPLERS", "check_guidance", "contact_sheet", "generate", "load_prompts",
           "looks_like_prompt_file", "sample"]
