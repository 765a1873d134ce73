"""The Recap-DiT reproduction on the shapes world: DiT trained at several p (probability of the
ORIGINAL caption), several seeds, evaluated by the model-free checker on recaption-style and
human-style prompts, by complexity; mean and spread over seeds; a picture grid.

Each run: `train_dit` on `--images` shapes-world samples (alt-text as the original caption, the
world's description as the recaption), then `generate` (DDIM, `--sample-steps`, guidance
`--guidance`) for a balanced prompt set in each style (indices 400,000+: never trained on), then
`eval_shapes`. Prints one line per run and the tables at the end; `--json` keeps everything;
the grid (rows: prompts; columns: p) goes to WORK/grid.png.

    python benchmarks/dit_p_sweep.py --p 0.5 --seeds 0 --steps 1500          # a pilot
    python benchmarks/dit_p_sweep.py --p 0 0.1 0.5 1 --seeds 0 1 2 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from datetime import date
from pathlib import Path

SIZES = {  # tiny is the tests' model: width 32 < 192 values per 8x8 patch, it cannot draw (docs/dit.md)
    "tiny": dict(layers=2, heads=2, head_dim=16, patch_size=8),
    "small": dict(layers=6, heads=4, head_dim=32, patch_size=4),
    "wide8": dict(layers=6, heads=4, head_dim=64, patch_size=8),
}
KEPT = "sweep_run.json"  # a finished run's scores, in its model folder
CATEGORIES = ("present", "colour", "count", "position", "size", "all")  # the checker's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--p", type=float, nargs="+", default=[0.0, 0.1, 0.5, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", default="wide8", choices=sorted(SIZES))
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting")
    parser.add_argument("--prompts-per-complexity", type=int, default=25)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--work", default="work/dit-sweep")
    parser.add_argument("--json", default=None)
    parser.add_argument("--report-only", action="store_true",
                        help="tables and grid from the finished runs only; train nothing")
    args = parser.parse_args()

    import torch

    from recaption.dit.generate import contact_sheet, generate
    from recaption.shapes import write_shapes_shards
    from recaption.shapes.prompts import balanced_prompt_set

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = work / f"shapes-{args.images}"
    if not data.exists():
        write_shapes_shards(data, args.images, shard_size=5000)
    sets = {style: balanced_prompt_set(args.prompts_per_complexity, style)
            for style in ("recaption", "human")}
    print(f"dit_p_sweep  {date.today()}  {platform.processor() or platform.machine()}  size {args.size}  "
          f"{args.images} images  {args.steps} steps x {args.batch_size}  lr {args.lr:g}  "
          f"Min-SNR gamma {args.snr_gamma}  sampling DDIM {args.sample_steps} steps, "
          f"guidance {args.guidance:g}", flush=True)
    root = work / args.size / (f"steps{args.steps}-lr{args.lr:g}"
                               + (f"-snr{args.snr_gamma:g}" if args.snr_gamma else ""))
    runs = []
    for seed in args.seeds:
        for p in args.p:
            if args.report_only and not (root / f"p{p:g}-s{seed}" / KEPT).exists():
                continue
            runs.append(run_once(args, root, data, p, seed, sets))
    print_tables(runs, args.p)
    finished = sorted({r["p"] for r in runs if r["seed"] == args.seeds[0]})
    for style, prompts in sets.items():
        grid(root, finished, args.seeds[0], prompts, style, contact_sheet, generate,
             root / f"grid-{style}.png")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))


def run_once(args, root: Path, data: Path, p: float, seed: int, sets: dict) -> dict:
    """Train, generate and check one (p, seed); the result is kept in the run's folder, so a rerun
    (or a second process sweeping other seeds into the same root) reuses finished runs."""
    from recaption.dit.eval import eval_shapes
    from recaption.dit.generate import generate
    from recaption.dit.train import DitTrainConfig, train_dit

    name = f"p{p:g}-s{seed}"
    model = root / name
    kept = model / KEPT
    if kept.exists():
        run = json.loads(kept.read_text())
        if any("object_cells" not in scores.get("layout", {}).get("overall", {})
               for scores in run["scores"].values()):  # kept before the layout reading existed
            run["scores"] = {style: eval_shapes([str(root / "gen" / f"{name}-{style}")]) for style in sets}
            keep(kept, run)
        print(f"{name}: kept from {kept}", flush=True)
        return run
    started = time.perf_counter()
    train_dit(DitTrainConfig(
        data=[str(data)], output=str(model), p=p, seed=seed, recaption_field="description",
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, snr_gamma=args.snr_gamma,
        save_every=max(500, args.steps // 4), log_every=500, **SIZES[args.size]))
    trained = time.perf_counter() - started
    scores = {}
    for style, prompts in sets.items():
        out = root / "gen" / f"{name}-{style}"
        generate(model, prompts, out, seed=seed, guidance=args.guidance, steps=args.sample_steps,
                 overwrite=True)  # a run killed while generating redoes it
        scores[style] = eval_shapes([str(out)])
    run = {"p": p, "seed": seed, "train_seconds": round(trained, 1), "scores": scores}
    keep(kept, run)
    print(f"{name}: trained in {trained:.0f} s; "
          + "; ".join(f"{style} " + " ".join(f"{c} {s['overall'][c]:.2f}" for c in CATEGORIES
                                             if s["overall"][c] is not None)
                      + f" layout {s['layout']['overall']['layout']:.2f}"
                      for style, s in scores.items()), flush=True)
    return run


def keep(path: Path, run: dict) -> None:
    """Atomically: a sweep killed while writing leaves the old file or the new, never half."""
    from fsspec.implementations.local import LocalFileSystem

    from recaption.spine.atomic import write_json_atomic

    write_json_atomic(LocalFileSystem(), str(path.absolute()), run)


def print_tables(runs: list[dict], ps: list[float]) -> None:
    """Per style and complexity: the checker's "all" rate (every object of the prompt drawn with
    its colour, count, position and size), mean over seeds with the spread (sample standard
    deviation when there are two seeds or more); then the same for "colour"."""
    for style in ("recaption", "human"):
        for category in ("all", "colour", "present"):
            print(f"\n{style}-style prompts, {category!r} rate (mean ± sd over seeds)")
            table(runs, ps, style, category)
        for category in ("object_cells", "layout"):
            print(f"\n{style}-style prompts, layout {category!r} rate (colour by cell; mean ± sd over seeds)")
            table(runs, ps, style, category, part="layout")


def table(runs: list[dict], ps: list[float], style: str, category: str, part: str | None = None) -> None:
    """`part`: a sub-report of the scores (eval_shapes' "layout"), else the full check's."""
    runs = [{**r, "scores": {style: r["scores"][style][part] if part else r["scores"][style]}} for r in runs]
    complexities = sorted({int(k) for r in runs for k in r["scores"][style]["by_complexity"]})
    print("| p | " + " | ".join(f"{k} object{'s' if k > 1 else ''}" for k in complexities) + " | all |")
    print("|---" * (len(complexities) + 2) + "|")
    for p in ps:
        mine = [r for r in runs if r["p"] == p]
        cells = []
        for k in complexities:
            values = [by_complexity(r, style, k) for r in mine]
            cells.append(spread([v[category] for v in values if v and v[category] is not None]))
        cells.append(spread([r["scores"][style]["overall"][category] for r in mine]))
        print(f"| {p:g} ({len(mine)} seed{'s' if len(mine) != 1 else ''}) | " + " | ".join(cells) + " |")


def by_complexity(run: dict, style: str, k: int) -> dict | None:
    found = run["scores"][style]["by_complexity"]
    return found.get(k, found.get(str(k)))


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def grid(root: Path, ps: list[float], seed: int, prompts, style: str, contact_sheet, generate,
         path: Path) -> None:
    """Rows: 8 prompts of one style (2 per complexity); columns: one image from each p."""
    chosen = [prompts[i] for i in range(0, len(prompts), max(1, len(prompts) // 8))][:8]
    from recaption.readers import discover_shards

    cells = []
    for p in ps:
        out = root / "grid" / f"p{p:g}-{style}"
        generate(root / f"p{p:g}-s{seed}", chosen, out, seed=seed,
                 sheet=root / "grid" / f"p{p:g}-{style}.png", overwrite=True)
        cells.append([s.image_bytes for shard in discover_shards([str(out)]) for s in shard])
    ordered = [cells[c][r] for r in range(len(chosen)) for c in range(len(ps))]
    contact_sheet(ordered, columns=len(ps)).save(path)
    columns = ", ".join(f"{p:g}" for p in ps)
    print(f"\ngrid: {path} (rows: {'; '.join(p.text for p in chosen)}; columns: p = {columns})")


if __name__ == "__main__":
    main()
