"""`recap`: a thin command-line layer over the recaption library."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import CaptionConfig, RunConfig
from .models.registry import CONDITIONAL_PROMPT, MODEL_FAMILIES, PAPER_PROMPT

app = typer.Typer(
    help="Recaption image-text datasets with vision-language models (Recap-DataComp-1B pipeline).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _print_summary(summary, output: str) -> int:
    from .pipeline import DONE, SKIPPED

    table = Table(title="recap caption: summary", show_header=False)
    table.add_row("shards done", str(len(summary.by_outcome(DONE))))
    table.add_row("shards skipped (already complete)", str(len(summary.by_outcome(SKIPPED))))
    table.add_row("shards failed", str(len(summary.failed)))
    table.add_row("rows written", str(summary.rows))
    for status, n in sorted(summary.status_counts.items()):
        table.add_row(f"  rows with status {status}", str(n))
    table.add_row("output", output)
    console.print(table)
    for r in summary.failed:
        console.print(f"[red]FAILED[/red] {r.source}: {r.error}")
    return 1 if summary.failed else 0


def run_caption_command(inputs: list[str], caption_cfg: CaptionConfig, run_cfg: RunConfig,
                        columns=None) -> int:
    from .pipeline import CaptionPipeline, ConfigMismatchError
    from .progress import RichProgress
    from .readers import ColumnConfig, InputError, discover_shards

    try:
        shards = discover_shards(inputs, columns or ColumnConfig())
    except InputError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    progress = RichProgress()
    try:
        summary = CaptionPipeline(caption_cfg, run_cfg, progress=progress).run(shards)
    except (ConfigMismatchError, FileNotFoundError, ValueError) as exc:
        progress.stop()
        console.print(f"[red]error:[/red] {exc}")
        return 2
    progress.stop()
    return _print_summary(summary, run_cfg.output)


@app.command("caption")
def caption_cmd(
    inputs: Annotated[list[str], typer.Argument(help="Tar/parquet shards, folders, globs, {00000..00009} ranges or fsspec URLs.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder (local or fsspec URL).")],
    model: Annotated[str, typer.Option(help="'tiny' (built-in, offline), a local model folder or a hub id.")] = "tiny",
    batch_size: Annotated[int, typer.Option(help="Images per generate call.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")] = "auto",
    prompt: Annotated[str, typer.Option(help="Instruction sent with each image.")] = PAPER_PROMPT,
    max_new_tokens: Annotated[int, typer.Option(help="Generation limit per caption.")] = 128,
    conditional: Annotated[bool, typer.Option(help="Also write re_caption_condition_diverse_topk: a caption conditioned on the original.")] = False,
    conditional_prompt: Annotated[str, typer.Option(help="Prompt for --conditional; {caption} is replaced by the original caption.")] = CONDITIONAL_PROMPT,
    top_k: Annotated[int, typer.Option(help="Top-k sampling for --conditional (0 = greedy).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for --conditional sampling.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Processes that read, decode and preprocess ahead of the model (default: 0 on CPU, up to 4 with a GPU).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo shards that are already complete.")] = False,
    image_col: Annotated[str | None, typer.Option(help="Parquet image column (default: image, jpg, png, ...); tar image extension.")] = None,
    caption_col: Annotated[str | None, typer.Option(help="Parquet caption column or tar .json field (default: caption, text, ...; tars use .txt).")] = None,
    url_col: Annotated[str, typer.Option(help="Column / .json field holding the URL.")] = "url",
    key_col: Annotated[str, typer.Option(help="Column / .json field holding the key.")] = "key",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Caption every image of INPUTS into one Recap-DataComp-1B-schema parquet per shard."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    try:
        caption_cfg = CaptionConfig(
            model=model, prompt=prompt, max_new_tokens=max_new_tokens, batch_size=batch_size,
            device=device, dtype=dtype, conditional=conditional,
            conditional_prompt=conditional_prompt, top_k=top_k, seed=seed,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from .readers import ColumnConfig

    columns = ColumnConfig(image=image_col, caption=caption_col, url=url_col, key=key_col)
    run_cfg = RunConfig(output=output, overwrite=overwrite, workers=workers)
    code = run_caption_command(inputs, caption_cfg, run_cfg, columns)
    raise typer.Exit(code)


@app.command("demo")
def demo_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the sample shard and the captions.")] = Path("recap-demo"),
    rows: Annotated[int, typer.Option(help="Captions to print.")] = 5,
) -> None:
    """Caption the bundled sample shard with the built-in tiny model, offline."""
    from .demo import run_demo

    raise typer.Exit(run_demo(output, console, rows))


@app.command("models")
def models_cmd() -> None:
    """List the model families recaption knows and how it prompts them."""
    table = Table(title="model families")
    for column in ("family", "model_type", "prompt format", "models"):
        table.add_column(column)
    for family in MODEL_FAMILIES:
        table.add_row(family.name, ", ".join(family.model_types),
                      "chat template; else " + repr(family.fallback_template), family.description)
    console.print(table)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
