"""Peak memory of `train-clip` as the dataset grows: streaming (what train-clip does) against
everything in memory (how it trained before: every pair decoded with `load_pairs`, still the
DiT trainer's way, and preprocessed into one tensor).

Shapes-world shards (docs/shapes.md) at 1x and 10x `--images`; each run trains the same
`--steps` in a fresh subprocess while this process samples the memory of its process tree
(the trainer and its loader workers) from /proc every 20 ms:

  tree RSS  sum of the processes' resident memory (pages shared by forked workers count in each)
  tree PSS  sum of proportional set sizes (shared pages split between their users: the
            tree's real footprint)
  trainer   the training process's own peak RSS (getrusage, exact; the loader workers not in it)

    python benchmarks/training_memory.py                 # 2,000 and 20,000 images, < 3 min on 2 cores
    python benchmarks/training_memory.py --images 5000 --no-in-memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve()


# ---- the child: one training run ----


def child(args) -> None:
    import torch

    from recaption.training.clip_train import ClipTrainConfig, train_clip

    torch.set_num_threads(1)  # the same compute on both ways; cores left for the loader workers
    config = ClipTrainConfig(
        data=[args.data],
        output=args.out,
        caption_field="description",
        recaption_field="description",
        steps=args.steps,
        batch_size=args.batch_size,
        width=32,
        layers=2,
        warmup=2,
        save_every=10**9,
        device="cpu",
        log_every=10**9,
        workers=args.workers,
    )
    started = time.time()
    result = train_clip(config) if args.way == "streaming" else train_in_memory(config)
    seconds = time.time() - started
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"steps": result["steps"], "seconds": seconds, "trainer": own}))


def train_in_memory(config) -> dict:
    """The former train-clip loop: all pairs decoded and preprocessed up front, random batches."""
    import random

    import torch

    from recaption.training.clip_train import choose_caption, fresh_clip, load_pairs

    model, tokenizer, processor = fresh_clip(config)
    pairs = load_pairs(config)
    pixels = torch.cat(
        [
            processor(images=[p.image for p in pairs[i : i + 256]], return_tensors="pt")["pixel_values"]
            for i in range(0, len(pairs), 256)
        ]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    rng = random.Random(config.seed)
    for _ in range(config.steps):
        batch = rng.sample(range(len(pairs)), config.batch_size)
        texts = [choose_caption(pairs[i], config.p, config.concat, rng) for i in batch]
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=config.text_length,
                           return_tensors="pt")  # fmt: skip
        loss = model(**tokens, pixel_values=pixels[batch], return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"steps": config.steps}


# ---- the parent: data, runs, memory of the process tree ----


def descendants(pid: int) -> list[int]:
    children = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children[ppid].append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children[p]
    return found


def rss_pss(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; (0, 0) once it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss"):
                    values[name] = int(rest.split()[0]) * 1024
    except OSError:
        return 0, 0
    return values.get("Rss", 0), values.get("Pss", 0)


def measured_run(way: str, data: Path, work: Path, args) -> dict:
    out = work / f"out-{way}-{data.name}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume of an earlier one
    command = [sys.executable, str(HERE), "child", "--way", way, "--data", str(data), "--out", str(out),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--workers", str(args.workers)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "pss": 0, "processes": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            pids = descendants(process.pid)
            sizes = [rss_pss(p) for p in pids]
            peak["rss"] = max(peak["rss"], sum(r for r, _ in sizes))
            peak["pss"] = max(peak["pss"], sum(p for _, p in sizes))
            peak["processes"] = max(peak["processes"], len(pids))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{way} run on {data} failed:\n{stderr[-3000:]}")
    return {**peak, **json.loads(stdout.strip().splitlines()[-1])}


def main(args) -> None:
    from recaption.shapes import write_shapes_shards

    work = Path(args.work or tempfile.mkdtemp(prefix="training-memory-"))
    sizes = {"1x": args.images, "10x": 10 * args.images}
    started = time.time()
    for name, count in sizes.items():
        if not (work / name).exists():
            write_shapes_shards(work / name, count, seed=0, shard_size=args.shard_size)
    print(f"shapes-world shards: {sizes['1x']:,} and {sizes['10x']:,} images of 64 px, "
          f"{args.shard_size:,} per shard, written in {time.time() - started:.0f} s to {work}")  # fmt: skip
    print(f"each run: {args.steps} steps of {args.batch_size}, fresh subprocess, torch on 1 thread; "
          f"streaming with {args.workers} loader workers")  # fmt: skip
    ways = ["streaming"] + ([] if args.no_in_memory else ["in-memory"])
    rows = {}
    mib = 1 << 20
    print(f"{'way':<10} {'data':>4} {'images':>7} {'tree RSS':>9} {'tree PSS':>9} {'trainer':>8} "
          f"{'procs':>5} {'s':>5}")  # fmt: skip
    for way in ways:
        for name, count in sizes.items():
            r = measured_run(way, work / name, work, args)
            rows[way, name] = r
            print(f"{way:<10} {name:>4} {count:>7,} {r['rss'] / mib:7.0f}Mi {r['pss'] / mib:7.0f}Mi "
                  f"{r['trainer'] / mib:6.0f}Mi {r['processes']:>5} {r['seconds']:5.0f}")  # fmt: skip
    for way in ways:
        small, big = rows[way, "1x"], rows[way, "10x"]
        print(
            f"{way}: 10x / 1x  peak tree RSS {big['rss'] / small['rss']:.2f}, tree PSS "
            f"{big['pss'] / small['pss']:.2f}, trainer {big['trainer'] / small['trainer']:.2f}"
        )
    print(f"total {time.time() - started:.0f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("child")
    run.add_argument("--way", choices=["streaming", "in-memory"], required=True)
    run.add_argument("--data", required=True)
    run.add_argument("--out", required=True)
    for p in (parser, run):
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=2000, help="the 1x size (10x is ten times it)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--no-in-memory", action="store_true", help="streaming only")
    parser.add_argument("--work", help="folder for the shards and outputs (default: a new temporary one)")
    parsed = parser.parse_args()
    child(parsed) if parsed.command == "child" else main(parsed)
