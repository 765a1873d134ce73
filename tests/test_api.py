"""The Python API takes what the CLI takes."""

import inspect

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recaption
from recaption.cli import caption_cmd
from recaption.config import caption_option_names, caption_settings

from .conftest import image_bytes


def test_every_caption_flag_is_a_python_option():
    cli_options = set(inspect.signature(caption_cmd).parameters) - {"inputs", "output", "verbose"}
    missing = cli_options - set(caption_option_names())
    assert not missing, f"recap caption flags the Python API does not take: {missing}"


def test_caption_with_key_col_from_python(tmp_path):
    source = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"id": ["p-1", "p-2"], "image": [image_bytes(seed=1), image_bytes(seed=2)],
                             "caption": ["a cat", "a dog"]}), source)
    summary = recaption.caption(str(source), str(tmp_path / "out"), key_col="id", max_new_tokens=4)
    assert summary.rows == 2 and not summary.failed
    table = pq.read_table(tmp_path / "out" / "photos.parquet")
    assert table.column("key").to_pylist() == ["p-1", "p-2"]
    assert table.column("org_caption").to_pylist() == ["a cat", "a dog"]


def test_unknown_option_names_the_real_ones():
    with pytest.raises(TypeError, match="unknown option.*keycol.*key_col"):
        caption_settings("out", keycol="id")


def test_cli_style_values_are_understood():
    s = caption_settings("out", devices="0,cuda:3", endpoint=["http://a:1,http://b:2"], engine="openai",
                         score=True, clip_model="tiny-clip", image_col="png")
    assert s.executor.devices == ["cuda:0", "cuda:3"]
    assert s.caption.endpoints == ["http://a:1", "http://b:2"]
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

    from .conftest import write_shards

    write_shards(tmp_path / "in", 1, 2)
    recaption.caption(str(tmp_path / "in"), str(tmp_path / "out"), max_new_tokens=4, score=True,
                      clip_model="tiny-clip-random")
    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    stamp = json.loads(table.schema.metadata[SCORES_METADATA_KEY])
    assert stamp["clip_model"] == "tiny-clip-random" and stamp["scored_at"]
    assert all(s is not None for s in table.column("re_clip_score").to_pylist())
    assert recaption.stats(str(tmp_path / "out"))["models"]
