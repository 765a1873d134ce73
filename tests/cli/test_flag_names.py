"""Every flag a message names exists, and the command that prints it accepts it: a user told
"use --overwrite" by `recap run` can type `recap run ... --overwrite`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import typer

from recaption.cli import app

SRC = Path(__file__).resolve().parents[2] / "src" / "recaption"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")
# Flags of other programs that messages tell users to run: pip, huggingface-cli, torchrun.
OTHER_PROGRAMS = {"--force-reinstall", "--local-dir", "--nproc"}


def accepted() -> dict[str, set[str]]:
    group = typer.main.get_command(app)
    return {name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
            for name, cmd in group.commands.items()}


def flags_in_messages(paths) -> dict[str, set[str]]:
    """Flag -> the files whose string literals (not docstrings) name it."""
    found: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for flag in FLAG.findall(node.value):
                    found.setdefault(flag, set()).add(str(path.relative_to(SRC)))
    return found


def test_every_flag_a_message_names_is_an_option_of_a_command():
    options = set().union(*accepted().values())
    named = flags_in_messages(SRC.rglob("*.py"))
    unknown = {flag: sorted(files) for flag, files in named.items() if flag not in options | OTHER_PROGRAMS}
    assert unknown == {}, f"messages name flags no command takes: {unknown}"


def test_recap_run_accepts_every_flag_its_two_halves_tell_a_user_to_use():
    """What run can print: the output contract and ledger, the download summary, the caption
    run and its executors."""
    halves = [*(SRC / "spine").glob("*.py"), SRC / "downloads" / "downloader.py",
              SRC / "executors" / "run.py", SRC / "captioning" / "pipeline.py", SRC / "cli" / "common.py"]
    # Flags only about inputs or engines that run never uses (it captions its own tars with a
    # local model): --image-col and --key-col name parquet columns, --engine/--endpoint servers;
    # --json is named by the result tables of the commands that print results (cli/common.py).
    not_run = {"--image-col", "--key-col", "--engine", "--endpoint", "--json"}
    missing = sorted(set(flags_in_messages(halves)) - accepted()["run"] - not_run)
    assert missing == [], f"recap run prints these but does not take them: {missing}"
    assert {"--overwrite", "--retry-failed", "--allow-private-network"} <= accepted()["run"]
