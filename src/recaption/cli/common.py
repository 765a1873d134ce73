"""What the `recap` commands share: the console, one-line error and failure printers, the
user-error guard, and the run summaries."""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.table import Table

from ..spine.errors import RecaptionError
from ..spine.results import DONE

console = Console()


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 but tab and newline, DEL, C1


def _visible(text: str) -> str:
    """Control characters as `\x1b` (an escape sequence could retitle, recolour or rewrite the
    terminal)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def printable(text: object) -> str:
    """Text from data (keys, URLs, captions, file names) as it may reach the terminal through
    rich: markup shown as is, control characters visible (`_visible`)."""
    from rich.markup import escape

    return escape(_visible(str(text)))


def _red_line(label: str, text: str) -> None:
    """One line, unwrapped (so it stays one line in logs), markup and control characters in the
    text shown as text, secrets (URL credentials, keys) masked."""
    from ..redact import redact

    console.print(f"[red]{label}[/red] {printable(redact(text))}", soft_wrap=True)


def error_line(exc: BaseException) -> None:
    _red_line("error:", str(exc))


def failed_line(text: str) -> None:
    """A shard that failed."""
    _red_line("FAILED", text)


def failed_shard(name: str, error: str) -> None:
    """A shard that failed, named once (an error may begin with its name already)."""
    failed_line(f"{name}: {error.removeprefix(f'{name}: ')}")


def exit_code_of(exc: BaseException) -> int:
    """2 for a user error; what the error says otherwise (1: an output that failed after part of
    the run was written, spine/contract.py)."""
    return getattr(exc, "exit_code", 2)


@contextmanager
def clear_error(*errors: type[Exception]):
    """Expected failures as one red line and exit code 2, not a traceback: every user error
    (RecaptionError), plus the `errors` named (a wrong value, a wrong folder). An error that
    says otherwise (`exit_code` 1: an output that failed after part of a run was written) keeps
    its code."""
    try:
        yield
    except (RecaptionError, *errors) as exc:
        error_line(exc)
        raise typer.Exit(exit_code_of(exc)) from exc


# Commands whose own progress lines are info-level logs (the trainers' steps, the converter).
TALKATIVE = {"train_clip_cmd", "train_captioner_cmd", "train_dit_cmd", "convert_llava_cmd"}
# Libraries whose warnings and progress bars are chatter to a user of recap (shown with -v).
THIRD_PARTY = ("transformers", "datasets", "torch", "urllib3", "filelock", "fsspec", "PIL", "ray", "httpx",
               "huggingface_hub", "diffusers", "accelerate", "matplotlib", "asyncio")


class _Lines(logging.Formatter):
    """`warning: message` (the level in words, no logger name): one formatter for every command."""

    def format(self, record: logging.LogRecord) -> str:
        message = _visible(super().format(record))  # names from data may hold escape sequences
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


def configure_logging(verbose: bool = False, talkative: bool = False) -> None:
    """One handler for every command: recaption's warnings as `warning: ...` lines (its info lines
    too with -v, or for commands that report progress so); third-party libraries' warnings and
    progress bars silenced unless -v."""
    import os

    handler = logging.StreamHandler()
    handler.setFormatter(_Lines("%(message)s"))
    handler.setLevel(logging.INFO if verbose or talkative else logging.WARNING)
    root = logging.getLogger()
    # Ours replaces ours (a second command in one process); others' handlers (pytest's) stay.
    root.handlers[:] = [h for h in root.handlers if not isinstance(h.formatter, _Lines)] + [handler]
    if verbose or talkative:
        logging.getLogger("recaption").setLevel(logging.INFO)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    # Pillow's notes about a file's metadata ("Corrupt EXIF data", "Metadata Warning, tag 274 had
    # too many entries") are Python warnings, not log lines: one per image of a crawl on stderr.
    warnings.filterwarnings("default" if verbose else "ignore", category=UserWarning, module=r"PIL(\.|$)")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' "Loading weights" bars


def user_errors(command: Callable) -> Callable:
    """A command whose user errors (RecaptionError), wherever raised under it, end it with one
    line and exit code 2; its logging set up the one way (configure_logging); Ctrl-C or SIGTERM
    ending it with a line saying what is kept. Signature, annotations and docstring stay the
    command's, for typer."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        configure_logging(bool(kwargs.get("verbose")), command.__name__ in TALKATIVE)
        try:
            with clear_error():
                return command(*args, **kwargs)
        except KeyboardInterrupt as exc:
            console.print(
                f"[yellow]stopped[/yellow] ({str(exc) or 'interrupted'}): finished shards and checkpoints are kept, "
                "the one being written was discarded; rerun the same command to resume",
                soft_wrap=True,
            )
            raise typer.Exit(128 + getattr(exc, "signum", 2)) from None  # 130 for Ctrl-C, 143 for SIGTERM

    return guarded


def split_values(values: list[str] | None) -> list[str]:
    """Repeated options and comma-separated values alike: --endpoint a,b --endpoint c."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def _shards_table(title: str, summary) -> Table:
    """A run summary's table, begun with its shards by outcome."""
    table = Table(title=title, show_header=False)
    table.add_row("shards done", str(len(summary.done)))
    table.add_row("shards skipped (already complete)", str(len(summary.skipped)))
    table.add_row("shards failed", str(len(summary.failed)))
    return table


def print_caption_summary(summary, output: str, model: str | None = None) -> int:
    """The table after `recap caption` (and `run`, `demo`); the exit code: 1 if a shard failed.
    Beside the statuses, how many of this run's captions each quality flag marks (flags.py),
    and a line when most of them are degenerate, naming the model that wrote them."""
    from rich.markup import escape

    from ..quality.stats import CAPTIONER_NOTES

    table = _shards_table("recap caption: summary", summary)
    table.add_row("rows written", str(summary.rows))
    for status, n in sorted(summary.status_counts.items()):
        table.add_row(f"  rows with status {status}", str(n))
    finished = summary.by_outcome(DONE)
    captioned = sum(r.status_counts.get("ok", 0) for r in finished)
    flagged: Counter = Counter()
    for r in finished:
        flagged.update(r.counts)
    for column, n in sorted(flagged.items()):
        table.add_row(f"  captions flagged {column}", f"{n} of {captioned} ({n / captioned:.0%})")
    table.add_row("output", output)
    console.print(table)
    junk = flagged.get("re_degenerate", 0)
    note = CAPTIONER_NOTES.get(model or "")
    if note and captioned and junk <= captioned / 2:  # its captions look fine, and may be made up
        console.print(f"note: --model {escape(model)} is {note}; use a real captioner for photos "
                      "(--model llava-hf/llava-1.5-7b-hf, docs/models.md)", soft_wrap=True)
    if captioned and junk > captioned / 2:
        console.print(
            f"[yellow]warning:[/yellow] {junk} of the {captioned} captions written are degenerate (next to no words: "
            f"{escape(str(model or 'the model'))} does not describe these images); see re_degenerate, and "
            + ("use a real captioner (--model llava-hf/llava-1.5-7b-hf, docs/models.md): the built-in tiny model "
               "knows only the shapes world" if model in (None, "tiny") else "check the model and its prompt"),
            soft_wrap=True,
        )
    bound = summary.bound_by()
    if bound:  # which stage limited this run: the loader or the model
        console.print(f"time: {escape(bound)}", soft_wrap=True)
    for r in summary.failed:
        failed_line(f"{r.source}: {r.error}")
    for r in finished:
        if r.rows and not r.status_counts.get("ok"):  # complete, yet nothing captioned: say so
            kinds = ", ".join(f"{status} {n}" for status, n in sorted(r.status_counts.items()))
            console.print(
                f"[yellow]note:[/yellow] {escape(r.name)}: none of its {r.rows} rows could be captioned ({kinds}); "
                "see their error column, and rerun with --overwrite once the inputs are fixed",
                soft_wrap=True,
            )
    return 1 if summary.failed else 0


def print_download_summary(summary, config) -> int:
    """The table after `recap download` (and `run`); the exit code: 1 if a shard failed."""
    from rich.markup import escape

    from ..downloads.outcomes import BLOCKED_ADDRESS
    from ..redact import redact

    table = _shards_table("recap download: summary", summary)
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
        failed_line(f"shard {r.name}: {r.error}")
    return 1 if summary.failed else 0


def print_result(result: dict, as_json: bool, title: str) -> None:
    """A command's result: a table of its numbers by default (nested keys joined with `.`,
    floats to 4 significant digits, lists by length), or all of it as JSON with --json."""
    import json

    if as_json:
        console.print(json.dumps(result, indent=2, default=str), soft_wrap=True, markup=False)
        return
    table = Table(title=title, show_header=False)
    for key, value in _flat(result):
        table.add_row(printable(key), f"{value:.4g}" if isinstance(value, float) else printable(value))
    console.print(table)


def _flat(value, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flat(v, f"{prefix}{k}.")]
    if isinstance(value, (list, tuple)):
        return [(prefix.rstrip("."), f"{len(value)} items (--json lists them)")]
    return [(prefix.rstrip("."), value)]
