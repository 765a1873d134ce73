"""`recap view`: browse caption output in a browser, a local read-only web app."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import console


def view_cmd(
    output: Annotated[str, typer.Argument(help="A `recap caption` (or `recap filter`) output folder.")],
    images: Annotated[list[str] | None, typer.Option(help="The tar shards that were captioned, or folders of them (default: the inputs each shard's stats record).")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but 127.0.0.1 / localhost serves the captions and images to others, with a warning.")] = "127.0.0.1",
) -> None:
    """Browse an output folder in a browser: thumbnails, both captions side by side, flags,
    scores, search, filters and sorts, each filter as the `recap filter --where` that keeps its rows."""
    from rich.markup import escape

    from ..api import view

    def ready(url: str) -> None:
        console.print(f"recap view: {escape(output)} at [bold]{url}[/bold] (read-only; Ctrl-C stops)", soft_wrap=True)

    try:
        view(output, images=images, host=host, port=port, on_ready=ready)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the usual way to stop a server
        console.print(f"recap view stopped ({escape(str(exc) or 'interrupted')}); it wrote nothing but the tar "
                      f"indexes in {escape(output.rstrip('/'))}/.recap-index", soft_wrap=True)
        raise typer.Exit(128 + getattr(exc, "signum", 2)) from None
