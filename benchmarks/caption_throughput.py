"""Caption throughput: `recap caption` vs the naive loop a user would write, in one run.

The model is LLaVA-1.5 with the paper's captioner's shapes, built from config with random
weights (no download): CLIP ViT-L/14-336 vision tower (576 image tokens), 2-layer GELU MLP
projector, Llama-3-8B language model (32 layers, 4096 wide, GQA 8 KV heads, 128256 vocab).
`--size small` scales it down for a CPU. Random weights never stop early, so every caption is
exactly `--max-new-tokens` long (min_new_tokens = max_new_tokens): both sides do the same work.

  ours   recap's pipeline: tar shards -> loader workers decode + preprocess ahead -> pinned,
         non-blocking copies -> batched generate (batch 0 = sized from free GPU memory, halved
         on out-of-memory) -> parquet
  naive  for each batch of 8 files: PIL open, processor(...), model.generate, batch_decode;
         nothing overlapped

Printed: images/s, output tokens/s, peak GPU memory, and the fraction of the compute roofline
(model FLOPs per image / achievable dense matmul FLOP/s measured in the same run; the REFERENCE
figure of ~800 TFLOP/s is also used on H100/H200), and the ratio ours / naive.

    python benchmarks/caption_throughput.py                 # full size on a GPU
    python benchmarks/caption_throughput.py --size small    # CPU-sized
"""

from __future__ import annotations

import argparse
import io
import platform
import random
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from PIL import Image

from recaption.captioning.pipeline import CaptionPipeline
from recaption.config import CaptionConfig, RunConfig
from recaption.engines.transformers_engine import TransformersCaptioner
from recaption.models.registry import PAPER_PROMPT
from recaption.models.tiny import tiny_model_path
from recaption.readers import discover_shards
from recaption.samples.shards import ShardRecord, bundled_samples, write_webdataset_shard

SHAPES = {
    # vision: CLIP ViT-L/14-336; text: Llama-3-8B
    "full": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                             num_attention_heads=16, image_size=336, patch_size=14),
                 text=dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256)),
    "small": dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                              num_attention_heads=4, image_size=336, patch_size=14),
                  text=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                            num_attention_heads=8, num_key_value_heads=2, head_dim=64, vocab_size=32000)),
}
NOMINAL_TFLOPS = {"H100": 800.0, "H200": 800.0}  # ../shared/REFERENCE.md's dense bf16 figure


def build_model(size: str, device: str, dtype):
    """LLaVA of the given shapes with random weights, plus the tiny model's processor (its
    tokenizer, LLaMA-3 chat template and LLaVA pad-to-square 336 px image processor)."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    source = tiny_model_path()
    config = AutoConfig.from_pretrained(source)
    for key, value in SHAPES[size]["vision"].items():
        setattr(config.vision_config, key, value)
    for key, value in SHAPES[size]["text"].items():
        setattr(config.text_config, key, value)
    config.text_config.max_position_embeddings = 8192
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), AutoProcessor.from_pretrained(source)


def make_images(n: int, folder: Path, per_shard: int = 64) -> tuple[list[Path], list[Path]]:
    """n distinct 336x336 JPEGs (random crops of the bundled photos) as files and as tar shards."""
    rng = random.Random(0)
    photos = [Image.open(io.BytesIO(r.image)).convert("RGB") for r in bundled_samples()]
    files, records = [], []
    (folder / "files").mkdir(parents=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = rng.randint(min(photo.size) // 2, min(photo.size))
        x, y = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        buf = io.BytesIO()
        photo.crop((x, y, x + side, y + side)).resize((336, 336), Image.Resampling.BICUBIC).save(buf, "JPEG")
        files.append(folder / "files" / f"{i:06d}.jpg")
        files[-1].write_bytes(buf.getvalue())
        records.append(ShardRecord(buf.getvalue(), f"photo {i}"))
    shards = []
    for s in range(0, n, per_shard):
        shards.append(folder / f"{s // per_shard:05d}.tar")
        write_webdataset_shard(shards[-1], records[s : s + per_shard], shard_id=s // per_shard)
    return files, shards


def naive_loop(model, processor, files: list[Path], batch: int, max_new_tokens: int) -> float:
    """What a user writes first: load a batch, process it, generate, decode; one after another."""
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PAPER_PROMPT}]}],
        add_generation_prompt=True)
    processor.tokenizer.padding_side = "left"
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        images = [Image.open(f).convert("RGB") for f in files[i : i + batch]]
        inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
        inputs = inputs.to(model.device, model.dtype)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             do_sample=False)
        processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    sync()
    return time.perf_counter() - start


def ours(captioner: TransformersCaptioner, shards: list[Path], out: Path,
         workers: int | None) -> tuple[float, int]:
    run_config = RunConfig(output=str(out), overwrite=True, workers=workers)
    pipeline = CaptionPipeline(captioner.config, run_config, captioner)
    start = time.perf_counter()
    summary = pipeline.run(discover_shards([str(p) for p in shards]))
    sync()
    return time.perf_counter() - start, summary.rows


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def flops_per_image(model, prompt_tokens: int, new_tokens: int) -> float:
    """2 FLOPs per parameter per token: language model (without the embedding table) over the
    prompt (image tokens included) and the caption, vision tower over 577 positions, projector
    over 576. Attention's quadratic term (~3% here) is left out, so this underestimates."""
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    lm = model.model.language_model
    text = count(lm) - lm.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    vision = count(model.model.vision_tower)
    projector = count(model.model.multi_modal_projector)
    patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    return 2 * (text * (prompt_tokens + new_tokens) + vision * (patches + 1) + projector * patches)


def matmul_tflops(device: str, dtype) -> float:
    """Achievable dense matmul rate on this device: the practical roofline."""
    n = 8192 if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    reps = 20 if device.startswith("cuda") else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SHAPES), help="default: full on GPU, small on CPU")
    parser.add_argument("--images", type=int, help="images for ours (default 1024 GPU, 64 CPU)")
    parser.add_argument("--naive-images", type=int, help="images for naive (default: a quarter)")
    parser.add_argument("--batch-size", type=int, help="ours; default 0 (auto) on GPU, 8 on CPU")
    parser.add_argument("--naive-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=70)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    size = args.size or ("full" if gpu else "small")
    n = args.images or (1024 if gpu else 64)
    naive_n = args.naive_images or max(args.naive_batch, n // 4)
    dtype = torch.bfloat16 if gpu else torch.float32
    model, processor = build_model(size, device, dtype)
    config = CaptionConfig(model=f"llava-{size}-random", max_new_tokens=args.max_new_tokens,
                           min_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size if args.batch_size is not None else (0 if gpu else 8))
    captioner = TransformersCaptioner.from_model(model, processor, config)
    name = torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()
    print(f"caption_throughput  {date.today()}  device: {name}  torch {torch.__version__}  "
          f"model: LLaVA {size} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, random)  "
          f"{args.max_new_tokens} new tokens per image")

    with tempfile.TemporaryDirectory() as tmp:
        files, shards = make_images(max(n, naive_n), Path(tmp))
        probe = captioner.prepare([Image.open(files[0])], [captioner.plain_prompt])
        prompt_tokens = probe["input_ids"].shape[1]
        # Warm up both paths (CUDA context, kernels, allocator) on a few images.
        naive_loop(model, processor, files[: args.naive_batch], args.naive_batch, args.max_new_tokens)
        rates = {}
        for label in ("naive", "ours", "naive again"):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            if label.startswith("naive"):
                seconds, count = naive_loop(model, processor, files[:naive_n], args.naive_batch,
                                            args.max_new_tokens), naive_n
            else:
                seconds, count = ours(captioner, shards, Path(tmp) / "out", args.workers)
            rates[label] = count / seconds
            memory = peak_memory_gib()
            print(f"{label:12s} {count:5d} images in {seconds:7.1f} s: {rates[label]:7.2f} images/s  "
                  f"{rates[label] * args.max_new_tokens:8.0f} output tokens/s  "
                  f"peak GPU memory {'n/a' if memory is None else f'{memory:.1f} GiB'}")
        print(f"ours: batch size {captioner.batch_size} (largest that ran: "
              f"{min(captioner.batch_size, captioner.max_rows)})")
        flops = flops_per_image(model, prompt_tokens, args.max_new_tokens)
        peak = matmul_tflops(device, dtype)
        best = flops / (peak * 1e12)
        print(f"model: {flops / 1e12:.2f} TFLOP per image ({prompt_tokens} prompt tokens incl. image); "
              f"measured dense matmul {peak:.1f} TFLOP/s -> roofline {1 / best:.1f} images/s")
        naive = (rates["naive"] + rates["naive again"]) / 2
        print(f"fraction of roofline: ours {rates['ours'] * best:.1%}, naive {naive * best:.1%}")
        for key, nominal in NOMINAL_TFLOPS.items():
            if key in name:
                print(f"against the nominal {nominal:.0f} TFLOP/s: "
                      f"roofline {nominal * 1e12 / flops:.1f} images/s, "
                      f"ours {rates['ours'] * flops / (nominal * 1e12):.1%}")
        print(f"ratio ours / naive: {rates['ours'] / naive:.2f}x  "
              f"(naive runs {rates['naive']:.2f} and {rates['naive again']:.2f} images/s)")


if __name__ == "__main__":
    main()
