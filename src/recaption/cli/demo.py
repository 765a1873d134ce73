"""`recap demo`: the offline demo, captioned through the CLI's own caption run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .caption import run_caption_command
from .common import console


def demo_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the sample shard and the captions.")] = Path("recap-demo"),
    rows: Annotated[int, typer.Option(help="Captions to print.")] = 5,
    preset: Annotated[str | None, typer.Option(help="Also run a caption preset's passes (fused: the built-in text LLM fuses re_caption with the alt-text, offline).")] = None,
) -> None:
    """Caption the bundled sample shard with the built-in tiny model, offline."""
    from ..demo import run_demo

    raise typer.Exit(run_demo(output, console, rows, caption=run_caption_command, preset=preset))
