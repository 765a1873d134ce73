import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from recaption.cli import app

from ..conftest import write_shards

runner = CliRunner()


def flat(output: str) -> str:
    """Rich wraps long lines at the terminal width; compare text, not layout."""
    return " ".join(output.split())


def test_caption_command_reports_broken_shard_and_exits_nonzero(tmp_path):
    shards = write_shards(tmp_path / "in", 2, 2)
    data = open(shards[0], "rb").read()
    open(shards[0], "wb").write(data[:700])
    result = runner.invoke(
        app, ["caption", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--max-new-tokens", "8"]
    )
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "00000.tar" in result.output.replace("\n", "")
    assert pq.read_table(tmp_path / "out" / "00001.parquet").num_rows == 2


def test_caption_command_options_reach_the_output(tmp_path):
    write_shards(tmp_path / "in", 1, 2)
    result = runner.invoke(
        app,
        [
            "caption",
            str(tmp_path / "in" / "00000.tar"),
            "-o",
            str(tmp_path / "out"),
            "--max-new-tokens",
            "5",
            "--prompt",
            "Describe the image.",
            "--batch-size",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out" / "00000_stats.json").read_text())
    assert stats["prompt"] == "Describe the image." and stats["max_new_tokens"] == 5
    table = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert all(r["re_truncated"] is not None for r in table)
    assert all(len(r["re_caption"].split()) <= 5 for r in table)


def test_missing_input_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["caption", str(tmp_path / "missing.tar"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such file" in flat(result.output)


def test_bad_option_is_rejected(tmp_path):
    result = runner.invoke(app, ["caption", "x.tar", "-o", str(tmp_path), "--max-new-tokens", "0"])
    assert result.exit_code == 2


def test_demo_runs_offline(tmp_path):
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "demo" / "captions" / "00000.parquet").to_pylist()
    assert sum(r["status"] == "ok" for r in table) == 8
    assert [r["status"] for r in table if r["status"] != "ok"] == ["decode_error"]
    assert "output:" in result.output
    assert f"recap view {tmp_path / 'demo' / 'captions'}" in result.output.replace("\n", "")
    # The built-in captioner is trained on the shapes world: its captions name what is there.
    from recaption.demo import DEMO_SEED
    from recaption.shapes import ShapesWorld
    from recaption.training.caption_eval import CaptionScore

    score = CaptionScore()
    for row in table:
        if row["status"] == "ok":
            score.add(
                row["re_caption"], ShapesWorld(DEMO_SEED).sample(int(row["url"].rsplit("/", 1)[1])).objects
            )
    assert score.accuracy >= 0.9 and score.hallucination <= 0.05, score.summary()


def test_models_lists_the_table():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "llava-1.5" in result.output


def test_column_options_name_parquet_columns(tmp_path):
    import pyarrow as pa

    from ..conftest import image_bytes

    pq.write_table(
        pa.table({"pixels": [image_bytes()], "alt": ["an alt text"], "link": ["http://x/1.jpg"]}),
        tmp_path / "p.parquet",
    )
    result = runner.invoke(
        app,
        [
            "caption",
            str(tmp_path / "p.parquet"),
            "-o",
            str(tmp_path / "out"),
            "--max-new-tokens",
            "4",
            "--image-col",
            "pixels",
            "--caption-col",
            "alt",
            "--url-col",
            "link",
        ],
    )
    assert result.exit_code == 0, result.output
    (row,) = pq.read_table(tmp_path / "out" / "p.parquet").to_pylist()
    assert (row["org_caption"], row["url"], row["status"]) == ("an alt text", "http://x/1.jpg", "ok")


def test_caption_command_with_openai_engine_and_two_endpoints(tmp_path):
    from ..openai_server import LoopbackServer

    write_shards(tmp_path / "in", 1, 4)
    with LoopbackServer() as a, LoopbackServer() as b:
        result = runner.invoke(
            app,
            [
                "caption",
                str(tmp_path / "in"),
                "-o",
                str(tmp_path / "out"),
                "--engine",
                "openai",
                "--model",
                "served",
                "--endpoint",
                f"{a.url},{b.url}",
                "--concurrency",
                "2",
                "--max-new-tokens",
                "16",
            ],
        )
        assert result.exit_code == 0, result.output
        assert a.state.requests and b.state.requests
        assert {r["max_tokens"] for r in a.state.requests + b.state.requests} == {16}
    captions = [r["re_caption"] for r in pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()]
    assert captions[0].startswith("an image of 40 by 30 pixels") and len(set(captions)) == 4


def test_caption_command_openai_engine_needs_an_endpoint(tmp_path):
    write_shards(tmp_path / "in", 1, 1)
    result = runner.invoke(
        app, ["caption", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine", "openai"]
    )
    assert result.exit_code == 2 and "--endpoint" in flat(result.output)


def test_quality_commands_say_when_the_folder_is_not_caption_output(tmp_path):
    (tmp_path / "empty").mkdir()
    for command in (
        ["score", str(tmp_path / "empty")],
        ["stats", str(tmp_path / "empty")],
        ["report", str(tmp_path / "empty"), "-o", str(tmp_path / "r.html")],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "holds no finished shards" in flat(result.output), command
    assert not (tmp_path / "r.html").exists()
