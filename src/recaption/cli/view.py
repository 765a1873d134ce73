"""`recap view`: browse caption output in a browser, a local read-only web app."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import console


def view_cmd(
    output: Annotated[str, typer.Argument(help="A `recap caption` (or `recap filter`) output folder.")],
    images: Annotated[list[str] | None, typer.Option(help="The tar shards that were captioned, or folders of them (default: the inputs each shard's stats record).")] = None,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but 127.0.0.1 / localhost serves the captions and images to others, with a warning.")] = "127.0.0.1",
) -> None:
    """Browse an output folder in a browser: thumbnails, both captions side by side, flags,
    scores, search, filters and sorts, each filter as the `recap filter --where` that keeps its rows."""
    from rich.markup import escape

    from ..api import view

    def ready(url: str) -> None:
        console.print(f"recap view: {escape(output)} at [bold]{url}[/bold] (read-only; Ctrl-C stops)", soft_wrap=True)

    view(output, images=images, host=host, port=port, on_ready=ready)
