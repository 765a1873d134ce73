"""Caption formats, offline: CLIP trained on short, dense, fused captions and mixes of them
(the comparison of Apple's "Revisit Large-Scale Image-Caption Data", arXiv 2410.02740), in the
shapes world, the sibling of benchmarks/table3_shapes.py (same splits, trainer and evaluation).

The captions come from one `recap caption` run with three passes:
  re_caption        the built-in captioner (`--model tiny`), the paper's prompt: the dense caption
                    (every object with size, colour and position)
  re_caption_short  a text-only pass reading {re_caption}: one short sentence
  re_caption_fused  a text-only pass reading {re_caption} and {caption}: one caption from both
The two text-only passes run through the pipeline's text-engine contract on a rule-based stand-in
(`ShapesRewriter`, below), not an LLM: the built-in tiny-text has random weights, and neither the
tiny captioner nor any LLM on this machine can shorten or fuse. The rules are what a faithful
rewriter would write in this world: short = the dense caption's first object; fused = the dense
caption followed by the alt-text's words it lacks (so the alt-text's wrong colours and junk words
get in, as a fusion that keeps the alt-text's "knowledge" lets them).

CLIP (as table3_shapes.py) is trained per setting, each a `--mix` over those columns and the
alt-text, for several seeds, and evaluated on held-out images against ground-truth descriptions
(retrieval R@1) and by zero-shot "colour shape" classification.

    python benchmarks/formats_shapes.py [--seeds 3 --clip-images 2000 --steps 200]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from recaption.captioning.pipeline import CaptionPipeline
from recaption.config import CaptionConfig, RunConfig
from recaption.engines.base import Engine, Generation, Preparer
from recaption.readers import discover_shards
from recaption.shapes import write_shapes_shards
from recaption.training.clip_train import ClipTrainConfig, train_clip
from recaption.training.retrieval import evaluate
from table3_shapes import CLIP_START, TEST_START, experiment_parser  # same splits (benchmarks/)

SETTINGS = {  # --mix of each row
    "alt-text": "org_caption=1",
    "short": "re_caption_short=1",
    "dense": "re_caption=1",
    "fused": "re_caption_fused=1",
    "dense+alt": "re_caption=0.5,org_caption=0.5",
    "short+dense": "re_caption_short=0.5,re_caption=0.5",
    "fused+alt": "re_caption_fused=0.5,org_caption=0.5",
    "all four": "re_caption=0.25,re_caption_short=0.25,re_caption_fused=0.25,org_caption=0.25",
}
PASSES = [
    {"name": "short", "model": "shapes-rewriter", "prompt": "SHORT {re_caption}"},
    {"name": "fused", "model": "shapes-rewriter", "prompt": "FUSE {re_caption} ALT {caption}"},
]


class ShapesRewriter(Engine):
    """A text engine (the TEXT_ENGINE contract: preparer.prepare_text, generate) applying the
    rules above to the filled-in prompt; no model."""

    loads_weights = False

    def __init__(self, config=None):
        self.ready, self.batch_size, self.device = False, 64, "cpu"
        self.preparer = _Prompts()

    def generate(self, inputs, decoding=None):
        return [Generation(rewrite(prompt), len(rewrite(prompt).split()), False) for prompt in inputs]


class _Prompts(Preparer):
    def prepare_text(self, prompts):
        return list(prompts)


def rewrite(prompt: str) -> str:
    if prompt.startswith("SHORT "):
        return first_object(prompt[len("SHORT "):])
    dense, _, alt = prompt[len("FUSE "):].partition(" ALT ")
    missing = [w for w in alt.split() if w not in dense.split()]
    return f"{dense}, {' '.join(missing)}" if missing else dense


def first_object(caption: str) -> str:
    """'a large red circle in the top left, a small ... and ...' -> 'a large red circle in the top left'."""
    return caption.split(",")[0].split(" and a ")[0].strip()


def caption_split(work: Path, images: int) -> Path:
    out = work / "captions"
    if not (work / "clip-split").exists():
        write_shapes_shards(work / "clip-split", images, start=CLIP_START, shard_size=1000)
    config = CaptionConfig(model="tiny", batch_size=32, passes=PASSES)
    pipeline = CaptionPipeline(config, RunConfig(output=str(out)))
    rewriter = ShapesRewriter()
    pipeline.text_engines = {name: rewriter for name in pipeline.text_engines}  # the stand-in
    pipeline.run(discover_shards([str(work / "clip-split")]))
    return out


def main() -> None:
    args = experiment_parser(__doc__.split("\n")[0], SETTINGS, clip_images=2000, test_images=500,
                             steps=200).parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="formats-"))
    started = time.time()
    captions = caption_split(work, args.clip_images)
    if not (work / "test").exists():
        write_shapes_shards(work / "test", args.test_images, start=TEST_START, shard_size=1000)
    import pyarrow.parquet as pq

    rows = pq.read_table(sorted(captions.glob("*.parquet"))[0]).to_pylist()
    lengths = {c: statistics.fmean(len((r[c] or "").split()) for r in rows)
               for c in ("org_caption", "re_caption_short", "re_caption", "re_caption_fused")}
    print(f"captioned {args.clip_images} images ({time.time() - started:.0f} s); mean words: "
          + ", ".join(f"{c} {v:.1f}" for c, v in lengths.items()), flush=True)

    results: dict[str, list[dict]] = {name: [] for name in args.settings}
    for seed in range(args.seeds):
        for name in args.settings:
            out = work / f"clip-{name.replace('+', '_').replace(' ', '_')}-seed{seed}"
            if not (out / "model.safetensors").exists():
                train_clip(ClipTrainConfig(data=[str(captions)], output=str(out), mix=SETTINGS[name],
                                           steps=args.steps, batch_size=args.batch_size, width=args.width,
                                           seed=seed, save_every=10**9, device="cpu", workers=0))
            metrics = evaluate(str(out), [str(work / "test")], caption_field="description",
                               label_field="label", device="cpu").metrics
            results[name].append(metrics)
            print(f"seed {seed} {name:11s} zero-shot {metrics['zero_shot_accuracy']:.3f}  "
                  f"I->T R@1 {metrics['image_to_text_R@1']:.3f}  T->I R@1 {metrics['text_to_image_R@1']:.3f}",
                  flush=True)

    def cell(name: str, key: str) -> str:
        values = [100 * r[key] for r in results[name]]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.1f} ± {spread:.1f}"

    print(f"\nCaption formats, shapes world ({date.today()}; {args.seeds} seeds; CLIP width {args.width}, "
          f"{args.steps} steps of {args.batch_size}, {args.clip_images} training images, "
          f"{args.test_images} test images; mean ± std, %)")
    print("| setting | --mix | zero-shot | I->T R@1 | T->I R@1 |\n|---|---|---|---|---|")
    for name in args.settings:
        print(f"| {name} | `{SETTINGS[name]}` | {cell(name, 'zero_shot_accuracy')} | "
              f"{cell(name, 'image_to_text_R@1')} | {cell(name, 'text_to_image_R@1')} |")
    print(f"total {time.time() - started:.0f} s; work folder {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "lengths": lengths, "results": results},
                                              indent=2))


if __name__ == "__main__":
    main()
