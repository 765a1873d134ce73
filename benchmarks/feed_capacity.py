"""Feed capacity: how many images/s the caption pipeline's loader delivers per CPU core.

The whole `recap caption` pipeline (tar shards read, JPEG decoded, LLaVA-1.5 336 px pixels and
prompt token ids prepared in loader processes, batches handed over, rows written to parquet
with their .done markers) around an instant engine: the built-in tiny model's real preparer, and
a generate that returns a fixed caption at once, so nothing but feeding is measured. Baseline
in the same run: a plain PIL loop on one core (image_path.plain_pillow: open, convert, resize the
short side to 336, centre crop, normalise with numpy) over the same JPEG bytes, nothing else.

Source images: 512 px on the long side (re-encoded bundled photos, JPEG q90), in webdataset tars.
For scale: one H100 running LLaVA-1.5-7B at our goal consumes about 55 images/s; vLLM's
in-engine preprocessing was reported at 52.7 images/s (vLLM PR 24519). Target: >= 150 images/s
per loader core.

    python benchmarks/feed_capacity.py [--shards 4 --per-shard 256 --batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from image_path import jpegs, plain_pillow  # the same JPEGs and plain PIL baseline (benchmarks/)
from recaption.captioning.pipeline import CaptionPipeline
from recaption.config import CaptionConfig, RunConfig
from recaption.engines.base import Generation
from recaption.engines.transformers_engine import TransformersCaptioner
from recaption.models.tiny import tiny_model_path
from recaption.readers import discover_shards
from recaption.samples.shards import ShardRecord, write_webdataset_shard


def instant_engine(batch_size: int) -> TransformersCaptioner:
    """The tiny model's captioner with generation replaced by a fixed caption."""
    config = CaptionConfig(model=str(tiny_model_path()), batch_size=batch_size, device="cpu")
    engine = TransformersCaptioner(config)
    engine.setup()
    engine.generate = instant_generate
    return engine


def instant_generate(inputs, decoding=None):
    return [Generation("a fixed caption.", 4, False) for _ in range(len(inputs["input_ids"]))]


def long_lived_worker(caption, run, shards, workers: int):
    """The Ray actor's body in this process: one loader fed shard by shard from its queue."""
    from concurrent.futures import ThreadPoolExecutor

    from recaption.executors.ray_executor import CaptionWorker

    worker = CaptionWorker(caption, run, loader_workers=workers)
    worker.pipeline.captioner.generate = instant_generate
    started = time.perf_counter()
    with ThreadPoolExecutor(worker.ready()["slots"]) as callers:  # the driver keeps every slot busy
        results = list(callers.map(worker.caption_shard, shards))
    return sum(r.status_counts.get("ok", 0) for r in results), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", default="1,2", help="loader processes to try")
    args = parser.parse_args()
    torch.set_num_threads(1)
    total = args.shards * args.per_shard
    print(f"feed_capacity  {date.today()}  {platform.processor() or platform.machine()}  "
          f"{os.cpu_count()} cores  {total} images of 512 px in {args.shards} tars")
    images = jpegs(512, total)
    engine = instant_engine(args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for s in range(args.shards):
            first = s * args.per_shard
            records = [ShardRecord(images[first + i], f"photo {i}") for i in range(args.per_shard)]
            paths.append(Path(tmp) / f"{s:05d}.tar")
            write_webdataset_shard(paths[-1], records, shard_id=s)
        shards = discover_shards([str(p) for p in paths])

        started = time.perf_counter()
        for data in images:
            plain_pillow(data)
        plain = total / (time.perf_counter() - started)
        print(f"{'plain PIL loop, 1 core':36s} {plain:7.1f} images/s")

        caption = engine.config
        for workers in (int(w) for w in args.workers.split(",")):
            run = RunConfig(output=f"{tmp}/out-{workers}", workers=workers)
            started = time.perf_counter()
            summary = CaptionPipeline(caption, run, captioner=engine).run(shards)
            seconds = time.perf_counter() - started
            ok = summary.status_counts.get("ok", 0)
            assert ok == total, f"{ok} of {total} captioned"
            report(f"pipeline, {workers} loader {plural(workers)}", ok / seconds, workers, plain)
            print(f"  {summary.bound_by()}")
        for workers in (int(w) for w in args.workers.split(",")):
            run = RunConfig(output=f"{tmp}/actor-{workers}")
            ok, seconds = long_lived_worker(caption, run, shards, workers)
            assert ok == total, f"{ok} of {total} captioned"
            report(f"Ray actor body, {workers} loader {plural(workers)}", ok / seconds, workers, plain)


def plural(workers: int) -> str:
    return "processes" if workers > 1 else "process"


def report(what: str, rate: float, workers: int, plain: float) -> None:
    print(f"{what:36s} {rate:7.1f} images/s = {rate / workers:6.1f} per loader core "
          f"({rate / plain:.2f}x the plain PIL loop)")


if __name__ == "__main__":
    main()
