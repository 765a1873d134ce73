"""`recap filter` and `recap export`: select rows of caption output, and write them as
WebDataset shards any trainer reads."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import console, failed_line


def print_lines(lines: list[str], summary) -> int:
    """A step's lines, FAILED ones in red; the exit code (1 when a shard failed)."""
    for line in lines:
        name, _, failure = line.partition(": FAILED, ")  # shard_lines' failed shard
        if failure:
            failed_line(f"{name}: {failure}")
        else:
            console.print(line, soft_wrap=True, markup=False)
    return 1 if summary.failed else 0


def filter_cmd(
    output: Annotated[str, typer.Argument(help="A `recap caption` output folder.")],
    where: Annotated[str, typer.Option(help="SQL condition over the columns, e.g. \"re_clip_score > 25 and not re_degenerate\" (DuckDB; rows where it is NULL are dropped).")],
    destination: Annotated[str, typer.Option("--output", "-o", help="Folder for the kept rows: a caption output folder itself (score, report, export read it).")],
    overwrite: Annotated[bool, typer.Option(help="Redo shards already filtered into the folder (with another --where).")] = False,
) -> None:
    """Keep the rows of OUTPUT where a condition holds, shard by shard, into another folder."""
    from ..steps.filter import filter_lines, filter_output

    summary = filter_output(output, where, destination, overwrite=overwrite)
    raise typer.Exit(print_lines(filter_lines(summary), summary))


def export_cmd(
    output: Annotated[str, typer.Argument(help="A `recap caption` (or `recap filter`) output folder.")],
    destination: Annotated[str, typer.Option("--output", "-o", help="Folder for the WebDataset tars.")],
    images: Annotated[list[str] | None, typer.Option(help="The image shards or folders that were captioned (default: the inputs each shard's stats record).")] = None,
    caption: Annotated[str, typer.Option(help="Text of each sample's .txt: re_caption, org_caption, any re_caption_* column (re_caption_fused, ...), mix:p=0.8 (the original with probability p, else re_caption), or mix:re_caption=0.5,org_caption=0.3,re_caption_short=0.2 (probabilities summing to 1).")] = "re_caption",
    seed: Annotated[int, typer.Option(help="Seed of the mix:p draw (per key, so reruns give the same tars).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Redo shards already exported into the folder.")] = False,
    format: Annotated[str, typer.Option(help="Image format in the tars: jpg, png or webp (one format, EXIF orientation applied: every tar loads in HF datasets' webdataset builder), or keep (each image's own bytes).")] = "jpg",
) -> None:
    """Write caption output as WebDataset shards ({key}.jpg, .txt, .json with both captions)
    that open_clip, img2dataset readers and `recap caption` take unchanged."""
    from ..steps.export import export, export_lines

    summary = export(output, destination, images=images, caption=caption, seed=seed, overwrite=overwrite,
                     format=format)
    raise typer.Exit(print_lines(export_lines(summary), summary))
