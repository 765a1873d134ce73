"""`recap`: a thin command-line layer over the recaption library."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import CaptionConfig, ExecutorConfig, RunConfig
from .models.registry import CONDITIONAL_PROMPT, MODEL_FAMILIES, PAPER_PROMPT

app = typer.Typer(
    help="Recaption image-text datasets with vision-language models (Recap-DataComp-1B pipeline).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _print_summary(summary, output: str) -> int:
    from rich.markup import escape

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
        _failed_line(f"{r.source}: {r.error}")
    for r in summary.by_outcome(DONE):
        if r.rows and not r.status_counts.get("ok"):  # complete, yet nothing captioned: say so
            kinds = ", ".join(f"{status} {n}" for status, n in sorted(r.status_counts.items()))
            console.print(
                f"[yellow]note:[/yellow] {escape(r.name)}: none of its {r.rows} rows could be captioned ({kinds}); "
                "see their error column, and rerun with --overwrite once the inputs are fixed",
                soft_wrap=True,
            )
    return 1 if summary.failed else 0


def run_caption_command(inputs: list[str], caption_cfg: CaptionConfig, run_cfg: RunConfig,
                        columns=None, executor_cfg: ExecutorConfig | None = None) -> int:
    from .executors import run_caption
    from .pipeline import ConfigMismatchError
    from .progress import RichProgress
    from .readers import ColumnConfig, InputError, discover_shards

    try:
        shards = discover_shards(inputs, columns or ColumnConfig())
    except InputError as exc:
        _error_line(exc)
        return 2
    progress = RichProgress()
    try:
        summary = run_caption(shards, caption_cfg, run_cfg, executor_cfg, progress)
    except (ConfigMismatchError, FileNotFoundError, ValueError, RuntimeError) as exc:
        progress.stop()
        _error_line(exc)
        return 2
    progress.stop()
    code = _print_summary(summary, run_cfg.output)
    if run_cfg.clip_model:
        from .models.tiny_clip import builtin_clip_facts

        facts = builtin_clip_facts(run_cfg.clip_model)
        if facts:
            console.print(f"note: {facts[1]}", soft_wrap=True)
    return code


def _error_line(exc: BaseException) -> None:
    """One red line, unwrapped (so it stays one line in logs), markup in the message shown as is,
    secrets (URL credentials, keys) masked."""
    from rich.markup import escape

    from .redact import redact

    console.print(f"[red]error:[/red] {escape(redact(str(exc)))}", soft_wrap=True)


def _failed_line(text: str) -> None:
    """A shard that failed: one line, secrets masked."""
    from rich.markup import escape

    from .redact import redact

    console.print(f"[red]FAILED[/red] {escape(redact(text))}", soft_wrap=True)


@contextmanager
def _clear_error(*errors: type[Exception]):
    """Expected failures (bad input, a wrong folder) as one red line and exit code 2, not a traceback."""
    try:
        yield
    except errors as exc:
        _error_line(exc)
        raise typer.Exit(2) from exc


def _split(values: list[str] | None) -> list[str]:
    """Repeated options and comma-separated values alike: --endpoint a,b --endpoint c."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


@app.command("caption")
def caption_cmd(
    inputs: Annotated[list[str], typer.Argument(help="Tar/parquet shards, folders, globs, {00000..00009} ranges or fsspec URLs.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder (local or fsspec URL).")],
    model: Annotated[str, typer.Option(help="'tiny' (built-in, offline), a local model folder or a hub id.")] = "tiny",
    batch_size: Annotated[int, typer.Option(help="Images per generate call; 0: as many as GPU memory holds (backs off on out-of-memory).")] = 8,
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
    retry_failed: Annotated[bool, typer.Option(help="Redo complete shards that hold caption_error rows (e.g. a server failed some requests).")] = False,
    image_col: Annotated[str | None, typer.Option(help="Parquet image column (default: image, jpg, png, ...); tar image extension.")] = None,
    caption_col: Annotated[str | None, typer.Option(help="Parquet caption column or tar .json field (default: caption, text, ...; tars use .txt).")] = None,
    url_col: Annotated[str, typer.Option(help="Column / .json field holding the URL.")] = "url",
    key_col: Annotated[str, typer.Option(help="Column / .json field holding the key.")] = "key",
    max_image_bytes: Annotated[int, typer.Option(help="Largest image file / tar member read; bigger ones become rows with status too_large (checked before reading).")] = 64 * 1024 * 1024,
    max_pixels: Annotated[int, typer.Option(help="Largest image in pixels (width x height); bigger ones become rows with status too_large (checked from the header, before decoding).")] = 89_478_485,
    attn_implementation: Annotated[str, typer.Option(help="transformers engine attention: sdpa, flash_attention_2 (needs flash-attn) or eager.")] = "sdpa",
    engine: Annotated[str, typer.Option(help="transformers (in-process), vllm (in-process, needs vLLM) or openai (OpenAI-compatible servers).")] = "transformers",
    endpoint: Annotated[list[str] | None, typer.Option(help="--engine openai: server URL (http://host:8000 or .../v1); repeat it or separate with commas for several.")] = None,
    concurrency: Annotated[int, typer.Option(help="--engine openai: requests in flight over all endpoints.")] = 64,
    request_timeout: Annotated[float, typer.Option(help="--engine openai: seconds per request, connect to last byte.")] = 120.0,
    retries: Annotated[int, typer.Option(help="--engine openai: retries on timeouts, connection errors, 429 and 5xx.")] = 4,
    api_key_env: Annotated[str, typer.Option(help="--engine openai: environment variable holding the API key (never logged).")] = "OPENAI_API_KEY",
    devices: Annotated[str | None, typer.Option(help="One worker process per device over disjoint shards, e.g. 0,1,2,3 or cuda:0,cuda:1 (default: every GPU when there are several).")] = None,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (Ray actors, one per GPU).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="--executor ray: cluster to join (auto, ray://host:10001); default: start a local Ray.")] = None,
    ray_workers: Annotated[int | None, typer.Option(help="--executor ray: caption workers (default: one per GPU share in the cluster).")] = None,
    ray_gpus_per_worker: Annotated[float, typer.Option(help="--executor ray: GPU share per worker; 0.5 or 0.25 packs small models.")] = 1.0,
    score: Annotated[bool, typer.Option(help="Also fill the CLIP-score columns in the same pass (images decoded once).")] = False,
    clip_model: Annotated[str, typer.Option(help="CLIP for --score: hub id, local folder, or tiny-clip (built in).")] = "openai/clip-vit-large-patch14",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Caption every image of INPUTS into one Recap-DataComp-1B-schema parquet per shard."""
    options = {k: v for k, v in locals().items() if k not in ("inputs", "output", "verbose")}
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    from .config import caption_settings

    with _clear_error(ValueError):  # a wrong value: one line naming it, exit 2
        settings = caption_settings(output, **options)
    code = run_caption_command(inputs, settings.caption, settings.run, settings.columns, settings.executor)
    raise typer.Exit(code)


@app.command("download")
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
    respect_opt_out: Annotated[bool, typer.Option(help="Skip images whose X-Robots-Tag says noai, noimageai, noindex, noimageindex or none.")] = True,
    allow_private_network: Annotated[bool, typer.Option(help="Allow hosts that resolve to private, loopback or link-local addresses.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="In complete shards, fetch again the rows that failed for a transient reason, and merge them in.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo shards that are already complete.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Download URL metadata into image shards in img2dataset's layout (tar + parquet + stats)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    from .downloads import DownloadConfig
    from .downloads.config import DEFAULT_DISALLOWED

    try:
        config = DownloadConfig(
            output=output, url_col=url_col, caption_col=caption_col, extra_cols=_split([extra_cols] if extra_cols else None),
            sha256_col=sha256_col, shard_size=shard_size, resize=resize, image_size=image_size,
            max_aspect_ratio=max_aspect_ratio, min_size=min_size, format=format, quality=quality, timeout=timeout,
            retries=retries, concurrency=concurrency, per_host_concurrency=per_host_concurrency,
            user_agent=user_agent, max_bytes=max_bytes, allow_private_network=allow_private_network,
            disallowed_directives=DEFAULT_DISALLOWED if respect_opt_out else (), overwrite=overwrite,
            retry_failed=retry_failed,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    raise typer.Exit(run_download_command(inputs, config))


def run_download_command(inputs: list[str], config) -> int:
    from rich.markup import escape

    from .atomic import OutputLockedError
    from .downloads import choose_columns, download
    from .downloads.outcomes import BLOCKED_ADDRESS
    from .pipeline import ConfigMismatchError
    from .progress import RichProgress
    from .readers import InputError
    from .redact import redact

    def error(exc: Exception) -> int:
        _error_line(exc)
        return 2

    try:
        columns = choose_columns(inputs, config)
    except (InputError, FileNotFoundError) as exc:
        return error(exc)
    console.print(f"columns: {escape(columns.describe())}", soft_wrap=True)
    progress = RichProgress(description="downloading", unit="rows")
    try:
        summary = download(inputs, config, progress, columns=columns)
    except (InputError, ConfigMismatchError, FileNotFoundError, OutputLockedError) as exc:
        progress.stop()
        return error(exc)
    progress.stop()
    from .pipeline import DONE, SKIPPED

    table = Table(title="recap download: summary", show_header=False)
    table.add_row("shards done", str(len(summary.by_outcome(DONE))))
    table.add_row("shards skipped (already complete)", str(len(summary.by_outcome(SKIPPED))))
    table.add_row("shards failed", str(len(summary.failed)))
    for outcome, n in sorted(summary.status_counts.items()):
        table.add_row(f"  rows: {outcome}", str(n))
    table.add_row("output", escape(redact(config.output)))
    console.print(table)
    refused = summary.status_counts.get(BLOCKED_ADDRESS, 0)
    if refused and not config.allow_private_network:
        console.print(
            f"[yellow]{refused} row(s) refused[/yellow]: their hosts are private, loopback, link-local "
            "or reserved addresses (outcome blocked_address). To download them, rerun the same "
            "command with --allow-private-network (only for hosts you trust): complete shards fetch "
            "just those rows again.",
            soft_wrap=True,
        )
    for r in summary.failed:
        _failed_line(f"shard {r.name}: {r.error}")
    return 1 if summary.failed else 0


@app.command("run")
def run_cmd(
    inputs: Annotated[list[str], typer.Argument(help="URL metadata (parquet, csv, tsv, jsonl, txt; .gz too).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Run folder: images/ (shards) and captions/ go inside.")],
    url_col: Annotated[str, typer.Option(help="Column holding the image URL.")] = "url",
    caption_col: Annotated[str | None, typer.Option(help="Column holding the original caption (default: the first of caption, text, ... found; '' for none).")] = None,
    shard_size: Annotated[int, typer.Option(help="Rows per shard.")] = 10_000,
    image_size: Annotated[int, typer.Option(help="Images are stored with this short side (keep_ratio).")] = 512,
    concurrency: Annotated[int, typer.Option(help="Connections open at once.")] = 64,
    allow_private_network: Annotated[bool, typer.Option(help="Allow hosts that resolve to private or loopback addresses.")] = False,
    model: Annotated[str, typer.Option(help="'tiny', a local model folder or a hub id.")] = "tiny",
    batch_size: Annotated[int, typer.Option(help="Images per generate call (0: automatic on GPU).")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="Generation limit per caption.")] = 128,
) -> None:
    """URLs to captions in one command: `recap download` into OUT/images, then `recap caption`
    into OUT/captions. Both halves resume, so rerunning the command finishes an interrupted run."""
    from .downloads import DownloadConfig

    base = output.rstrip("/")
    try:
        download_cfg = DownloadConfig(
            output=f"{base}/images", url_col=url_col, caption_col=caption_col, shard_size=shard_size,
            image_size=image_size, concurrency=concurrency, allow_private_network=allow_private_network,
        )
        caption_cfg = CaptionConfig(model=model, batch_size=batch_size, device=device, max_new_tokens=max_new_tokens)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    code = run_download_command(inputs, download_cfg)
    if code == 2:
        raise typer.Exit(code)
    caption_code = run_caption_command([f"{base}/images"], caption_cfg, RunConfig(output=f"{base}/captions"))
    raise typer.Exit(max(code, caption_code))


@app.command("score")
def score_cmd(
    output: Annotated[str, typer.Argument(help="An output folder of `recap caption`.")],
    clip_model: Annotated[str, typer.Option(help="CLIP / SigLIP / long-text CLIP: a hub id (default: the paper's CLIP ViT-L/14; "
                                            "used from the local Hugging Face cache when it is there), a local model folder, "
                                            "or tiny-clip (built in; shapes world only, its scores mean nothing for photos).")] = "openai/clip-vit-large-patch14",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per CLIP batch.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Rescore files already scored by this model.")] = False,
) -> None:
    """Fill re_clip_score / org_clip_score (100 x cosine) and the length columns of finished shards, in place."""
    from rich.markup import escape

    from .quality.clip import ClipModelError, ClipScorer
    from .quality.outputs import NoOutputError
    from .quality.score import score_output

    scorer = ClipScorer(clip_model, device=device, batch_size=batch_size)
    from .atomic import OutputLockedError

    # No such model here, not caption output, another run writing there: one line, at once.
    with _clear_error(NoOutputError, ClipModelError, OutputLockedError), console.status("scoring") as status:
        summary = score_output(output, scorer, overwrite, on_shard=lambda name: status.update(f"scoring shard {name}"))
    console.print(f"scored {len(summary.scored)} shard(s), skipped {len(summary.skipped)} already scored by {clip_model}")
    if scorer.note:  # the built-in shapes-world CLIP: say what its numbers are worth
        console.print(f"[yellow]note:[/yellow] {escape(scorer.note)}", soft_wrap=True)
    for name, error in summary.failed.items():
        _failed_line(f"{name}: {error}")
    raise typer.Exit(1 if summary.failed else 0)


@app.command("judge")
def judge_cmd(
    output: Annotated[str, typer.Argument(help="An output folder of `recap caption`.")],
    endpoint: Annotated[list[str], typer.Option(help="OpenAI-compatible server(s) taking images; repeat or comma-separate.")],
    model: Annotated[str, typer.Option(help="Model name the server serves (e.g. gpt-4o, or a local VLM).")],
    fraction: Annotated[float, typer.Option(help="Share of rows to judge, chosen by a hash of (seed, key).")] = 0.01,
    seed: Annotated[int, typer.Option(help="Chooses the sample.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 32,
    retries: Annotated[int, typer.Option(help="Retries on timeouts, connection errors, 429 and 5xx.")] = 4,
    request_timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 120.0,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key (never logged).")] = "OPENAI_API_KEY",
    overwrite: Annotated[bool, typer.Option(help="Judge again files already judged with these settings.")] = False,
) -> None:
    """Rate original and new captions 1-5 with the paper's GPT-4V prompt into re_/org_gpt4v_score."""
    from .quality.judge import JudgeConfig, judge_output

    try:
        config = JudgeConfig(endpoints=_split(endpoint), model=model, fraction=fraction, seed=seed,
                             concurrency=concurrency, retries=retries, request_timeout=request_timeout,
                             api_key_env=api_key_env, overwrite=overwrite)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from .atomic import OutputLockedError
    from .quality.outputs import NoOutputError

    with _clear_error(NoOutputError, OutputLockedError), console.status("judging") as status:
        summary = judge_output(output, config, on_shard=lambda name: status.update(f"judging shard {name}"))
    console.print(f"judged {sum(summary.judged.values())} row(s) in {len(summary.judged)} shard(s) "
                  f"(--fraction {fraction} of the captioned rows, chosen by --seed {seed}); "
                  f"skipped {len(summary.skipped)} already judged", soft_wrap=True)
    for name, error in summary.failed.items():
        _failed_line(f"{name}: {error}")
    raise typer.Exit(1 if summary.failed else 0)


@app.command("report")
def report_cmd(
    output: Annotated[str, typer.Argument(help="An output folder of `recap caption`.")],
    report: Annotated[str, typer.Option("--output", "-o", help="HTML file to write (local path or fsspec URL).")] = "report.html",
    gallery: Annotated[int, typer.Option(help="Samples in the gallery.")] = 24,
    seed: Annotated[int, typer.Option(help="Chooses the gallery's samples.")] = 0,
) -> None:
    """Write one self-contained HTML report: the models, our numbers beside the paper's, statuses,
    failed rows, distributions, flags, a gallery."""
    from .quality.outputs import NoOutputError
    from .quality.report import MissingDependencyError, write_report

    # A missing matplotlib / jinja2 is one line naming the pip command (exit 2), not a traceback.
    with _clear_error(NoOutputError, MissingDependencyError), console.status("building the report"):
        write_report(output, report, gallery, seed)
    console.print(f"wrote {report}")


@app.command("stats")
def stats_cmd(
    output: Annotated[str, typer.Argument(help="An output folder of `recap caption`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    save: Annotated[str | None, typer.Option("--output", "-o", help="Also write the JSON to this file (local path or fsspec URL).")] = None,
) -> None:
    """Print the numbers of an output folder beside the paper's, and the models that made them:
    lengths, CLIP and judge scores and preferences, vocabulary, flag rates, failed rows."""
    import json

    from rich.markup import escape

    from .atomic import write_to_url_atomic
    from .quality.outputs import NoOutputError
    from .quality.stats import PAPER, collect, comparison, count, fmt, pct, rounded

    with _clear_error(NoOutputError):
        stats = collect(output)
    summary = stats.summary(digits=None)  # exact; the JSON is rounded to 4 decimals, the table to 2
    text = json.dumps({**rounded(summary), "paper": PAPER}, indent=2)
    if save:
        write_to_url_atomic(save, text + "\n")
    if as_json:
        print(text)
        return
    console.print(f"[bold]recap stats: {output}[/bold]  {count(summary['shards'], 'shard')}, {count(summary['rows'], 'row')}: "
                  + ", ".join(f"{fmt(n)} {status}" for status, n in summary["status_counts"].items()))
    models = summary["models"]
    for use in models["captioner"]:
        console.print(f"captioner: [bold]{escape(str(use.get('model') or 'not recorded'))}[/bold], {use['decoding']}, prompt {escape(repr(use.get('prompt')))} "
                      f"({count(use['shards'], 'shard')}, {count(use['rows'], 'row')} captioned)")
    for kind in ("clip", "judge"):
        for use in models[kind]:
            name = use["model"] if use["model"] is not None else "not recorded"
            console.print(f"{'CLIP' if kind == 'clip' else 'judge'}: [bold]{escape(str(name))}[/bold] "
                          f"({count(use['shards'], 'shard')}, {count(use['rows'], 'row')})")
    for use in [*models["captioner"], *models["clip"]]:
        if use.get("note"):
            console.print(f"[yellow]note:[/yellow] {escape(use['note'])}")
    table = Table(title=f"ours beside the paper's: {PAPER['source']}", show_lines=True)
    table.add_column("measure, and what made ours", ratio=1)
    for column in ("recaption", "original", "paper: recaption / original"):
        table.add_column(column, overflow="fold")
    for line in comparison(summary):
        made_by = f"[dim]{escape(line.made_by)}[/dim]" + (f"\n[yellow]{escape(line.note)}[/yellow]" if line.note else "")
        table.add_row(f"{escape(line.measure)}\n{made_by}", line.re, line.org, line.paper)
    console.print(table)
    flags = Table(title=f"flags, share of the {fmt(stats.ok_rows)} captioned (ok) rows")
    flags.add_column("flag")
    flags.add_column("rows")
    flags.add_column("share")
    for flag, rate in summary["flag_rates"].items():
        flags.add_row(flag, fmt(stats.flag_counts[flag]), pct(rate))
    console.print(flags)
    failed = summary["failed_rows"]
    if failed["count"]:
        shown = failed["listed"][:10]
        console.print(f"failed rows: {fmt(failed['count'])}" + (f" (first {len(shown)}; --json lists up to {len(failed['listed'])})" if failed["count"] > len(shown) else ""))
        for row in shown:
            console.print(f"  {row['shard']} {row['key']}  {row['status']}: {row['error'] or ''}", markup=False, highlight=False)
    if save:
        console.print(f"wrote {save}")


@app.command("shapes")
def shapes_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the shards.")],
    images: Annotated[int, typer.Option(help="Samples to write.")] = 10_000,
    seed: Annotated[int, typer.Option(help="World seed: sample i depends only on (seed, i).")] = 0,
    start: Annotated[int, typer.Option(help="First sample index (make disjoint splits with it).")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 1000,
) -> None:
    """Write shapes-world shards (img2dataset layout): images, noisy alt-text, full descriptions, labels."""
    from .shapes import write_shapes_shards

    paths = write_shapes_shards(output, images, seed, image_size, shard_size, start)
    console.print(f"wrote {len(paths)} shard(s) of shapes-world samples to {output}")


@app.command("train-clip")
def train_clip_cmd(
    data: Annotated[list[str], typer.Argument(help="`recap caption` output folders (original + recaption per row) or image-text shards.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for checkpoints and the final model.")],
    p: Annotated[float, typer.Option("--p", help="Probability of training on the ORIGINAL caption (the paper's p); else the recaption.")] = 0.5,
    concat: Annotated[bool, typer.Option(help="Train on 'original recaption' concatenated instead.")] = False,
    text_length: Annotated[int, typer.Option(help="Text tokens (the paper: 128).")] = 128,
    model: Annotated[str | None, typer.Option(help="CLIP folder to start from (default: a small CLIP built fresh).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 500,
    batch_size: Annotated[int, typer.Option(help="Pairs per step (per GPU under torchrun).")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW; warmup then cosine).")] = 5e-4,
    warmup: Annotated[int, typer.Option(help="Warmup steps.")] = 50,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (a rerun resumes).")] = 250,
    seed: Annotated[int, typer.Option(help="Seed for sampling batches and captions.")] = 0,
    caption_field: Annotated[str | None, typer.Option(help="Plain shards: field with the original caption.")] = None,
    recaption_field: Annotated[str | None, typer.Option(help="Plain shards: json field used as the recaption.")] = None,
    width: Annotated[int, typer.Option(help="Fresh models: hidden size of both towers.")] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
) -> None:
    """Train CLIP contrastively on a mix of original captions and recaptions (Recap-CLIP)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .training.clip_train import ClipTrainConfig, train_clip

    try:
        config = ClipTrainConfig(data=data, output=output, model=model, p=p, concat=concat, text_length=text_length,
                                 steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, save_every=save_every,
                                 seed=seed, caption_field=caption_field, recaption_field=recaption_field, width=width,
                                 device=device)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with _clear_error(ValueError):
        result = train_clip(config)
    console.print(f"trained {result['steps']} steps on {result['pairs']} pairs; final loss {result['losses'][-1]:.4f}" if result["losses"] else "nothing to train")


@app.command("train-captioner")
def train_captioner_cmd(
    data: Annotated[list[str], typer.Argument(help="Image shards with a short caption and a detailed description (shapes world: recap shapes).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for checkpoints and the final model.")],
    model: Annotated[str | None, typer.Option(help="LlavaForConditionalGeneration folder to start from (default: a small one built fresh).")] = None,
    vision_tower: Annotated[str | None, typer.Option(help="Fresh models: CLIP folder whose vision tower to use (e.g. from recap train-clip).")] = None,
    stage1_field: Annotated[str | None, typer.Option(help="Stage 1 caption field (default: the shard's caption).")] = None,
    stage2_field: Annotated[str, typer.Option(help="Stage 2 target: json field with the detailed description.")] = "description",
    stage1_steps: Annotated[int, typer.Option(help="Stage 1 steps (projector only).")] = 200,
    stage2_steps: Annotated[int, typer.Option(help="Stage 2 steps (projector + language model).")] = 1500,
    batch_size: Annotated[int, typer.Option(help="Conversations per step (per GPU under torchrun).")] = 32,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (a rerun resumes).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    width: Annotated[int, typer.Option(help="Fresh models: language model width.")] = 192,
    layers: Annotated[int, typer.Option(help="Fresh models: language model layers.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
) -> None:
    """Train a captioner with the LLaVA-1.5 recipe (stage 1 projector, stage 2 projector + LM; vision frozen)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .training.captioner_train import CaptionerTrainConfig, train_captioner

    try:
        config = CaptionerTrainConfig(data=data, output=output, model=model, vision_tower=vision_tower,
                                      stage1_field=stage1_field, stage2_field=stage2_field,
                                      stage1_steps=stage1_steps, stage2_steps=stage2_steps, batch_size=batch_size,
                                      save_every=save_every, seed=seed, width=width, layers=layers, device=device)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    # ValueError: the library's input errors (InputError, TrainingInputError, CheckpointError).
    with _clear_error(ValueError):
        result = train_captioner(config)
    console.print(f"trained on {result['examples']} examples; saved to {output}")


@app.command("eval-captioner")
def eval_captioner_cmd(
    model: Annotated[str, typer.Argument(help="Captioner folder, or tiny.")],
    images: Annotated[int, typer.Option(help="Held-out shapes-world images.")] = 200,
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    start: Annotated[int, typer.Option(help="First sample index (keep it outside the training range).")] = 200_000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
) -> None:
    """Share of objects described with the right colour and shape, and a CHAIR-style hallucination rate."""
    import json

    from .training.caption_eval import evaluate_captioner

    with _clear_error(ValueError):
        result = evaluate_captioner(model, images, seed, start, device)
    console.print_json(json.dumps(result))


@app.command("eval-retrieval")
def eval_retrieval_cmd(
    model: Annotated[str, typer.Argument(help="CLIP / SigLIP model folder or hub id.")],
    data: Annotated[list[str], typer.Argument(help="Image-text shards (e.g. COCO / Flickr30k test in WebDataset, or a shapes test split).")],
    caption_field: Annotated[str | None, typer.Option(help="Field with the caption to retrieve (default: the shard's caption; shapes: description).")] = None,
    label_field: Annotated[str | None, typer.Option(help="Field with a class label, for zero-shot accuracy.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate on the first N pairs.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Image->text and text->image Recall@1/5/10, and zero-shot classification accuracy."""
    import json

    from .training.retrieval import evaluate

    with _clear_error(ValueError):
        result = evaluate(model, data, caption_field, label_field, device=device, limit=limit)
    if as_json:
        print(json.dumps({"n": result.n, **result.metrics}, indent=2))
        return
    table = Table(title=f"retrieval on {result.n} pairs", show_header=False)
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command("demo")
def demo_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the sample shard and the captions.")] = Path("recap-demo"),
    rows: Annotated[int, typer.Option(help="Captions to print.")] = 5,
) -> None:
    """Caption the bundled sample shard with the built-in tiny model, offline."""
    from .demo import run_demo

    raise typer.Exit(run_demo(output, console, rows))


@app.command("convert-llava")
def convert_llava_cmd(
    src: Annotated[Path, typer.Argument(help="LLaVA-repo checkpoint folder (model_type llava_llama), e.g. tennant/llava-llama-3-8b-hqedit downloaded.")],
    dst: Annotated[Path, typer.Argument(help="Output folder, new or empty: a transformers LlavaForConditionalGeneration model.")],
    vision_tower: Annotated[str | None, typer.Option(help="CLIP folder or hub id for the vision tower (default: the checkpoint's mm_vision_tower).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or hub id (default: the checkpoint's own).")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Accept pickle checkpoints (.bin); pickle can run code when loaded.")] = False,
) -> None:
    """Convert a LLaVA-repo checkpoint into a transformers model folder that `recap caption --model` loads."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .models.convert_llava import ConversionError, convert_llava

    with _clear_error(ConversionError):
        out = convert_llava(src, dst, vision_tower, tokenizer, allow_pickle)
    console.print(f"wrote {out}; caption with: recap caption SHARDS -o OUT --model {out}")


@app.command("models")
def models_cmd() -> None:
    """List the model families recaption knows and how it prompts them."""
    table = Table(title="model families")
    for column in ("family", "model_type", "prompt format", "models"):
        table.add_column(column)
    for family in MODEL_FAMILIES:
        table.add_row(family.name, ", ".join(family.model_types),
                      "chat template" + (f"; else {family.fallback_template!r}" if family.fallback_template else ""),
                      family.description)
    console.print(table)


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's stop, `kill`, docker stop) unwinds like Ctrl-C: the shard being
    written is aborted, temporary files removed and the output folder's lock released."""
    import signal

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def main() -> None:  # console-script entry point
    _stop_on_sigterm()
    app()


if __name__ == "__main__":
    main()
