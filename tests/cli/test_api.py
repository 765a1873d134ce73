"""The Python API takes what the CLI takes."""

import inspect

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recaption
from recaption.cli import caption_cmd
from recaption.config import caption_option_names, caption_settings

from ..conftest import image_bytes


def test_every_caption_flag_is_a_python_option():
    cli_options = set(inspect.signature(caption_cmd).parameters) - {"ctx", "inputs", "output", "verbose"}
    missing = cli_options - set(caption_option_names())
    assert not missing, f"recap caption flags the Python API does not take: {missing}"


def test_caption_with_key_col_from_python(tmp_path):
    source = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"id": ["p-1", "p-2"], "image": [image_bytes(seed=1), image_bytes(seed=2)],
                             "caption": ["a cat", "a dog"]}), source)
    summary = recaption.caption(source, tmp_path / "out", key_col="id", max_new_tokens=4)  # Paths too
    assert summary.rows == 2 and not summary.failed
    table = pq.read_table(tmp_path / "out" / "photos.parquet")
    assert table.column("key").to_pylist() == ["p-1", "p-2"]
    assert table.column("org_caption").to_pylist() == ["a cat", "a dog"]
    report = recaption.report(tmp_path / "out", report=tmp_path / "r.html")
    assert report == str(tmp_path / "r.html") and "a cat" in (tmp_path / "r.html").read_text()


def test_unknown_option_names_the_real_ones():
    with pytest.raises(TypeError, match="unknown option.*keycol.*key_col"):
        caption_settings("out", keycol="id")


@pytest.mark.parametrize("function,real", [("download", "url_col"), ("judge", "fraction"),
                                           ("train_clip", "batch_size"), ("train_captioner", "stage2_steps"),
                                           ("train_dit", "batch_size"), ("run", "url_col")])
def test_every_function_names_the_real_options_for_an_unknown_one(tmp_path, function, real):
    args = [tmp_path] if function == "judge" else [tmp_path / "in", tmp_path / "out"]
    with pytest.raises(TypeError, match=f"unknown option.*no_such_option; options: .*{real}"):
        getattr(recaption, function)(*args, no_such_option=1)
    assert not (tmp_path / "out").exists()


def test_cli_style_values_are_understood():
    s = caption_settings("out", devices="0,cuda:3", endpoint=["http://a:1,http://b:2"], engine="openai",
                         score=True, clip_model="tiny-clip", image_col="png")
    assert s.executor.devices == ["cuda:0", "cuda:3"]
    assert s.caption.server.endpoints == ["http://a:1", "http://b:2"]
    assert s.run.clip_model == "tiny-clip" and s.columns.image == "png"
    assert caption_settings("out", score=False, clip_model="x").run.clip_model is None
    with pytest.raises(ValueError, match="needs --endpoint"):
        caption_settings("out", engine="openai")


def test_main_entry_points_are_exported():
    for name in ("caption", "download", "score", "judge", "report", "stats", "train_clip", "eval_retrieval"):
        function = getattr(recaption, name)
        assert callable(function) and function.__doc__, name


def test_report_dependencies_come_with_a_plain_install():
    """`pip install recaption` then `recap report` must not stop at ModuleNotFoundError."""
    from importlib.metadata import requires

    plain = [r.split(";")[0] for r in requires("recaption") if "extra ==" not in r]
    assert any(r.startswith("matplotlib") for r in plain) and any(r.startswith("jinja2") for r in plain)


def test_scoring_in_the_caption_pass_records_which_clip_made_the_scores(tmp_path):
    import json

    from recaption.schema import SCORES_METADATA_KEY

    from ..conftest import write_shards

    write_shards(tmp_path / "in", 1, 2)
    recaption.caption(str(tmp_path / "in"), str(tmp_path / "out"), max_new_tokens=4, score=True,
                      clip_model="tiny-clip-random")
    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    stamp = json.loads(table.schema.metadata[SCORES_METADATA_KEY])
    assert stamp["clip_model"] == "tiny-clip-random" and stamp["scored_at"]
    assert all(s is not None for s in table.column("re_clip_score").to_pylist())
    assert recaption.stats(str(tmp_path / "out"))["models"]


def test_credentials_in_an_input_url_are_never_printed(tmp_path):
    import socket

    from typer.testing import CliRunner

    from recaption.cli import app

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://reader:s3cret-pass@127.0.0.1:{port}/shards/00000.tar"
    result = CliRunner().invoke(app, ["caption", url, "-o", str(tmp_path / "out")])
    assert result.exit_code in (1, 2), result.output
    assert "s3cret-pass" not in result.output and "***@127.0.0.1" in result.output
    assert "Traceback" not in result.output


def test_a_failed_shard_is_said_from_python_too(tmp_path, caplog):
    source = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"image": [image_bytes()]}), source)
    with caplog.at_level("WARNING", logger="recaption"):
        summary = recaption.caption(source, tmp_path / "out", key_col="id")
    assert list(summary.errors) == ["photos"]
    assert f"FAILED photos: {summary.errors['photos']}" in caplog.text and "'id'" in caplog.text


def test_a_shard_with_nothing_captioned_says_so(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    source = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"image": [b"not an image", b""]}), source)
    result = CliRunner().invoke(app, ["caption", str(source), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "broken: none of its 2 rows could be captioned (decode_error 1, empty_image 1)" in flat
    assert "--overwrite" in flat


def test_score_reads_the_input_as_caption_did(tmp_path):
    """`recap caption --key-col id`, then `recap score`: rows are matched to images by the same keys."""
    from typer.testing import CliRunner

    from recaption.cli import app

    source = tmp_path / "photos.parquet"
    pixels = [image_bytes(seed=1), image_bytes(seed=2)]
    pq.write_table(pa.table({"id": ["p-1", "p-2"], "pixels": pixels}), source)
    runner = CliRunner()
    assert runner.invoke(app, ["caption", str(source), "-o", str(tmp_path / "out"), "--key-col", "id",
                               "--image-col", "pixels", "--max-new-tokens", "4"]).exit_code == 0
    result = runner.invoke(app, ["score", str(tmp_path / "out"), "--clip-model", "tiny-clip-random"])
    assert result.exit_code == 0, result.output
    scores = pq.read_table(tmp_path / "out" / "photos.parquet").column("re_clip_score").to_pylist()
    assert all(s is not None for s in scores), scores
    # From Python, under the flag's name (--clip-long-text): rescored, the choice recorded
    summary = recaption.score(tmp_path / "out", clip_model="tiny-clip-random", clip_long_text="chunk")
    assert summary.done == ["photos"] and summary.settings["clip_long_text"] == "chunk"


def test_the_api_functions_stay_functions_after_their_packages_load():
    """A subpackage named like an API function would replace it on first import."""
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(recaption.__path__, "recaption."):
        if module.name.count(".") == 1:
            importlib.import_module(module.name)
    for name in ("caption", "download", "score", "judge", "stats", "report", "filter_output", "export",
                 "train_clip", "eval_retrieval"):
        function = getattr(recaption, name)
        assert callable(function) and not isinstance(function, type(recaption)), name


def test_every_command_has_its_python_function():
    """The list comes from the CLI itself: a command added without its function fails here."""
    from recaption.cli import COMMANDS

    # Where the command's name is a package or module of recaption (recaption.models, .shapes,
    # .demo), its function has another name: an attribute and a submodule cannot share one.
    python_name = {name: name.replace("-", "_") for name in COMMANDS} | {
        "models": "model_families", "shapes": "make_shapes", "demo": "run_demo"}
    missing = [name for name in COMMANDS if not callable(getattr(recaption, python_name[name], None))]
    assert missing == [], f"commands without a recaption.<name> function: {missing}"
    for name in COMMANDS:
        function = getattr(recaption, python_name[name])
        assert f"recap {name}" in inspect.getdoc(function), f"{name}: its docstring names the command"
        assert function.__module__ == "recaption.api"


def test_report_writes_to_the_same_place_from_python_and_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    from ..quality.test_selection import row, write_output

    out = tmp_path / "out"
    write_output(out, "00000", [row("a"), row("b")])
    assert recaption.report(out) == str(out / "report.html")
    (out / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").exists()
    assert f"wrote {out / 'report.html'}" in result.output.replace("\n", "")


def test_run_from_python_downloads_then_captions(tmp_path):
    from ..image_server import ImageServer

    with ImageServer() as server:
        urls = [f"{server.url}/img/{i}.jpg" for i in range(3)]
        pq.write_table(pa.table({"url": urls, "text": ["a", "b", "c"]}), tmp_path / "urls.parquet")
        fetched, captioned = recaption.run(tmp_path / "urls.parquet", tmp_path / "run", image_size=32,
                                           allow_private_network=True, max_new_tokens=4)
    assert fetched.status_counts == {"ok": 3} and captioned.status_counts == {"ok": 3}
    with pytest.raises(TypeError, match="unknown option"):
        recaption.run(tmp_path / "urls.parquet", tmp_path / "run2", no_such_option=1)
