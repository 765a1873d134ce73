"""`recap demo`: write a shapes-world sample shard and recaption it offline with the built-in
captioner (a tiny LLaVA trained on the shapes world, shipped in the package).

The library side of the demo: it prints to the console it is given and captions through the
`caption` function it is given (the CLI passes its own, which shows progress and a summary), so
it never imports the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from .config import CaptionConfig, RunConfig
from .samples.shards import ShardRecord, write_webdataset_shard
from .shapes import ShapesWorld
from .shapes.world import only_shapes_shards, shapes_record
from .spine.contract import Step, holds_only, open_output

DEMO_SEED, DEMO_START, DEMO_IMAGES = 0, 700_000, 8  # a range no training split used
DEMO = Step("demo", recognise=holds_only("shards", "captions"), always_recognise=True)
DEMO_SHARDS = Step("demo-shards", recognise=only_shapes_shards, always_recognise=True)

# Captions INPUTS with these settings and returns an exit code (0 ok, 1 a shard failed, 2 refused).
CaptionCommand = Callable[[list[str], CaptionConfig, RunConfig], int]


def build_demo_shard(folder: Path) -> Path:
    """Eight shapes-world images with their noisy alt-text, plus one truncated image to show how a
    broken image is reported."""
    world = ShapesWorld(DEMO_SEED)
    samples = [world.sample(DEMO_START + i) for i in range(DEMO_IMAGES)]
    records = [shapes_record(s, DEMO_SEED, s.alt_text, {"description": s.description}) for s in samples]
    broken = samples[0].image[: len(samples[0].image) // 3]
    records.append(ShardRecord(broken, "broken download", "https://example.org/broken.png", "png"))
    # Through the output contract: only a folder of shapes-world shards (the demo's own) is written over.
    with open_output(str(folder), DEMO_SHARDS):
        shard = folder / "00000.tar"
        write_webdataset_shard(shard, records)
    return shard


def run_demo(output: Path, console: Console, rows: int = 5, *, caption: CaptionCommand,
             preset: str | None = None) -> int:
    """Write the sample shard under OUTPUT/shards, caption it into OUTPUT/captions with the
    built-in captioner (and, with `preset`, that preset's passes: `fused` runs the text LLM
    tiny-text too), and print the first ROWS rows beside the truth; the exit code."""
    config = CaptionConfig(model="tiny", preset=preset)  # a preset that is not there: said now
    with open_output(str(output), DEMO):  # a demo folder holds shards/ and captions/, nothing else
        shard = build_demo_shard(output / "shards")
        out_dir = output / "captions"
        console.print(f"sample shard: {shard}")
        code = caption(
            [str(shard)], config, RunConfig(output=str(out_dir), overwrite=True)
        )
    parquet = out_dir / "00000.parquet"
    if not parquet.exists():
        return code or 1
    table = pq.read_table(parquet).to_pylist()
    world = ShapesWorld(DEMO_SEED)
    shown = table[:rows] + [r for r in table[rows:] if r["status"] != "ok"]
    failed = len(shown) - len(table[:rows])
    then = f", then {failed} that failed" if failed else ""
    view = Table(title=f"first {len(table[:rows])} rows of {parquet}{then}")
    passes = [p.column for p in config.caption_passes if p.column != "re_caption"]
    for column in ("key", "alt-text (org_caption)", "recaption (re_caption)", *passes, "truth", "status"):
        view.add_column(column, overflow="fold")
    for row in shown:
        index = int(row["url"].rsplit("/", 1)[1]) if row["url"].startswith("shapes://") else None
        truth = world.sample(index).description if index is not None else ""
        view.add_row(row["key"], row["org_caption"], row["re_caption"] or "", *(row[c] or "" for c in passes),
                     truth, row["status"])
    console.print(view)  # what the tiny model is: said under the caption summary
    if any(p.model == "tiny-text" for p in config.caption_passes):
        console.print("note: tiny-text is the built-in text LLM with random weights: it shows the chain "
                      "runs, its words carry no meaning; name a real text LLM (model:) in a copy of the "
                      "preset file (recap models shows where it is)", soft_wrap=True)
    console.print(f"output: {out_dir}")
    console.print(f"browse it beside its images: recap view {out_dir}", soft_wrap=True)
    return code
