"""Prompts -> images with a trained DiT, written as an img2dataset-layout shard (so `recap score`,
`report` and the evaluators read it) plus a contact sheet.

Every image has its own noise generator, seeded from (seed, image number): a run is the same for
the same seed, and an image does not depend on which batch it fell in (up to floating-point
differences between batch sizes). Classifier-free guidance: eps = eps(empty text) + guidance x
(eps(prompt) - eps(empty text)); guidance 1 is the plain conditional model. Samplers: ddim (eta
0), dpm (DPM-Solver++ multistep) or ddpm (ancestral, the paper's 250 steps), all configured from
the DDPM schedule the model was trained with.

Output:
  OUTPUT/00000.tar ...          {key}.png, {key}.txt (the prompt), {key}.json (url, prompt,
                                seed, guidance, steps, sampler, and whatever the prompt came
                                with: a shapes prompt's spec, style, complexity)
  OUTPUT/generate.json          settings, counts, seconds, images/s
  OUTPUT-contact-sheet.png      the first images in a grid (a row per prompt when several per
                                prompt); beside the folder, not in it, because readers take a
                                folder's loose images as samples too
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from ..atomic import write_bytes_atomic, write_json_atomic
from ..shards import ShardRecord, write_webdataset_shard
from ..training.inputs import TrainingInputError, check_device
from .model import LoadedDit, load_dit, pad_features

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "dpm", "ddpm")


# ---- prompts ----


def load_prompts(source, column: str | None = None) -> list[dict]:
    """Prompts as dicts {"prompt": text, ...anything else to record with the image}, from:
    a list of strings, of dicts with "prompt", or of shapes `Prompt`s; a .txt file (a prompt a
    line); a .jsonl file (objects with "prompt", or with `column`); a parquet file or a folder of
    them (`column`, default "prompt"; `recap caption` output: re_caption or org_caption)."""
    if isinstance(source, (list, tuple)):
        items = []
        for item in source:
            if isinstance(item, str):
                items.append({"prompt": item})
            elif isinstance(item, dict):
                items.append(dict(item))
            elif hasattr(item, "text") and hasattr(item, "spec"):  # recaption.shapes.prompts.Prompt
                items.append(
                    {
                        "prompt": item.text,
                        "spec": item.spec,
                        "style": item.style,
                        "index": item.index,
                        "complexity": item.complexity,
                    }
                )
            else:
                raise TrainingInputError(f"a prompt must be a string or a dict, not {type(item).__name__}")
        return _clean(items, column or "prompt", "the prompt list")
    path = Path(source).expanduser()
    if not path.exists():
        raise TrainingInputError(f"--prompts {source}: no such file or folder")
    if path.is_dir() or path.suffix == ".parquet":
        import pyarrow.parquet as pq

        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not files:
            raise TrainingInputError(f"--prompts {source}: no parquet files in it")
        name = column or "prompt"
        items = []
        for f in files:
            names = pq.read_schema(f).names
            if name not in names:
                raise TrainingInputError(
                    f"--prompts {f}: no column {name!r} (columns: {', '.join(names)}); give --column"
                )
            keep = [c for c in (name, "key") if c in names]
            for row in pq.read_table(f, columns=keep).to_pylist():
                items.append({"prompt": row[name], **({"source_key": row["key"]} if "key" in row else {})})
        return _clean(items, "prompt", str(source))
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".jsonl", ".json"):
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
        return _clean(items, column or "prompt", str(source))
    return _clean([{"prompt": line.strip()} for line in text.splitlines()], "prompt", str(source))


def _clean(items: list[dict], key: str, where: str) -> list[dict]:
    out = []
    for item in items:
        if key not in item:
            raise TrainingInputError(f"{where}: an item has no {key!r}")
        text = item.pop(key)
        if text is None or not str(text).strip():
            continue  # rows without that caption
        out.append({"prompt": str(text), **item})
    if not out:
        raise TrainingInputError(f"{where}: no prompts (every {key!r} is empty or missing)")
    if len(out) < len(items):
        log.warning("%s: %d of %d items have an empty %r and are skipped", where,
                    len(items) - len(out), len(items), key)
    return out


# ---- sampling ----


def image_seed(seed: int, number: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:8], "little") >> 1


def make_scheduler(dit: LoadedDit, sampler: str):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if sampler not in SAMPLERS:
        raise TrainingInputError(f"--sampler {sampler}: choose {', '.join(SAMPLERS)}")
    cls = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}[sampler]
    return cls.from_config(dit.scheduler_config)


@torch.no_grad()
def sample(
    dit: LoadedDit,
    prompts: list[str],
    seeds: list[int],
    guidance: float = 4.0,
    steps: int = 50,
    sampler: str = "ddim",
) -> torch.Tensor:
    """uint8 images (B x 3 x H x W) for `prompts`, image i from noise seeded with seeds[i]."""
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
        eps = dit.transformer(
            inputs, encoder_hidden_states=features, encoder_attention_mask=mask, timestep=timestep
        ).sample
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


def generate(
    model: str | Path,
    prompts,
    output: str | Path,
    *,
    column: str | None = None,
    seed: int = 0,
    images_per_prompt: int = 1,
    batch_size: int = 32,
    guidance: float = 4.0,
    steps: int = 50,
    sampler: str = "ddim",
    use_ema: bool = True,
    device: str = "auto",
    shard_size: int = 10_000,
    sheet_images: int = 64,
    sheet: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Images for `prompts` (see load_prompts) from the DiT folder `model`, into `output`.
    Returns the summary also written to generate.json. `sheet`: where the contact sheet goes
    (default OUTPUT-contact-sheet.png). `progress(done, total)` after each batch. An output that
    already holds shards is refused unless `overwrite` (then shards of the old set left over
    are removed, so readers never mix two sets)."""
    if images_per_prompt < 1 or batch_size < 1 or steps < 1 or shard_size < 1:
        raise TrainingInputError("images-per-prompt, batch-size, steps and shard-size must be at least 1")
    if sampler not in SAMPLERS:
        raise TrainingInputError(f"--sampler {sampler}: choose {', '.join(SAMPLERS)}")
    items = load_prompts(prompts, column)
    device = check_device(device)
    dit = load_dit(model, device, use_ema)
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise TrainingInputError(f"--output {output}: exists and is not a folder")
    old_shards = sorted(out.glob("*.tar")) if out.is_dir() else []
    if old_shards and not overwrite:
        raise TrainingInputError(
            f"--output {output}: already holds {len(old_shards)} shard(s); give a new folder or --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, k) for p in range(len(items)) for k in range(images_per_prompt)]
    records: list[ShardRecord] = []
    started = time.perf_counter()
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        numbers = range(start, start + len(chunk))
        seeds = [image_seed(seed, n) for n in numbers]
        images = sample(dit, [items[p]["prompt"] for p, _ in chunk], seeds, guidance, steps, sampler)
        for (p, k), image, s, n in zip(chunk, images, seeds, numbers, strict=True):
            extra = {k2: v for k2, v in items[p].items() if k2 != "prompt"}
            records.append(
                ShardRecord(
                    image=png(image),
                    caption=items[p]["prompt"],
                    url=f"generated://{seed}/{n}",
                    extension="png",
                    extra={
                        **extra,
                        "prompt_index": p,
                        "image_index": k,
                        "seed": seed,
                        "image_seed": s,
                        "guidance": guidance,
                        "steps": steps,
                        "sampler": sampler,
                    },
                )
            )
        if progress:
            progress(len(records), len(jobs))
    seconds = time.perf_counter() - started
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
    sheet_path = Path(sheet).expanduser() if sheet else out.with_name(f"{out.name}-contact-sheet.png")
    write_bytes_atomic(LocalFileSystem(), str(sheet_path.absolute()), buf.getvalue())
    summary = {
        "model": str(model),
        "use_ema": use_ema,
        "prompts": len(items),
        "images": len(records),
        "seed": seed,
        "guidance": guidance,
        "steps": steps,
        "sampler": sampler,
        "batch_size": batch_size,
        "device": device,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(records) / seconds, 3) if seconds > 0 else None,
        "shards": shards,
        "contact_sheet": str(sheet_path),
        "image_size": dit.image_size,
    }
    write_json_atomic(LocalFileSystem(), str((out / "generate.json").absolute()), summary)
    return summary


__all__ = ["SAMPLERS", "contact_sheet", "generate", "load_prompts", "sample"]
