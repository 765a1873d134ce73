"""Does streaming change what train-clip learns? Loss curves of the streaming trainer (what
`recap train-clip` does now) against the former in-memory trainer (every pair decoded up front,
batches drawn at random; its loop reproduced here as it was: AdamW, warmup then cosine, gradient
clipping at 1.0), on the same shapes-world data, seeds and settings, in one run.

The two draw batches differently (epochs through a shuffle buffer vs sampling at random each
step), so the curves cannot be equal step for step; the question is whether they agree within
the spread between seeds.

    python benchmarks/streaming_loss_curve.py [--images 2000 --steps 300 --seeds 2]
"""

from __future__ import annotations

import argparse
import logging
import platform
import random
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path


def in_memory(config) -> list[float]:
    """The former train-clip loop (before streaming), single process."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from recaption.training.clip_train import choose_caption, fresh_clip, load_pairs

    model, tokenizer, processor = fresh_clip(config)
    tokenizer.padding_side = "right"
    model.train()
    pairs = load_pairs(config)
    chunks = [pairs[i : i + 256] for i in range(0, len(pairs), 256)]
    pixels = torch.cat([processor(images=[p.image for p in c], return_tensors="pt")["pixel_values"]
                        for c in chunks])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup, config.steps)
    rng = random.Random(config.seed * 1000)
    window = min(config.text_length, model.config.text_config.max_position_embeddings)
    losses = []
    for _ in range(config.steps):
        batch = rng.sample(range(len(pairs)), min(config.batch_size, len(pairs)))
        texts = [choose_caption(pairs[i], config.p, config.concat, rng) for i in batch]
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=window, return_tensors="pt")
        loss = model(**tokens, pixel_values=pixels[batch], return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--window", type=int, default=50, help="steps per averaged point")
    args = parser.parse_args()

    import torch

    from recaption.shapes import write_shapes_shards
    from recaption.training.clip_train import ClipTrainConfig, train_clip

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="loss-curve-"))
    write_shapes_shards(work / "data", args.images, shard_size=500)
    print(f"streaming_loss_curve  {date.today()}  {platform.processor() or platform.machine()}  "
          f"{args.images} shapes-world images, {args.steps} steps of {args.batch_size}, p 0.5 "
          f"(alt-text vs the world's description), width 64, lr 5e-4, {args.seeds} seeds")
    curves: dict[str, list[list[float]]] = {"in-memory": [], "streaming": []}
    for seed in range(args.seeds):
        for way in curves:
            config = ClipTrainConfig(data=[str(work / "data")], output=str(work / f"{way}-{seed}"),
                                     recaption_field="description", steps=args.steps,
                                     batch_size=args.batch_size, width=64, seed=seed, save_every=10**9,
                                     log_every=10**9, device="cpu", workers=1)
            started = time.time()
            losses = in_memory(config) if way == "in-memory" else train_clip(config)["losses"]
            curves[way].append(losses)
            print(f"seed {seed} {way:9s} {time.time() - started:5.0f} s  final-window loss "
                  f"{statistics.fmean(losses[-args.window:]):.4f}", flush=True)
    print(f"\nmean loss per {args.window} steps (mean over seeds, ± spread between seeds)")
    print("steps      | " + " | ".join(f"{way:>17s}" for way in curves))
    for start in range(0, args.steps, args.window):
        cells = []
        for runs in curves.values():
            means = [statistics.fmean(r[start : start + args.window]) for r in runs]
            spread = statistics.stdev(means) if len(means) > 1 else 0.0
            cells.append(f"{statistics.fmean(means):8.4f} ± {spread:6.4f}")
        print(f"{start + 1:4d}-{start + args.window:<5d} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
