"""`recap`: a thin command-line layer over the recaption library.

One module per group of commands (caption, download, quality, selection, train, view, demo), each a set of plain
functions; this module makes the typer app and registers them, every one guarded so that a user
error (RecaptionError) raised anywhere under it is one red line and exit code 2."""

from __future__ import annotations

import shutil

import typer
from typer.core import TyperCommand

from .caption import caption_cmd, convert_llava_cmd, models_cmd, run_caption_command, run_cmd
from .common import user_errors
from .demo import demo_cmd
from .download import download_cmd, lookup_cmd, run_download_command
from .quality import judge_cmd, report_cmd, score_cmd, stats_cmd
from .selection import export_cmd, filter_cmd
from .t2i import eval_t2i_cmd, generate_cmd, train_dit_cmd
from .train import eval_captioner_cmd, eval_retrieval_cmd, shapes_cmd, train_captioner_cmd, train_clip_cmd
from .view import view_cmd

__all__ = ["app", "caption_cmd", "main", "run_caption_command", "run_download_command"]

app = typer.Typer(
    help="Recaption image-text datasets with vision-language models (Recap-DataComp-1B pipeline).",
    no_args_is_help=True,
    add_completion=False,
)

# In the order `recap --help` lists them.
COMMANDS = {
    "caption": caption_cmd,
    "download": download_cmd,
    "lookup": lookup_cmd,
    "run": run_cmd,
    "score": score_cmd,
    "judge": judge_cmd,
    "report": report_cmd,
    "stats": stats_cmd,
    "view": view_cmd,
    "filter": filter_cmd,
    "export": export_cmd,
    "shapes": shapes_cmd,
    "train-clip": train_clip_cmd,
    "train-captioner": train_captioner_cmd,
    "eval-captioner": eval_captioner_cmd,
    "eval-retrieval": eval_retrieval_cmd,
    "train-dit": train_dit_cmd,
    "generate": generate_cmd,
    "eval-t2i": eval_t2i_cmd,
    "demo": demo_cmd,
    "convert-llava": convert_llava_cmd,
    "models": models_cmd,
}
# What each positional argument is, as usage shows it (`recap score [OPTIONS] CAPTIONS`); typer
# would print its parameter name in braces.
METAVARS = {"inputs": "INPUTS", "output": "CAPTIONS", "data": "DATA", "model": "MODEL", "prompts": "PROMPTS",
            "generated": "GENERATED", "src": "SRC", "dst": "DST"}
PER_COMMAND = {("download", "inputs"): "METADATA", ("run", "inputs"): "METADATA"}
RICH_HELP_COLUMNS = 120  # the narrowest terminal where rich shows every option name whole


class _RecapCommand(TyperCommand):
    """A typer command whose positional arguments show a name in capitals (INPUTS..., CAPTIONS),
    where typer shows the parameter's name in braces (`{output}`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if hasattr(param, "_usage_display_name"):  # typer's argument class (its own click's)
                name = PER_COMMAND.get((self.name, param.name), METAVARS.get(param.name, param.name.upper()))
                shown = name + ("..." if param.nargs != 1 else "")
                param.metavar = name  # the Arguments panel and error hints name it so too
                param._usage_display_name = lambda shown=shown: shown

    def format_help(self, ctx, formatter) -> None:
        """Rich's option table cuts long flag names short (`--allow-private-n…`) in a terminal
        under RICH_HELP_COLUMNS wide; there, click's plain help, which wraps and keeps every name."""
        if shutil.get_terminal_size().columns >= RICH_HELP_COLUMNS:
            return super().format_help(ctx, formatter)
        mode, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            return super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = mode


for _name, _command in COMMANDS.items():
    app.command(_name, cls=_RecapCommand)(user_errors(_command))


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's stop, `kill`, docker stop) unwinds like Ctrl-C: the shard being
    written is aborted, temporary files removed and the output folder's lock released."""
    import signal

    def stop(signum, _frame):
        interrupt = KeyboardInterrupt(f"stopped by signal {signum}")
        interrupt.signum = signum  # the exit code says which: 128 + 15 for SIGTERM, as shells do
        raise interrupt

    signal.signal(signal.SIGTERM, stop)


def main() -> None:  # console-script entry point
    _stop_on_sigterm()
    app()
