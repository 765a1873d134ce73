"""One command-line convention over every command: usage names what each positional is (no
braces), every option has help, machine output behind --json, and an interrupted run says what it
kept and that a rerun resumes."""

from __future__ import annotations

import re

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from recaption.cli import COMMANDS, app


def _commands():
    return typer.main.get_command(app).commands


def test_usage_names_positionals_in_capitals_and_every_option_has_help():
    runner = CliRunner()
    for name, command in _commands().items():
        usage = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output
        line = next(line for line in usage.splitlines() if "Usage:" in line)
        assert "{" not in line and "}" not in line, (name, line)
        shown = re.findall(r"\[OPTIONS\]\s+(.*)$", line.strip())
        for word in (shown[0].split() if shown else []):
            assert word.rstrip(".").isupper(), (name, line)
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert (param.help or "").strip(), f"recap {name} {param.opts[0]} has no help text"


def test_commands_that_print_results_offer_json():
    for name in ("stats", "eval-retrieval", "eval-captioner", "eval-t2i", "generate"):
        options = {o for p in _commands()[name].params for o in p.opts}
        assert "--json" in options, name


def test_an_interrupted_command_says_what_it_kept_and_that_a_rerun_resumes(monkeypatch, tmp_path):
    import recaption.steps.filter as filtering

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("stopped by signal 15")

    monkeypatch.setattr(filtering, "filter_output", interrupted)
    result = CliRunner().invoke(app, ["filter", str(tmp_path), "--where", "true", "-o", str(tmp_path / "k")])
    assert result.exit_code == 130
    said = " ".join(result.output.split())
    assert "stopped (stopped by signal 15)" in said and "rerun the same command to resume" in said
    assert "Traceback" not in result.output and set(COMMANDS) == set(_commands())


def test_warnings_are_one_formatted_line_and_third_party_chatter_is_quiet(tmp_path):
    import logging

    from recaption.cli.common import configure_logging

    configure_logging(verbose=False)
    handler = logging.getLogger().handlers[-1]
    record = logging.LogRecord("recaption.readers", logging.WARNING, __file__, 1, "a folder note", None, None)
    assert handler.format(record) == "warning: a folder note"
    assert logging.getLogger("transformers").getEffectiveLevel() == logging.ERROR
    configure_logging(verbose=True)
    assert logging.getLogger("transformers").getEffectiveLevel() == logging.INFO
    configure_logging(verbose=False)


def test_pillows_notes_on_a_files_metadata_are_quiet_unless_verbose():
    import io
    import struct
    import warnings

    from PIL import Image

    from recaption.cli.common import configure_logging
    from recaption.downloads import DownloadConfig
    from recaption.downloads.process import process_image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    # an EXIF block whose Orientation tag has two values: Pillow warns "tag 274 had too many entries"
    exif = (b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00"  # one IFD entry:
            b"\x12\x01\x03\x00\x02\x00\x00\x00\x06\x00\x06\x00\x00\x00\x00\x00")  # 274, SHORT, count 2
    data = buf.getvalue()[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + buf.getvalue()[2:]
    said = {}
    for verbose in (False, True):
        with warnings.catch_warnings(record=True) as seen:
            configure_logging(verbose=verbose)
            stored = process_image(data, None, DownloadConfig(output="unused", image_size=32))
        said[verbose] = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
        assert stored.width * stored.height > 0
    assert said[False] == [] and any("274" in message for message in said[True])
    configure_logging(verbose=False)


def test_sigterm_exits_143_and_ctrl_c_130(monkeypatch, tmp_path):
    import recaption.steps.filter as filtering

    def terminated(*args, **kwargs):
        interrupt = KeyboardInterrupt("stopped by signal 15")
        interrupt.signum = 15  # as cli._stop_on_sigterm raises it
        raise interrupt

    monkeypatch.setattr(filtering, "filter_output", terminated)
    result = CliRunner().invoke(app, ["filter", str(tmp_path), "--where", "true", "-o", str(tmp_path / "k")])
    assert result.exit_code == 143 and "rerun the same command to resume" in " ".join(result.output.split())


@pytest.mark.parametrize("columns", ["80", "200"])
def test_help_shows_every_option_name_whole_in_any_terminal(columns):
    runner = CliRunner()
    for name, command in _commands().items():
        shown = runner.invoke(app, [name, "--help"], env={"COLUMNS": columns}).output
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("--"):
                    whole = re.search(rf"{re.escape(opt)}(?![\w-])", shown)
                    assert whole, f"recap {name} --help at {columns} columns: {opt}"


@given(st.text())
def test_data_text_reaches_the_terminal_without_control_characters(text):
    from rich.text import Text

    from recaption.cli.common import printable

    shown = Text.from_markup(printable(text)).plain  # what rich prints after markup
    assert not any(ord(c) < 32 and c not in "\t\n" or 0x7F <= ord(c) <= 0x9F for c in shown)
    if not any(ord(c) < 32 and c not in "\t\n" or 0x7F <= ord(c) <= 0x9F for c in text):
        assert shown == text  # text without control characters is shown as it is, markup included


def test_a_result_holding_an_escape_sequence_prints_it_as_text(capsys):
    from recaption.cli.common import print_result

    print_result({"first": "x \x1b]0;PWNED\x07 [bold]y[/bold]"}, False, "t")
    out = capsys.readouterr().out
    assert "\x1b]0" not in out and "\\x1b]0;PWNED\\x07" in out and "[bold]y[/bold]" in out


def test_log_lines_show_control_characters_from_data_as_text():
    import logging

    from recaption.cli.common import _Lines

    hostile = ("k\x1b]0;PWNED\x07",)
    record = logging.LogRecord("recaption", logging.WARNING, __file__, 1, "%s: bad", hostile, None)
    assert _Lines("%(message)s").format(record) == "warning: k\\x1b]0;PWNED\\x07: bad"
