"""Table 3's shape, offline: does CLIP trained on a mix of alt-text and recaptions retrieve better?

In the shapes world (recaption.shapes), with three disjoint splits:
  captioner split  ground-truth descriptions: the curated data a captioner is trained on
                   (`recap train-clip` for its vision tower, then `recap train-captioner`),
                   skipped when --captioner is given (e.g. the built-in tiny one)
  CLIP split       web-like: images with noisy one-object alt-text only; recaptioned with the
                   captioner (`recap caption`)
  test split       held out; retrieval against the ground-truth descriptions, zero-shot
                   classification of the first object's "colour shape"; and retrieval against
                   human-style captions of the same images (recaption.shapes.prompts: varied
                   word order and templates, "next to", counts in words), a style neither
                   training caption uses: the counterpart of the paper's human COCO captions
CLIP is trained at p in {0, 0.5, 0.8, 1.0} (p = probability of the ORIGINAL caption, the
paper's definition), on concatenated captions, and with the CLIPS recipe (each image against its
alt-text and a partial recaption, two losses), for several seeds; the table prints mean and
spread beside the paper's ViT-B/16 numbers (ImageNet zero-shot, COCO R@1).

    python benchmarks/table3_shapes.py --captioner tiny [--seeds 3 --clip-images 4000 --steps 600]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from recaption.captioning.pipeline import CaptionPipeline
from recaption.config import CaptionConfig, RunConfig
from recaption.readers import discover_shards
from recaption.shapes import write_shapes_shards
from recaption.shapes.prompts import prompt_set, write_prompt_shards
from recaption.training.clip_train import ClipTrainConfig, train_clip
from recaption.training.retrieval import evaluate

PAPER = {  # Recap-DataComp-1B Table 3, ViT-B/16: ImageNet, COCO I->T, COCO T->I (R@1)
    "p=0.0": (36.0, 53.0, 34.1),
    "p=0.5": (67.2, 61.9, 42.7),
    "p=0.8": (69.2, 61.5, 42.2),
    "p=1.0": (69.7, 57.3, 37.7),
    "concat": (43.3, 57.8, 35.6),
}
SETTINGS = {  # ClipTrainConfig options of each row
    "p=0.0": dict(p=0.0),
    "p=0.5": dict(p=0.5),
    "p=0.8": dict(p=0.8),
    "p=1.0": dict(p=1.0),
    "concat": dict(p=0.0, concat=True),
    "clips": dict(recipe="clips"),  # CLIPS (arXiv 2411.16828): alt-text + partial recaption, two losses
}
CLIP_START, TEST_START = 300_000, 900_000  # sample-index ranges of the splits (captioner split: 1,000,000+)


def experiment_parser(description: str, settings, clip_images: int, test_images: int,
                      steps: int) -> argparse.ArgumentParser:
    """The options of a shapes-world CLIP experiment (this one, formats_shapes.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--clip-images", type=int, default=clip_images)
    parser.add_argument("--test-images", type=int, default=test_images)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(settings), choices=list(settings))
    parser.add_argument("--work", default=None, help="keep intermediate files here")
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser


def main() -> None:
    parser = experiment_parser(__doc__.split("\n")[0], SETTINGS, clip_images=4000, test_images=1000,
                               steps=600)
    parser.add_argument("--captioner", default="tiny", help="captioner model (default: the built-in one)")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="table3-"))
    started = time.time()
    if not (work / "clip-split").exists():
        write_shapes_shards(work / "clip-split", args.clip_images, start=CLIP_START, shard_size=1000)
        write_shapes_shards(work / "test", args.test_images, start=TEST_START, shard_size=1000)
    if not (work / "test-human").exists():  # the same test images, captioned as people might
        write_prompt_shards(work / "test-human", prompt_set(args.test_images, "human", start=TEST_START))
    recaptions = work / "recaptioned"
    caption = CaptionConfig(model=args.captioner, batch_size=32)
    summary = CaptionPipeline(caption, RunConfig(output=str(recaptions))).run(
        discover_shards([str(work / "clip-split")])
    )
    print(
        f"recaptioned {summary.rows} CLIP-split images with {args.captioner} ({time.time() - started:.0f} s)"
    )

    results: dict[str, list[dict]] = {name: [] for name in args.settings}
    for seed in range(args.seeds):
        for name in args.settings:
            out = work / f"clip-{name}-seed{seed}"
            if not (out / "model.safetensors").exists():
                train_clip(
                    ClipTrainConfig(
                        data=[str(recaptions)],
                        output=str(out),
                        **SETTINGS[name],
                        steps=args.steps,
                        batch_size=args.batch_size,
                        width=args.width,
                        seed=seed,
                        save_every=10**9,
                        device="cpu",
                    )
                )
            metrics = evaluate(
                str(out), [str(work / "test")], caption_field="description", label_field="label", device="cpu"
            ).metrics
            human = evaluate(str(out), [str(work / "test-human")], device="cpu").metrics
            metrics.update({f"human_{k}": v for k, v in human.items() if "R@" in k})
            results[name].append(metrics)
            print(
                f"seed {seed} {name:7s} zero-shot {metrics['zero_shot_accuracy']:.3f}  "
                f"I->T R@1 {metrics['image_to_text_R@1']:.3f}  T->I R@1 {metrics['text_to_image_R@1']:.3f}  "
                f"human-style I->T R@1 {metrics['human_image_to_text_R@1']:.3f}  "
                f"T->I R@1 {metrics['human_text_to_image_R@1']:.3f}",
                flush=True,
            )

    def cell(name: str, key: str) -> str:
        values = [100 * r[key] for r in results[name]]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):5.1f} ± {spread:4.1f}"

    print(
        f"\nTable 3, shapes world ({date.today()}; {args.seeds} seeds; CLIP width {args.width}, "
        f"{args.steps} steps, "
        f"{args.clip_images} training images, {args.test_images} test images; mean ± std)"
    )
    print(
        f"{'setting':8s} | {'zero-shot':>13s} {'I->T R@1':>13s} {'T->I R@1':>13s} | "
        f"{'human I->T':>13s} {'human T->I':>13s} | paper: ImageNet  COCO I->T  COCO T->I"
    )
    for name in args.settings:
        paper = PAPER.get(name, (float("nan"),) * 3)  # the paper has no CLIPS row
        print(
            f"{name:8s} | {cell(name, 'zero_shot_accuracy'):>13s} {cell(name, 'image_to_text_R@1'):>13s} "
            f"{cell(name, 'text_to_image_R@1'):>13s} | {cell(name, 'human_image_to_text_R@1'):>13s} "
            f"{cell(name, 'human_text_to_image_R@1'):>13s} |   "
            f"{paper[0]:6.1f}    {paper[1]:6.1f}     {paper[2]:6.1f}"
        )
    print(f"total {time.time() - started:.0f} s; work folder {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
