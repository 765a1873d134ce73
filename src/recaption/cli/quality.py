"""After captioning: `recap score`, `judge`, `report`, `stats`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .common import console, failed_shard, split_values


def score_cmd(
    output: Annotated[str, typer.Argument(help="An output folder of `recap caption`.")],
    clip_model: Annotated[str, typer.Option(help="CLIP / SigLIP / long-text CLIP: a hub id (default: the paper's CLIP ViT-L/14; "
                                            "used from the local Hugging Face cache when it is there), a local model folder, "
                                            "open_clip:FOLDER or open_clip:ARCH:PRETRAINED (open_clip models; needs recaption\\[vision]), "
                                            "or tiny-clip (built in; shapes world only, its scores mean nothing for photos).")] = "openai/clip-vit-large-patch14",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per CLIP batch.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Rescore files already scored by this model.")] = False,
    clip_long_text: Annotated[str, typer.Option(help="Captions longer than the CLIP's text window: truncate (as CLIP was trained) or chunk (sentences packed into windows, embeddings averaged).")] = "truncate",
) -> None:
    """Fill re_clip_score / org_clip_score (100 x cosine) and the length columns of finished shards, in place."""
    from rich.markup import escape

    from ..quality.score import score_output
    from ..quality.scorers import make_scorer

    scorer = make_scorer(clip_model, device=device, batch_size=batch_size, long_text=clip_long_text)
    # No such model here (ClipModelError), not caption output (NoOutputError), another run writing
    # there (OutputLockedError): user errors, so one line at once, exit 2.
    with console.status("scoring") as status:
        summary = score_output(output, scorer, overwrite, on_shard=lambda name: status.update(f"scoring shard {name}"))
    console.print(f"scored {len(summary.done)} shard(s), skipped {len(summary.skipped)} already scored by {clip_model} "
                  f"(captions over its text window: {clip_long_text})")
    if scorer.note:  # the built-in shapes-world CLIP: say what its numbers are worth
        console.print(f"[yellow]note:[/yellow] {escape(scorer.note)}", soft_wrap=True)
    for name, error in summary.errors.items():
        failed_shard(name, error)
    raise typer.Exit(1 if summary.failed else 0)


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
    from ..quality.judge import JudgeConfig, judge_output

    try:
        config = JudgeConfig(endpoints=split_values(endpoint), model=model, fraction=fraction, seed=seed,
                             concurrency=concurrency, retries=retries, request_timeout=request_timeout,
                             api_key_env=api_key_env, overwrite=overwrite)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    # Not caption output (NoOutputError), another run writing there (OutputLockedError): user errors.
    with console.status("judging") as status:
        summary = judge_output(output, config, on_shard=lambda name: status.update(f"judging shard {name}"))
    console.print(f"judged {summary.count('judged')} row(s) in {len(summary.done)} shard(s) "
                  f"(--fraction {fraction} of the captioned rows, chosen by --seed {seed}); "
                  f"skipped {len(summary.skipped)} already judged", soft_wrap=True)
    for name, error in summary.errors.items():
        failed_shard(name, error)
    raise typer.Exit(1 if summary.failed else 0)


def report_cmd(
    output: Annotated[str, typer.Argument(help="An output folder of `recap caption`.")],
    report: Annotated[str | None, typer.Option("--output", "-o", help="HTML file to write (local path or fsspec URL; default: OUTPUT/report.html, as recaption.report).")] = None,
    gallery: Annotated[int, typer.Option(help="Samples in the gallery.")] = 24,
    seed: Annotated[int, typer.Option(help="Chooses the gallery's samples.")] = 0,
) -> None:
    """Write one self-contained HTML report: the models, our numbers beside the paper's, statuses,
    failed rows, distributions, flags, a gallery."""
    from ..api import report as write_report

    # A missing matplotlib / jinja2 (MissingDependencyError, a user error) is one line naming the
    # pip command (exit 2), not a traceback.
    with console.status("building the report"):
        path = write_report(output, report, gallery, seed)
    console.print(f"wrote {path}")


def stats_cmd(
    output: Annotated[str, typer.Argument(help="An output folder of `recap caption`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    save: Annotated[str | None, typer.Option("--output", "-o", help="Also write the JSON to this file (local path or fsspec URL).")] = None,
) -> None:
    """Print the numbers of an output folder beside the paper's, and the models that made them:
    lengths, CLIP and judge scores and preferences, vocabulary, flag rates, failed rows."""
    import json

    from rich.markup import escape

    from ..quality.outputs import unfinished_shards
    from ..quality.stats import PAPER, collect, comparison, count, fmt, pct, rounded
    from ..spine.contract import write_file_output
    from ..spine.ledger import OutputDir

    stats = collect(output)  # NoOutputError: a user error
    summary = stats.summary(digits=None)  # exact; the JSON is rounded to 4 decimals, the table to 2
    text = json.dumps({**rounded(summary), "paper": PAPER}, indent=2)
    if save:
        write_file_output(save, text + "\n", what="stats export", suffixes=(".json",), inputs=[output])
    if as_json:
        print(text)
        return
    console.print(f"[bold]recap stats: {output}[/bold]  {count(summary['shards'], 'shard')}, {count(summary['rows'], 'row')}: "
                  + ", ".join(f"{fmt(n)} {status}" for status, n in summary["status_counts"].items()))
    unfinished = unfinished_shards(OutputDir(output))
    if unfinished:
        console.print(f"note: not counted: {count(len(unfinished), 'shard')} with a parquet but no .done marker "
                      f"({escape(', '.join(unfinished[:5]))}{', ...' if len(unfinished) > 5 else ''}): unfinished; "
                      "rerun the command that made them to finish them", soft_wrap=True)
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
