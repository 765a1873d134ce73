"""Recap-DiT throughput: training and sampling images/s of `recaption.dit` on this machine.

Trains each model size a few steps on shapes-world images (pixel space, 64 px, the tiny-clip
text encoder) and samples with each sampler setting, through the library functions themselves
(`train_dit`, `generate`), so the numbers include the text encoder, the EMA update, the optimizer
and, for sampling, classifier-free guidance (two model passes per step) and PNG encoding.
Training images/s is taken over the second half of the steps (the first half warms up).

    python benchmarks/dit_throughput.py                       # tiny and small, CPU
    python benchmarks/dit_throughput.py --sizes small b4 --device cuda --batch-size 256

Sizes (64 px, patch p -> (64/p)^2 tokens):
  tiny    2 layers, width 32 (2 heads x 16), patch 8     the tests' model
  small   6 layers, width 128 (4 x 32), patch 4           train_dit's defaults
  wide8   6 layers, width 256 (4 x 64), patch 8           fewer tokens; wide enough for a patch
  b4      12 layers, width 768 (12 x 64), patch 4         DiT-B/4's shape (the paper's DiT-B/4)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

SIZES = {
    "tiny": dict(layers=2, heads=2, head_dim=16, patch_size=8),
    "small": dict(layers=6, heads=4, head_dim=32, patch_size=4),
    "wide8": dict(layers=6, heads=4, head_dim=64, patch_size=8),
    "b4": dict(layers=12, heads=12, head_dim=64, patch_size=4),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    parser.add_argument("--images", type=int, default=512, help="shapes-world training images")
    parser.add_argument("--steps", type=int, default=20, help="training steps per size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sample-images", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--work", default=None, help="a folder for the runs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    from recaption.dit.generate import generate
    from recaption.dit.train import DitTrainConfig, train_dit
    from recaption.shapes import write_shapes_shards
    from recaption.shapes.prompts import balanced_prompt_set

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="dit-bench-"))
    write_shapes_shards(work / "shapes", args.images, start=5_000_000, shard_size=args.images, overwrite=True)
    prompts = balanced_prompt_set(max(1, args.sample_images // 4))[: args.sample_images]
    results = []
    for size in args.sizes:
        out = work / f"run-{size}"
        config = DitTrainConfig(
            data=[str(work / "shapes")],
            output=str(out),
            recaption_field="description",
            steps=args.steps,
            batch_size=args.batch_size,
            log_every=max(1, args.steps // 2),
            save_every=10**9,
            device=args.device,
            mixed_precision=args.mixed_precision,
            **SIZES[size],
        )
        started = time.perf_counter()
        trained = train_dit(config)
        train_wall = time.perf_counter() - started
        params = _parameters(out)
        row = {
            "size": size,
            **SIZES[size],
            "parameters_m": round(params / 1e6, 2),
            "batch_size": args.batch_size,
            "train_images_per_s": round(trained["images_per_s"], 1),
            "train_wall_s": round(train_wall, 1),
        }
        for sampler in ("ddim", "dpm"):
            summary = generate(
                out,
                prompts,
                work / f"gen-{size}-{sampler}",
                steps=args.sample_steps,
                guidance=args.guidance,
                sampler=sampler,
                batch_size=min(64, len(prompts)),
                device=args.device,
            )
            row[f"sample_{sampler}_images_per_s"] = summary["images_per_s"]
        results.append(row)
        print(json.dumps(row), flush=True)
    device = _device(args.device)
    report = {
        "date": date.today().isoformat(),
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sample_steps": args.sample_steps,
        "guidance": args.guidance,
        "results": results,
    }
    print()
    print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {report['date']}")
    print(f"sampling: {args.sample_steps} steps, guidance {args.guidance} (two passes per step)")
    header = "| size | params (M) | batch | train img/s | sample DDIM img/s | sample DPM img/s |"
    print(header)
    print("|" + "---|" * 6)
    for r in results:
        print(
            f"| {r['size']} | {r['parameters_m']} | {r['batch_size']} | {r['train_images_per_s']} | "
            f"{r['sample_ddim_images_per_s']} | {r['sample_dpm_images_per_s']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def _parameters(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _device(requested: str) -> str:
    import torch

    if requested != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
