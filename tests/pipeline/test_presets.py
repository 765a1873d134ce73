"""Caption presets shipped with the package: each loads, is listed, and runs offline."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import recaption
from recaption.captioning.pipeline import DONE, CaptionPipeline
from recaption.cli import app
from recaption.config import CaptionConfig, RunConfig, caption_settings
from recaption.models.registry import PAPER_PROMPT
from recaption.presets import PresetError, load_preset, preset_names
from recaption.readers import discover_shards

from ..conftest import write_shards

runner = CliRunner()


def test_the_presets_the_issue_names_are_shipped_and_listed():
    assert set(preset_names()) == {"paper", "paper-v2", "short", "dense", "fused"}
    listed = {p["name"]: p for p in recaption.caption_presets()}
    assert listed["fused"]["columns"] == ["re_caption", "re_caption_fused"]
    assert listed["paper-v2"]["columns"] == ["re_caption", "re_caption_condition_diverse_topk"]
    assert all(p["source"] and p["description"] for p in listed.values())
    result = runner.invoke(app, ["models"], terminal_width=400)
    assert result.exit_code == 0 and "caption presets" in result.output and "paper-v2" in result.output


def test_paper_is_the_default_and_v2_samples_conditioned_on_the_alt_text():
    paper = CaptionConfig(preset="paper")
    assert paper.provenance() == CaptionConfig().provenance()
    v2 = CaptionConfig(preset="paper-v2")
    assert v2.conditional and v2.top_k == 50 and v2.caption_passes[-1].conditional
    fused = CaptionConfig(preset="fused", passes=["extra=Describe."])
    assert [p.name for p in fused.caption_passes] == ["default", "fused", "extra"]
    assert fused.caption_passes[1].model == "tiny-text" and fused.caption_passes[1].reads == ("re_caption",)
    assert load_preset("dense").passes[0].prompt.startswith("Describe this image in detail")


def test_an_unknown_preset_is_one_line_naming_the_shipped_ones(tmp_path):
    with pytest.raises(PresetError, match="choose one of dense, fused, paper, paper-v2, short"):
        caption_settings(str(tmp_path / "o"), preset="v3")
    write_shards(tmp_path / "in", 1, 1)
    args = ["caption", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--preset", "v3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "error: --preset v3: no such preset" in result.output


@pytest.mark.parametrize("name", ["paper-v2", "short", "dense", "fused"])
def test_each_preset_runs_offline(tmp_path, captioner, name):
    shards = write_shards(tmp_path / "in", 1, 2)
    config = CaptionConfig(model="tiny", max_new_tokens=16, preset=name)
    summary = CaptionPipeline(config, RunConfig(output=str(tmp_path / "out")), captioner).run(
        discover_shards(shards))
    assert [r.outcome for r in summary.results] == [DONE]
    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    for column in next(p for p in recaption.caption_presets() if p["name"] == name)["columns"]:
        assert all(isinstance(v, str) for v in table.column(column).to_pylist()), column
    marker = json.loads((tmp_path / "out" / "00000.done").read_text())
    assert marker["prompt"] == PAPER_PROMPT and "preset" not in marker  # what the preset made is recorded


@pytest.mark.slow
def test_the_demo_runs_the_fused_chain_offline(tmp_path):
    result = runner.invoke(app, ["demo", "-o", str(tmp_path / "demo"), "--preset", "fused", "--rows", "2"],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "demo" / "captions" / "00000.parquet").to_pylist()
    ok = [r for r in table if r["status"] == "ok"]
    assert len(ok) == 8 and all(r["re_caption"] and r["re_caption_fused"] for r in ok)
    assert "tiny-text is the built-in text LLM" in " ".join(result.output.split())
