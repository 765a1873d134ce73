"""Pipeline overhead: `recap caption` end to end vs bare `model.generate` on the same batches.

Both use the same loaded model, the same images and the same generation settings, in one run.
The pipeline reads tar shards, decodes, preprocesses (in its prefetch thread), generates and
writes parquet; the baseline only calls `model.generate` on batches that were decoded and
preprocessed beforehand. The ratio is the share of the bare model's throughput the pipeline keeps.

    python benchmarks/pipeline_overhead.py [--shards 4 --per-shard 96 --batch-size 8]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from recaption.captioning.pipeline import CaptionPipeline
from recaption.config import CaptionConfig, RunConfig
from recaption.engines.transformers_engine import TransformersCaptioner
from recaption.readers import discover_shards
from recaption.samples.images import decode_image
from recaption.samples.shards import ShardRecord, bundled_samples, write_webdataset_shard


def make_shards(folder: Path, shards: int, per_shard: int) -> list[Path]:
    photos = bundled_samples()
    paths = []
    for s in range(shards):
        records = [ShardRecord(photos[(s * per_shard + i) % len(photos)].image, f"photo {i}")
                   for i in range(per_shard)]
        paths.append(folder / f"{s:05d}.tar")
        write_webdataset_shard(paths[-1], records, shard_id=s)
    return paths


def bare_generate(captioner: TransformersCaptioner, paths: list[Path], batch_size: int) -> tuple[float, int]:
    """Decode and preprocess everything first (untimed), then time generate alone."""
    images = [decode_image(s.image_bytes) for shard in discover_shards([str(p) for p in paths])
              for s in shard]
    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    batches = [captioner.prepare(chunk, [captioner.plain_prompt] * len(chunk)) for chunk in chunks]
    start = time.perf_counter()
    for inputs in batches:
        captioner.generate(inputs)
    return time.perf_counter() - start, len(images)


def pipeline_run(captioner: TransformersCaptioner, paths: list[Path], out: Path,
                 workers: int | None = None) -> tuple[float, int]:
    run_config = RunConfig(output=str(out), overwrite=True, workers=workers)
    pipeline = CaptionPipeline(captioner.config, run_config, captioner)
    shards = discover_shards([str(p) for p in paths])
    start = time.perf_counter()
    summary = pipeline.run(shards)
    return time.perf_counter() - start, summary.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="tiny-random", help="default: random 336 px tiny LLaVA")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None,
                        help="pipeline loader workers (default: the pipeline's own choice)")
    args = parser.parse_args()

    captioner = TransformersCaptioner(CaptionConfig(model=args.model, batch_size=args.batch_size,
                                                    max_new_tokens=args.max_new_tokens, device=args.device))
    captioner.setup()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_shards(Path(tmp) / "in", args.shards, args.per_shard)
        bare_generate(captioner, paths[:1], args.batch_size)  # warm-up
        print(f"device={captioner.device} torch={torch.__version__} threads={torch.get_num_threads()} "
              f"cpu={platform.processor() or platform.machine()} images={args.shards * args.per_shard} "
              f"batch={args.batch_size} max_new_tokens={args.max_new_tokens} workers={args.workers}")
        ratios = []
        for r in range(args.repeats):
            # Alternate the order so drift on a noisy machine hits both sides alike.
            order = ("bare", "pipeline") if r % 2 == 0 else ("pipeline", "bare")
            result = {}
            for name in order:
                if name == "bare":
                    result[name] = bare_generate(captioner, paths, args.batch_size)
                else:
                    result[name] = pipeline_run(captioner, paths, Path(tmp) / "out", args.workers)
            (tb, nb), (tp, np_) = result["bare"], result["pipeline"]
            ratio = (np_ / tp) / (nb / tb)
            ratios.append(ratio)
            print(f"repeat {r}: bare generate {nb / tb:7.1f} img/s   pipeline {np_ / tp:7.1f} img/s   "
                  f"ratio {ratio:.3f}")
        ratios.sort()
        print(f"ratio pipeline/bare: median {ratios[len(ratios) // 2]:.3f}, "
              f"min {ratios[0]:.3f}, max {ratios[-1]:.3f}")


if __name__ == "__main__":
    main()
