"""Train, ship and measure the built-in scorer `tiny-clip` (recaption/data/tiny-clip).

A small transformers CLIPModel trained contrastively on the shapes world (docs/shapes.md) with
`recaption.training.clip_train` (the code behind `recap train-clip`): each image against its true
description, or with probability P its noisy one-object alt-text, so that full descriptions and
short alt-text-like captions both land in the space. Index ranges (sample i of the world depends
only on (seed 0, i)):

  training   2,000,000 .. 2,000,000 + --images     (no other split uses it)
  held out   2,900,000 .. 2,900,000 + --eval-images (measurements below and in the report)
  tests      tests/test_tiny_clip.py draws its own images at 3,500,000+

    python benchmarks/train_tiny_clip.py train      # writes src/recaption/data/tiny-clip
    python benchmarks/train_tiny_clip.py eval       # measures the shipped model (or --model DIR)

One CPU thread (torch.set_num_threads(1)) and fixed seeds, so a rerun on the same machine and
library versions gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

TRAIN_START, EVAL_START = 2_000_000, 2_900_000
SHIPPED = Path(__file__).resolve().parents[1] / "src" / "recaption" / "data" / "tiny-clip"
DEFAULTS = dict(images=10_000, p=0.25, width=64, layers=2, steps=1000, batch_size=128, lr=1e-3, warmup=100)


def train(args) -> None:
    import torch

    from recaption.models.tiny_clip import TEXT_WINDOW
    from recaption.shapes import write_shapes_shards
    from recaption.training.clip_train import ClipTrainConfig, train_clip

    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="tiny-clip-"))
    started = time.time()
    shards = write_shapes_shards(work / "shards", args.images, start=TRAIN_START, shard_size=2500,
                                 overwrite=True)
    written = time.time() - started
    config = ClipTrainConfig(
        data=[str(p) for p in shards],
        output=str(work / "clip"),
        p=args.p,  # probability of the shard's caption (the noisy alt-text); else the description
        recaption_field="description",
        text_length=TEXT_WINDOW,
        image_size=64,
        width=args.width,
        layers=args.layers,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        save_every=10**9,
        seed=0,
        device="cpu",
        log_every=100,
    )
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train_clip(config)
    trained = time.time() - started - written
    command = "python benchmarks/train_tiny_clip.py train " + " ".join(
        f"--{name.replace('_', '-')} {getattr(args, name)}" for name in DEFAULTS
    )
    ship(Path(config.output), Path(args.output), config, result, written, trained, command)
    print(f"shapes written in {written:.0f} s, trained in {trained:.0f} s; shipped to {args.output}")


def ship(
    trained: Path, target: Path, config, result: dict, written: float, seconds: float, command: str
) -> None:
    """The final model in fp16 safetensors + tokenizer + image processor + training.json."""
    import platform

    import torch
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(trained).half()
    staging = Path(tempfile.mkdtemp(prefix=".tiny-clip-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    tokenizer.chat_template = None  # the captioner's, meaningless for CLIP
    tokenizer.save_pretrained(staging)
    AutoImageProcessor.from_pretrained(trained).save_pretrained(staging)
    losses = result["losses"]
    (staging / "training.json").write_text(
        json.dumps(
            {
                "what": "tiny-clip: a small CLIP trained on the synthetic shapes world only",
                "command": command,
                "world": {"seed": 0, "start": TRAIN_START, "images": result["pairs"], "image_size": 64},
                "config": {k: v for k, v in asdict(config).items() if k not in ("data", "output")},
                "loss_first_100": statistics.fmean(losses[:100]),
                "loss_last_100": statistics.fmean(losses[-100:]),
                "seconds": {"write_shapes": round(written), "train": round(seconds)},
                "device": "cpu, 1 thread",
                "date": time.strftime("%Y-%m-%d"),
                "versions": {
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "python": platform.python_version(),
                },
            },
            indent=2,
        )
        + "\n"
    )
    staging.chmod(0o755)  # mkdtemp makes it private; a shipped folder is readable by all
    for file in staging.iterdir():
        file.chmod(0o644)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def measure(model: str, images: int, start: int = EVAL_START, seed: int = 0) -> dict:
    """What the scorer does on held-out shapes-world images, all through ClipScorer (the code
    `recap score` runs), scores = 100 x cosine.

    i2t/t2i R@1, R@5     retrieval among all `images` true descriptions
    true > other         the image's description outscores the description of another image
    true > one colour    ... outscores itself with one object's colour changed
    true > one shape     ... outscores itself with one object's shape changed
    true > one position  ... outscores itself with one object moved to a free cell
    true > dropped       ... outscores itself with one object left out (images with 2+ objects)
    right > wrong colour one object's "colour shape" outscores the same with a wrong colour
    description > alt    the description outscores the image's own noisy alt-text
    gap                  mean score(true description) - mean score(a shuffled, other image's one)
    """
    import torch

    from recaption.quality.clip import ClipScorer
    from recaption.shapes import ShapesWorld
    from recaption.shapes.world import CELLS, COLOURS, SHAPES, describe
    from recaption.training.retrieval import recall_at_k

    torch.set_num_threads(1)
    rng = random.Random(f"tiny-clip-eval:{seed}")
    world = ShapesWorld(seed)
    samples = [world.sample(start + i) for i in range(images)]
    scorer = ClipScorer(model, device="cpu", batch_size=256)
    scorer.setup()
    import io

    from PIL import Image

    pil = [Image.open(io.BytesIO(s.image)).convert("RGB") for s in samples]
    image_emb = torch.cat(
        [scorer.image_embeddings(scorer.pixel_values(pil[i : i + 256])) for i in range(0, images, 256)]
    )

    def scores(texts: list[str]) -> list[float]:
        return [r.score for r in scorer.score(image_emb, texts)]

    def altered(sample, how: str):
        objects = [type(o)(**vars(o)) for o in sample.objects]
        k = rng.randrange(len(objects))
        if how == "colour":
            objects[k].colour = rng.choice([c for c in COLOURS if c != objects[k].colour])
        elif how == "shape":
            objects[k].shape = rng.choice([s for s in SHAPES if s != objects[k].shape])
        elif how == "position":
            free = [c[0] for c in CELLS if c[0] not in {o.position for o in objects}]
            objects[k].position = rng.choice(free)
            order = [c[0] for c in CELLS]
            objects.sort(key=lambda o: order.index(o.position))  # descriptions are in reading order
        elif how == "dropped":
            del objects[k]
        return describe(objects)

    true = [s.description for s in samples]
    true_scores = scores(true)
    shuffled = list(range(images))
    while any(i == j for i, j in enumerate(shuffled)):
        rng.shuffle(shuffled)
    other_scores = scores([true[j] for j in shuffled])
    out = {"model": model, "images": images, "start": start}
    text_emb = torch.cat([scorer.text_embeddings(true[i : i + 256]) for i in range(0, images, 256)])
    r = recall_at_k((image_emb @ text_emb.T).float(), ks=(1, 5))
    out.update({k: round(100 * v, 1) for k, v in r.items()})

    def share(a, b):
        return round(100 * sum(x > y for x, y in zip(a, b, strict=True)) / len(a), 1)

    out["true_gt_other_%"] = share(true_scores, other_scores)
    for how in ("colour", "shape", "position", "dropped"):
        rows = [i for i, s in enumerate(samples) if how != "dropped" or len(s.objects) > 1]
        if how == "position":
            rows = [i for i in rows if len(samples[i].objects) < len(CELLS)]
        wrong = scores_for(scorer, image_emb, rows, [altered(samples[i], how) for i in rows])
        out[f"true_gt_one_{how}_%"] = share([true_scores[i] for i in rows], wrong)
        out[f"one_{how}_n"] = len(rows)
    right_obj = [rng.choice(s.objects) for s in samples]
    right = scores([f"{o.colour} {o.shape}" for o in right_obj])
    wrong = scores([f"{rng.choice([c for c in COLOURS if c != o.colour])} {o.shape}" for o in right_obj])
    out["right_gt_wrong_colour_short_%"] = share(right, wrong)
    alt = scores([s.alt_text for s in samples])
    out["description_gt_alt_text_%"] = share(true_scores, alt)
    out["mean_true"] = round(statistics.fmean(true_scores), 2)
    out["mean_other"] = round(statistics.fmean(other_scores), 2)
    out["gap_true_minus_other"] = round(out["mean_true"] - out["mean_other"], 2)
    out["std_true"] = round(statistics.pstdev(true_scores), 2)
    out["mean_alt_text"] = round(statistics.fmean(alt), 2)
    return out


def scores_for(scorer, image_emb, rows: list[int], texts: list[str]) -> list[float]:
    return [r.score for r in scorer.score(image_emb[rows], texts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="write the training split, train, ship the fp16 model")
    for name, value in DEFAULTS.items():
        t.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    t.add_argument("--output", default=str(SHIPPED), help="model folder to write (default: the shipped one)")
    t.add_argument("--work", default=None, help="folder for shards and checkpoints (default: a temp dir)")
    e = sub.add_parser("eval", help="measure a CLIP on held-out shapes-world images")
    e.add_argument("--model", default="tiny-clip")
    e.add_argument("--images", type=int, default=1000)
    e.add_argument("--start", type=int, default=EVAL_START)
    args = parser.parse_args()
    if args.command == "train":
        train(args)
    else:
        started = time.time()
        result = measure(args.model, args.images, args.start)
        result["seconds"] = round(time.time() - started, 1)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
