"""Mistakes a new user makes, as they make them: each is one red line naming the fix and exit code
2 (never a traceback, never a shard failure), or, for one bad image, a row with a clear status."""

from __future__ import annotations

import gzip
import io
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import recaption
from recaption.cli import app
from recaption.samples.images import DEFAULT_MAX_PIXELS
from recaption.spine.errors import RecaptionError

from ..conftest import image_bytes, write_shards
from ..openai_server import LoopbackServer

UNIDENTIFIED = "cannot identify image file (not an image, or a format Pillow cannot read)"

runner = CliRunner()


def flat(output: str) -> str:
    """Text without the layout: usage errors come in a box that wraps at the terminal width."""
    return " ".join(output.replace("│", " ").split())


def one_error_line(result, *expected: str) -> str:
    """Exit code 2, one `error:` line holding every expected piece, and no traceback."""
    assert result.exit_code == 2, result.output
    text = result.output
    assert "Traceback" not in text and "File \"" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for piece in expected:
        assert piece in errors[0], text
    return errors[0]


def caption(tmp_path, *args: str, out: str = "out"):
    if not (tmp_path / "in").exists():
        write_shards(tmp_path / "in", 1, 2)
    return runner.invoke(
        app, ["caption", str(tmp_path / "in"), "-o", str(tmp_path / out), "--max-new-tokens", "4", *args]
    )


# -- 1. --model ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/no/such", "./missing", "~/no-such-model-folder/x"])
def test_model_path_that_is_not_there_is_one_line_before_any_work(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    result = caption(tmp_path, "--model", name)
    one_error_line(result, f"--model {name}: no such folder", "tiny")
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()  # refused before the output folder was even locked


def test_model_folder_without_config_says_so(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"x")
    one_error_line(caption(tmp_path, "--model", str(tmp_path / "weights")), "no config.json")
    (tmp_path / "a-file").write_text("x")
    one_error_line(caption(tmp_path, "--model", str(tmp_path / "a-file")), "is a file, not a model folder")


def test_hub_id_not_cached_while_offline_names_the_local_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_error_line(
        caption(tmp_path, "--model", "no-such-owner/no-such-model"),
        "--model no-such-owner/no-such-model",
        "HF_HUB_OFFLINE",
        "tiny (built in",
        "local model folder",
    )
    assert "huggingface.co" not in line  # not transformers' "We couldn't connect to ..."
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        recaption.caption(str(tmp_path / "in"), str(tmp_path / "api"), model="no-such-owner/no-such-model")


@pytest.fixture
def model_without_weights(tmp_path):
    """A real model folder (the built-in captioner's config, tokenizer...) with its weights gone."""
    from recaption.models.loading import resolve_model

    folder = tmp_path / "no-weights"
    shutil.copytree(resolve_model("tiny"), folder)
    for weights in folder.glob("*.safetensors*"):
        weights.unlink()
    return folder


def test_model_transformers_cannot_load_is_one_line(tmp_path, model_without_weights):
    one_error_line(
        caption(tmp_path, "--model", str(model_without_weights), "--device", "cpu"),
        f"cannot load model {model_without_weights}:",
        "model.safetensors",
    )
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    one_error_line(caption(tmp_path, "--model", str(tmp_path / "odd"), out="odd-out"), "cannot load model")


@pytest.mark.slow
def test_model_that_no_device_worker_can_load_is_one_line_not_shard_failures(tmp_path, model_without_weights):
    write_shards(tmp_path / "in", 2, 1)
    result = caption(tmp_path, "--model", str(model_without_weights), "--devices", "cpu,cpu")
    one_error_line(result, "cannot load model")
    assert "FAILED" not in result.output


def test_openai_engine_model_is_the_servers_name_and_not_checked(tmp_path):
    with LoopbackServer() as server:
        result = caption(tmp_path, "--engine", "openai", "--endpoint", server.url, "--model", "no/such-model")
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()} == {"ok"}


# -- 2. --dtype, --device --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--dtype", "float8"], ["--dtype float8", "bfloat16", "float16"]),
        (["--device", "gpu"], ["--device gpu", "cuda:N"]),
        (["--device", "cuda1"], ["--device cuda1"]),
        (["--devices", "0,gpu1"], ["gpu1 is not a device"]),
    ],
)
def test_misspelt_dtype_or_device_is_refused_without_a_traceback(tmp_path, args, expected):
    result = caption(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "AttributeError" not in result.output
    for piece in expected:
        assert piece in flat(result.output)
    assert not (tmp_path / "out").exists()


def test_dtype_short_names_are_the_engines_names():
    from recaption.config import caption_settings

    for short, long in [("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32"), ("half", "float16")]:
        assert caption_settings("out", dtype=short).caption.dtype == long
    with pytest.raises(ValueError, match="--dtype float8"):
        caption_settings("out", dtype="float8")


# -- 3. --devices that are not there --------------------------------------------------------


def test_devices_on_a_machine_without_gpus_is_one_line_before_any_worker(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    result = caption(tmp_path, "--devices", "0,1")
    one_error_line(result, "--devices cuda:0,cuda:1: torch sees no CUDA GPU")
    assert "FAILED" not in result.output and "worker" not in result.output
    assert not (tmp_path / "out").exists()
    one_error_line(caption(tmp_path, "--device", "cuda"), "--device cuda: torch sees no CUDA GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        recaption.caption(str(tmp_path / "in"), str(tmp_path / "api"), devices="0,1")


def test_devices_past_the_gpus_there_are_name_them(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    one_error_line(caption(tmp_path, "--devices", "0,1"), "only 1 GPU (cuda:0)", "cuda:1 is not there")
    one_error_line(caption(tmp_path, "--device", "cuda:2"), "--device cuda:2", "only 1 GPU")


# -- 4. recap download on files that are not what their names say ----------------------------


def download(tmp_path, path):
    return runner.invoke(app, ["download", str(path), "-o", str(tmp_path / "dl")])


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("meta.parquet", b"hello, not parquet at all", "not a readable parquet file"),
        ("tiny.parquet", b"hello", "not a readable parquet file"),
        ("latin1.csv", b"url,caption\nhttp://example.org/a.jpg,caf\xe9\n", "not UTF-8 text"),
        ("ragged.csv", b"url,caption\nhttp://e.org/a.jpg,x\nhttp://e.org/b.jpg,y,z\n", "Expected 2 columns"),
        ("latin1.jsonl", b'{"url": "http://e.org/a.jpg", "caption": "caf\xe9"}\n', "not UTF-8 text"),
        ("urls.txt", b"http://e.org/\xe9.jpg\n", "not UTF-8 text"),
        ("cut.csv.gz", gzip.compress(b"url,caption\n" + b"http://e.org/a.jpg,x\n" * 50)[:40], "truncated"),
    ],
)
def test_download_of_a_broken_metadata_file_is_one_line_naming_it(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    one_error_line(download(tmp_path, path), f"{path}: ", expected)


def test_download_ragged_csv_row_far_into_the_file_is_one_line(tmp_path):
    """The bad row is past the first block pyarrow reads, so it fails mid-run, not on the header."""
    path = tmp_path / "long.csv"
    filler = b"a long alt text " * 25
    good = b"".join(b"http://127.0.0.1:9/%d.jpg,%s\n" % (i, filler) for i in range(3000))  # 1.2 MB
    path.write_bytes(b"url,caption\n" + good + b"http://127.0.0.1:9/x.jpg,a,b\n")
    one_error_line(download(tmp_path, path), f"{path}: ", "Expected 2 columns, got 3")


# -- 5. images over the pixel limit, and decode errors -------------------------------------


def test_huge_png_is_too_large_with_our_limit_and_how_to_raise_it(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("1", (20000, 20000)).save(tmp_path / "in" / "huge.png")  # 400 Mpx, 50 kB on disk
    (tmp_path / "in" / "small.jpg").write_bytes(image_bytes(48, 32))
    (tmp_path / "in" / "junk.jpg").write_bytes(b"this is not an image")
    result = caption(tmp_path)
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in pq.read_table(next((tmp_path / "out").glob("*.parquet"))).to_pylist()}
    assert rows["huge"]["status"] == "too_large"
    assert rows["huge"]["error"] == (
        f"400000000 pixels, over the limit of {DEFAULT_MAX_PIXELS} pixels (raise it with --max-pixels)"
    )
    assert "decompression bomb" not in rows["huge"]["error"]
    assert rows["junk"]["status"] == "decode_error"
    # The same text every run: no `<_io.BytesIO object at 0x...>`.
    assert rows["junk"]["error"] == UNIDENTIFIED
    assert rows["small"]["status"] == "ok"


def status_of(folder):
    rows = pq.read_table(next(folder.glob("*.parquet"))).to_pylist()
    return [(r["status"], r["error"]) for r in rows]


def test_max_pixels_option_lowers_the_limit(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.jpg").write_bytes(image_bytes(48, 32))  # 1536 pixels
    assert caption(tmp_path, "--max-pixels", "1000").exit_code == 0
    assert status_of(tmp_path / "out") == [
        ("too_large", "48x32 = 1536 pixels, over the limit of 1000 pixels (raise it with --max-pixels)")
    ]


def test_max_pixels_option_raises_the_limit_past_pillows_own(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back afterwards
    (tmp_path / "in").mkdir()
    big = io.BytesIO()
    Image.new("L", (10000, 9000), 128).save(big, "JPEG", quality=50)  # 90 Mpx, 1 MB, decoded at 1/8
    (tmp_path / "in" / "big.jpg").write_bytes(big.getvalue())
    assert caption(tmp_path, out="default").exit_code == 0
    [(status, error)] = status_of(tmp_path / "default")
    assert status == "too_large"
    limit = f"over the limit of {DEFAULT_MAX_PIXELS} pixels (raise it with --max-pixels)"
    assert error.endswith(f"90000000 pixels, {limit}")
    assert caption(tmp_path, "--max-pixels", "100000000", out="raised").exit_code == 0
    assert status_of(tmp_path / "raised") == [("ok", None)]


def test_max_pixels_default_is_the_projects_limit(tmp_path):
    from recaption.config import caption_settings

    assert caption_settings("out").run.max_pixels == DEFAULT_MAX_PIXELS
    result = caption(tmp_path, "--max-pixels", "0")
    assert result.exit_code == 2 and "--max-pixels 0" in flat(result.output)


def test_parquet_image_column_of_junk_bytes_is_a_stable_decode_error(tmp_path):
    (tmp_path / "in").mkdir()
    table = pa.table({"key": ["a", "b"], "image": [b"junk bytes", image_bytes(40, 30)]})
    pq.write_table(table, tmp_path / "in" / "part.parquet")
    errors = []
    for out in ("one", "two"):
        assert caption(tmp_path, out=out).exit_code == 0
        errors.append(pq.read_table(tmp_path / out / "part.parquet").to_pylist()[0]["error"])
    assert errors[0] == errors[1] and "0x" not in errors[0]


# -- 6. one root for user errors -------------------------------------------------------------


class PlantedError(RecaptionError):
    """A user error that is nothing else (not a ValueError, not a RuntimeError)."""


def _raise_planted(*args, **kwargs):
    raise PlantedError("planted [bold]user error[/bold]: fix the input")


# (command line, function raising the user error deep under that command)
PLANTED = [
    (["caption", "{tmp}/in", "-o", "{tmp}/out"], "recaption.executors.run.run_caption"),
    (["download", "{tmp}/meta.csv", "-o", "{tmp}/dl"], "recaption.downloads.choose_columns"),
    (["run", "{tmp}/meta.csv", "-o", "{tmp}/run"], "recaption.downloads.choose_columns"),
    (["score", "{tmp}/out", "--clip-model", "tiny-clip"], "recaption.quality.scorers.make_scorer"),
    (["judge", "{tmp}/out", "--endpoint", "http://127.0.0.1:9", "--model", "m"],
     "recaption.quality.judge.judge_output"),
    (["report", "{tmp}/out", "-o", "{tmp}/r.html"], "recaption.quality.report.write_report"),
    (["stats", "{tmp}/out"], "recaption.quality.stats.collect"),
    (["view", "{tmp}/out", "--port", "0"], "recaption.viewer.serve.make_app"),
    (["lookup", "{tmp}/in", "x"], "recaption.readers.lookup.lookup"),
    (["shapes", "-o", "{tmp}/shapes", "--images", "1"], "recaption.shapes.write_shapes_shards"),
    (["train-clip", "{tmp}/in", "-o", "{tmp}/clip"], "recaption.training.clip_train.train_clip"),
    (["eval-captioner", "tiny"], "recaption.training.caption_eval.evaluate_captioner"),
    (["eval-retrieval", "tiny-clip", "{tmp}/in"], "recaption.training.retrieval.evaluate"),
    (["demo", "-o", "{tmp}/demo"], "recaption.demo.build_demo_shard"),
    (["convert-llava", "{tmp}/llava", "{tmp}/converted"], "recaption.models.convert_llava.convert_llava"),
    (["filter", "{tmp}/out", "--where", "true", "-o", "{tmp}/kept"], "recaption.steps.filter.filter_output"),
    (["export", "{tmp}/out", "-o", "{tmp}/wds"], "recaption.steps.export.export"),
    (["train-dit", "{tmp}/in", "-o", "{tmp}/dit"], "recaption.dit.train.train_dit"),
    (["generate", "{tmp}/dit", "a red circle", "-o", "{tmp}/gen"], "recaption.dit.generate.generate"),
    (["eval-t2i", "{tmp}/gen"], "recaption.dit.eval.eval_t2i"),
]


@pytest.mark.parametrize("args, target", PLANTED, ids=[args[0] for args, _ in PLANTED])
def test_a_user_error_anywhere_under_a_command_is_one_line_and_exit_2(tmp_path, monkeypatch, args, target):
    write_shards(tmp_path / "in", 1, 1)
    monkeypatch.setattr(target, _raise_planted)
    result = runner.invoke(app, [arg.format(tmp=tmp_path) for arg in args])
    line = one_error_line(result, "planted [bold]user error[/bold]: fix the input")  # markup shown as is
    assert line == "error: planted [bold]user error[/bold]: fix the input"


def test_every_command_is_guarded_for_user_errors():
    from recaption.cli import COMMANDS

    planted = {args[0] for args, _ in PLANTED}
    assert set(COMMANDS) - planted == {"train-captioner", "models"}  # both share the guard all have
    for info in app.registered_commands:
        assert info.callback.__wrapped__ is COMMANDS[info.name]


def test_the_library_user_errors_share_one_root():
    from recaption.models.convert_llava import ConversionError
    from recaption.models.loading import ModelError
    from recaption.quality.clip import ClipModelError
    from recaption.quality.outputs import InputChangedError, NoOutputError
    from recaption.quality.report import MissingDependencyError
    from recaption.readers import InputError
    from recaption.spine.atomic import OutputLockedError
    from recaption.spine.results import ConfigMismatchError
    from recaption.training.checkpoints import CheckpointError
    from recaption.training.inputs import TrainingInputError

    for error, other_base in [
        (InputError, ValueError), (ModelError, ValueError), (OutputLockedError, RuntimeError),
        (NoOutputError, ValueError), (InputChangedError, ValueError), (ClipModelError, ValueError),
        (MissingDependencyError, ImportError), (TrainingInputError, ValueError),
        (CheckpointError, ValueError), (ConversionError, ValueError), (ConfigMismatchError, RuntimeError),
    ]:
        assert issubclass(error, RecaptionError) and issubclass(error, other_base), error


def test_the_demo_does_not_import_the_cli():
    """Nor does any other library module, even inside a function: the CLI sits on top, no cycle."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    package = Path(recaption.__file__).parent
    for path in package.rglob("*.py"):
        if path.parent.name == "cli" and path.parent.parent == package:
            continue
        parts = path.relative_to(package.parent).with_suffix("").parts
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = list(parts[: len(parts) - node.level]) if node.level else []
                names = [".".join([*base, node.module or ""]).strip(".")]
                names += [f"{names[0]}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not any(n == "recaption.cli" or n.startswith("recaption.cli.") for n in names), path

    code = (
        "import sys, recaption.demo\n"
        "cli = sorted(m for m in sys.modules if m == 'recaption.cli' or m.startswith('recaption.cli.'))\n"
        "assert not cli, cli\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [["stats"], ["report"], ["view", "--port", "0"],
                                     ["filter", "--where", "true"], ["export"]])
def test_a_file_or_nothing_where_the_caption_folder_goes_is_one_line(tmp_path, command):
    pq.write_table(pa.table({"key": ["a"]}), tmp_path / "00000.parquet")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    rest = ["-o", str(tmp_path / "dest")] if command[0] in ("filter", "export") else []
    wrong = (("00000.parquet", "not a folder"), ("loop", "not a folder"), ("gone", "no such folder"))
    for given, what in wrong:
        result = runner.invoke(app, [command[0], str(tmp_path / given), *command[1:], *rest])
        one_error_line(result, f"{given}: {what}; give the folder `recap caption -o`")
