"""`recap demo`: build a sample shard from the bundled photos and caption it offline."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from .config import CaptionConfig, RunConfig
from .shards import ShardRecord, bundled_samples, write_webdataset_shard


def build_demo_shard(folder: Path) -> Path:
    """The bundled photos, plus one truncated JPEG to show how a broken image is reported."""
    records = bundled_samples()
    broken = records[0].image[: len(records[0].image) // 3]
    records.append(ShardRecord(image=broken, caption="broken download", url="https://example.org/broken.jpg"))
    shard = folder / "00000.tar"
    write_webdataset_shard(shard, records)
    return shard


def run_demo(output: Path, console: Console, rows: int = 5) -> int:
    from .cli import run_caption_command

    shard = build_demo_shard(output / "shards")
    out_dir = output / "captions"
    console.print(f"sample shard: {shard}")
    code = run_caption_command(
        [str(shard)], CaptionConfig(model="tiny"),
        RunConfig(output=str(out_dir), overwrite=True),
    )
    parquet = out_dir / "00000.parquet"
    if not parquet.exists():
        return code or 1
    table = pq.read_table(parquet).to_pylist()
    view = Table(title=f"first {rows} rows of {parquet}")
    for column in ("key", "org_caption", "re_caption", "status"):
        view.add_column(column, overflow="fold")
    for row in table[:rows] + [r for r in table if r["status"] != "ok"]:
        view.add_row(row["key"], row["org_caption"], (row["re_caption"] or "")[:80], row["status"])
    console.print(view)
    console.print(
        "The built-in tiny model has random weights: its captions show the pipeline works, not "
        "what a trained captioner writes. Use --model with a real model for real captions."
    )
    console.print(f"output: {out_dir}")
    return code
