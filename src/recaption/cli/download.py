"""`recap download`: URL metadata into image shards."""

from __future__ import annotations

from typing import Annotated

import typer

from ..spine.errors import RecaptionError
from .common import (
    clear_error,
    console,
    error_line,
    exit_code_of,
    print_download_summary,
    printable,
    split_values,
)


def download_cmd(
    inputs: Annotated[list[str], typer.Argument(help="URL metadata: parquet, csv, tsv, jsonl or txt files (optionally .gz), folders, globs, fsspec URLs.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder for the shards (local or fsspec URL).")],
    url_col: Annotated[str, typer.Option(help="Column holding the image URL.")] = "url",
    caption_col: Annotated[str | None, typer.Option(help="Column holding the caption (default: the first of caption, text, org_caption, txt, alt_text, TEXT the metadata has; '' for none).")] = None,
    extra_cols: Annotated[str | None, typer.Option(help="More columns to carry into each sample's .json and the parquet, comma-separated.")] = None,
    sha256_col: Annotated[str | None, typer.Option(help="Column with the expected SHA-256 of the image bytes: verified when present.")] = None,
    shard_size: Annotated[int, typer.Option(help="Rows per shard.")] = 10_000,
    resize: Annotated[str, typer.Option(help="none, keep_ratio (short side = --image-size), center_crop, border (padded square).")] = "keep_ratio",
    image_size: Annotated[int, typer.Option(help="Target size for --resize.")] = 512,
    resample: Annotated[str, typer.Option(help="Resize filter: auto (the least cost at img2dataset's quality or better: a plain JPEG shrunk under 2.2x goes through OpenCV's INTER_AREA as img2dataset's does, lanczos after a reduced JPEG decode, else hamming), hamming, lanczos (sharpest), bicubic, bilinear.")] = "auto",
    max_aspect_ratio: Annotated[float | None, typer.Option(help="Drop images whose long/short side ratio is above this.")] = None,
    min_size: Annotated[int, typer.Option(help="Drop images whose short side is below this.")] = 0,
    format: Annotated[str, typer.Option("--format", help="jpg, png, webp, or keep (the server's bytes when not resized).")] = "jpg",
    quality: Annotated[int, typer.Option(help="JPEG/WebP quality.")] = 95,
    timeout: Annotated[float, typer.Option(help="Seconds per attempt: connect, redirects and the whole body.")] = 10.0,
    retries: Annotated[int, typer.Option(help="Retries on 429, 5xx, connection errors and cut bodies.")] = 2,
    concurrency: Annotated[int, typer.Option(help="Connections open at once.")] = 64,
    per_host_concurrency: Annotated[int, typer.Option(help="Connections open at once to one host.")] = 8,
    user_agent: Annotated[str, typer.Option(help="User-Agent header; its first word is the token X-Robots-Tag directives may name.")] = "recaption/0.1 (+https://github.com/recaption; image-text research)",
    max_bytes: Annotated[int, typer.Option(help="Largest response body accepted.")] = 32 * 1024 * 1024,
    max_pixels: Annotated[int, typer.Option(help="Largest image in pixels (width x height), as sent and once resized: bigger ones become rows with outcome too_many_pixels.")] = 89_478_485,
    placeholder_min_urls: Annotated[int, typer.Option(help="An image whose bytes came from this many distinct URLs of one host in a shard is a host's placeholder ('image unavailable'): outcome placeholder, not stored (0: never).")] = 5,
    placeholders: Annotated[str | None, typer.Option(help="A file of sha256 digests (one per line, # comments) of known placeholder images: such images get outcome placeholder, not stored.")] = None,
    respect_opt_out: Annotated[bool, typer.Option(help="Skip images whose X-Robots-Tag says noai, noimageai, noindex, noimageindex or none.")] = True,
    allow_private_network: Annotated[bool, typer.Option(help="Allow hosts that resolve to private, loopback or link-local addresses.")] = False,
    key_format: Annotated[str, typer.Option(help="Keys: img2dataset (shard and position, as img2dataset names them), id (the --id-col value of each row: stable when you reshard) or url (a hash of the URL: stable too).")] = "img2dataset",
    id_col: Annotated[str, typer.Option(help="--key-format id: the column naming each row (DataComp: uid); kept in every row and .json.")] = "uid",
    keep_url_secrets: Annotated[bool, typer.Option(help="Store URLs as given, credentials and signed query values included (by default rows and .json files keep them without userinfo, with token/sig/key/X-Amz-* values masked; the fetch always uses the full URL).")] = False,
    retry_failed: Annotated[bool, typer.Option(help="In complete shards, fetch again the rows that failed for a transient reason, and merge them in.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo shards that are already complete.")] = False,
    executor: Annotated[str, typer.Option(help="local (this process) or ray (Ray tasks across a cluster; same output).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="With --executor ray: the cluster to join ('auto', ray://host:10001); default: a local Ray.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show info lines and the libraries' warnings and progress bars.")] = False,
) -> None:
    """Download URL metadata into image shards in img2dataset's layout (tar + parquet + stats)."""
    from ..downloads import DownloadConfig
    from ..downloads.config import DEFAULT_DISALLOWED

    try:
        config = DownloadConfig(
            output=output, url_col=url_col, caption_col=caption_col, extra_cols=split_values([extra_cols] if extra_cols else None),
            sha256_col=sha256_col, shard_size=shard_size, resize=resize, image_size=image_size, resample=resample,
            max_aspect_ratio=max_aspect_ratio, min_size=min_size, format=format, quality=quality, timeout=timeout,
            retries=retries, concurrency=concurrency, per_host_concurrency=per_host_concurrency,
            user_agent=user_agent, max_bytes=max_bytes, max_pixels=max_pixels, allow_private_network=allow_private_network,
            disallowed_directives=DEFAULT_DISALLOWED if respect_opt_out else (), overwrite=overwrite,
            retry_failed=retry_failed, keep_url_secrets=keep_url_secrets, key_format=key_format, id_col=id_col,
            placeholder_min_urls=placeholder_min_urls, placeholders=placeholders,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from ..executors import executor_names

    if executor not in executor_names():
        raise typer.BadParameter(f"--executor {executor}: choose {' or '.join(executor_names())}")
    raise typer.Exit(run_download_command(inputs, config, executor, ray_address))


def run_download_command(inputs: list[str], config, executor: str = "local", ray_address: str | None = None) -> int:
    """Download with a progress bar and print the summary; the exit code (2: a user error)."""
    from rich.markup import escape

    from ..downloads import choose_columns, download
    from ..progress import RichProgress

    # User errors (unreadable metadata, another run's output, a locked folder): one line, exit 2.
    try:
        columns = choose_columns(inputs, config)
    except (RecaptionError, FileNotFoundError) as exc:
        error_line(exc)
        return 2
    console.print(f"columns: {escape(columns.describe())}", soft_wrap=True)
    if config.keep_url_secrets:
        console.print("urls: stored as given, credentials and signed query values included (--keep-url-secrets)")
    progress = RichProgress(description="downloading", unit="rows")
    try:
        summary = download(inputs, config, progress, columns=columns, executor=executor, ray_address=ray_address)
    except (RecaptionError, FileNotFoundError) as exc:
        progress.stop()
        error_line(exc)
        return exit_code_of(exc)
    progress.stop()
    return print_download_summary(summary, config)


def _members_text(members: list | None, outcome: str) -> str:
    if members is None:
        return "unknown (its tar cannot be read: see the warning)"
    if members:
        return ", ".join(f"{m.name} ({m.offset})" for m in members)
    return "none (not in the tar)" if outcome in ("ok", "success") else "none (not downloaded)"


def lookup_cmd(
    shards: Annotated[str, typer.Argument(help="A folder `recap download` or img2dataset wrote (NAME.tar beside NAME.parquet).")],
    values: Annotated[list[str], typer.Argument(help="Keys (or values of --by) to find.")],
    by: Annotated[str, typer.Option(help="The column to match: key, url, or an id column such as uid (DataComp's).")] = "key",
    as_json: Annotated[bool, typer.Option("--json", help="Print every matching row, with its tar members' offsets, as JSON.")] = False,
) -> None:
    """Find samples by key, id or URL without scanning the tars: each shard's parquet is read for
    one column, then the tar's index (kept in .recap-index) says where the sample's members lie."""
    import json

    from rich.table import Table

    from ..api import lookup

    with clear_error(ValueError, OSError):
        found, missing = lookup(shards, values, by=by)
    if as_json:
        rows = [{"value": f.value, "shard": f.shard, "row": f.row,
                 "members": None if f.members is None else
                 [{"tar": m.tar, "name": m.name, "offset": m.offset, "size": m.size} for m in f.members]}
                for f in found]
        console.print(json.dumps({"found": rows, "missing": missing}, indent=2, default=str), soft_wrap=True,
                      markup=False)
    else:
        table = Table(title=f"recap lookup --by {printable(by)}: {len(found)} found, {len(missing)} missing")
        for column in ("value", "shard", "key", "outcome", "members (offset)"):
            table.add_column(column)
        for f in found:
            outcome = str(f.row.get("outcome") or f.row.get("status"))
            table.add_row(printable(f.value), printable(f.shard), printable(f.row.get("key")), printable(outcome),
                          printable(_members_text(f.members, outcome)))
        if found:
            console.print(table)
        for value in missing:
            console.print(f"not found: {printable(value)}", soft_wrap=True)
    raise typer.Exit(1 if missing else 0)
