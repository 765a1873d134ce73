"""Caption passes: several prompts per image, each into its own columns, one decode per image."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recaption.captioning.batching as batching
from recaption.captioning.pipeline import DONE, CaptionPipeline
from recaption.config import CaptionConfig, RunConfig, caption_settings
from recaption.passes import PassError, named_pass, parse_pass, read_passes_file
from recaption.readers import discover_shards
from recaption.schema import output_schema
from recaption.spine.results import ConfigMismatchError

from ..conftest import write_shards

SHORT = "Describe the image in one short sentence."
COLOURS = "List the colours you see in the image."


def caption(inputs, out, captioner, **options):
    config = CaptionConfig(model="tiny", max_new_tokens=24, **options)
    pipeline = CaptionPipeline(config, RunConfig(output=str(out)), captioner)
    return pipeline.run(discover_shards([str(i) for i in inputs]))


def column(out, name, col):
    return pq.read_table(out / f"{name}.parquet").column(col).to_pylist()


def test_named_and_conditional_passes_equal_single_pass_runs_one_decode(tmp_path, captioner, monkeypatch):
    shards = write_shards(tmp_path / "in", 1, 6)
    decodes = []
    real_decode = batching.decode_sample
    monkeypatch.setattr(batching, "decode_sample", lambda s, *a: decodes.append(s.key) or real_decode(s, *a))
    summary = caption(shards, tmp_path / "multi", captioner,
                      passes=[f"short={SHORT}", f"colours={COLOURS}"], conditional=True)
    assert [r.outcome for r in summary.results] == [DONE]
    assert sorted(decodes) == sorted(set(decodes)) and len(decodes) == 6  # one decode per image, four passes

    table = pq.read_table(tmp_path / "multi" / "00000.parquet")
    for col in ("re_caption", "re_caption_short", "re_caption_colours", "re_caption_condition_diverse_topk"):
        assert all(isinstance(v, str) for v in table.column(col).to_pylist()), col
    for name in ("short", "colours"):
        texts = table.column(f"re_caption_{name}").to_pylist()
        assert table.column(f"re_caption_{name}_length").to_pylist() == [len(t.split()) for t in texts]
        assert table.column(f"re_caption_{name}_degenerate").type == pa.bool_()
    stats = json.loads((tmp_path / "multi" / "00000_stats.json").read_text())
    flags = {"re_truncated", "re_caption_short_degenerate", "re_caption_colours_truncated"}
    assert flags <= set(stats["flag_rates"])

    # Each pass's column equals a run with that pass's prompt alone (greedy).
    caption(shards, tmp_path / "short", captioner, prompt=SHORT)
    caption(shards, tmp_path / "colours", captioner, prompt=COLOURS)
    caption(shards, tmp_path / "paper", captioner, conditional=True)
    multi = tmp_path / "multi"
    assert column(multi, "00000", "re_caption_short") == column(tmp_path / "short", "00000", "re_caption")
    assert column(multi, "00000", "re_caption_colours") == column(tmp_path / "colours", "00000", "re_caption")
    for col in ("re_caption", "re_caption_condition_diverse_topk"):
        assert column(multi, "00000", col) == column(tmp_path / "paper", "00000", col)
    # Different prompts do give different captions (else the test above proves nothing).
    paper = column(tmp_path / "paper", "00000", "re_caption")
    assert column(tmp_path / "short", "00000", "re_caption") != paper


def test_default_output_keeps_the_published_schema(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 1, 3)
    caption(shards, tmp_path / "out", captioner)
    schema = pq.read_schema(tmp_path / "out" / "00000.parquet").remove_metadata()
    # The Recap-DataComp-1B card's columns, in its order, then ours: the default run adds no column.
    assert schema.names == [
        "url", "re_caption", "org_caption", "sha256", "key", "re_clip_score", "org_clip_score", "re_length",
        "org_length", "re_gpt4v_score", "org_gpt4v_score", "re_truncated", "re_repetition", "re_boilerplate",
        "re_degenerate", "re_clip_truncated", "org_clip_truncated", "re_judge_status", "org_judge_status",
        "status", "error",
    ]
    assert schema == output_schema()
    marker = json.loads((tmp_path / "out" / "00000.done").read_text())
    assert marker["engine"] == "transformers" and marker["dtype"] == "auto" and "passes" not in marker


def test_resume_refuses_other_passes_and_keeps_same(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 1, 2)
    caption(shards, tmp_path / "out", captioner, passes=[f"short={SHORT}"])
    again = caption(shards, tmp_path / "out", captioner, passes=[f"short={SHORT}"])
    assert [r.outcome for r in again.results] == ["skipped"]
    with pytest.raises(ConfigMismatchError, match="passes"):
        caption(shards, tmp_path / "out", captioner, passes=[f"short={COLOURS}"])


def test_pass_specs_and_files(tmp_path):
    assert parse_pass("short=One sentence, please = thanks").prompt == "One sentence, please = thanks"
    for bad in ("no-equals-sign", "Bad Name=x", "default=x", "short=", "condition_diverse_topk=x"):
        with pytest.raises(PassError):
            parse_pass(bad)
    path = tmp_path / "passes.yaml"
    path.write_text("- name: short\n  prompt: One sentence.\n  max_new_tokens: 20\n"
                    "- {name: tags, prompt: 'Tags for {caption}', top_k: 5}\n")
    short, tags = read_passes_file(path)
    assert (short.column, short.max_new_tokens, tags.conditional, tags.top_k) == (
        "re_caption_short", 20, True, 5)
    assert tags.instruction("  a dog ") == "Tags for a dog"
    path.write_text("- name: short\n  promt: typo\n")
    with pytest.raises(PassError, match="promt"):
        read_passes_file(path)
    with pytest.raises(PassError, match="two passes write re_caption_short"):
        CaptionConfig(passes=[named_pass("short", "a"), "short=b"])
    with pytest.raises(PassError, match="no such file"):
        caption_settings(str(tmp_path / "o"), passes="x=Describe.", passes_file=str(path.with_name("none")))
    settings = caption_settings(str(tmp_path / "o"), passes="x=Describe.")
    assert [p.name for p in settings.caption.caption_passes] == ["default", "x"]


def test_passes_share_pixel_values_and_match_the_processor(captioner):
    from PIL import Image

    preparer = captioner.preparer
    images = [Image.new("RGB", (40 + 7 * i, 30), (30 * i, 90, 200)) for i in range(3)]
    alt = ["a red car", "", "two dogs playing in the long grass"]  # different lengths: padded
    plain = [preparer.plain_prompt] * 3
    from recaption.models.registry import CONDITIONAL_PROMPT
    from recaption.passes import conditional_pass

    conditional = [preparer.render(conditional_pass(CONDITIONAL_PROMPT).instruction(a)) for a in alt]
    fast_plain, fast_conditional = preparer.prepare_passes(images, [plain, conditional])
    assert fast_plain["pixel_values"] is fast_conditional["pixel_values"]  # preprocessed once
    for fast, prompts in ((fast_plain, plain), (fast_conditional, conditional)):
        reference = preparer.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        assert fast["input_ids"].tolist() == reference["input_ids"].tolist()
        assert fast["attention_mask"].tolist() == reference["attention_mask"].tolist()
        assert (fast["pixel_values"] - reference["pixel_values"]).abs().max() < 1e-4


def test_output_from_before_engine_and_dtype_were_recorded_still_resumes(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 1, 2)
    caption(shards, tmp_path / "out", captioner)
    marker_path = tmp_path / "out" / "00000.done"
    marker = json.loads(marker_path.read_text())
    later = ("engine", "dtype", "max_pixels", "max_side")
    marker_path.write_text(json.dumps({k: v for k, v in marker.items() if k not in later}))
    assert [r.outcome for r in caption(shards, tmp_path / "out", captioner).results] == ["skipped"]
    with pytest.raises(ConfigMismatchError, match="dtype"):
        caption(shards, tmp_path / "out", captioner, dtype="bfloat16")


def test_shard_stats_time_each_stage_and_the_summary_says_what_bound_the_run(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 1, 4)
    summary = caption(shards, tmp_path / "out", captioner)
    stages = json.loads((tmp_path / "out" / "00000_stats.json").read_text())["stage_seconds"]
    assert set(stages) == {"loader_wait", "prepare", "generate", "write"} and stages["generate"] > 0
    assert summary.results[0].stage_seconds["generate"] > 0
    assert summary.bound_by().startswith("bound by ")
    from recaption.spine.results import RunSummary, ShardResult

    slow_loader = RunSummary([ShardResult("a", "a", "done", stage_seconds={"loader_wait": 3, "generate": 1})])
    assert slow_loader.bound_by().startswith("bound by the loader") and "75%" in slow_loader.bound_by()
    assert RunSummary().bound_by() is None
    nothing_reached_the_model = ShardResult("a", "a", "done", stage_seconds={"loader_wait": 3, "write": 1})
    assert RunSummary([nothing_reached_the_model]).bound_by() is None  # no advice to add --workers


def test_image_limits_are_settings_of_the_output(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 1, 2)
    config = CaptionConfig(model="tiny", max_new_tokens=24)
    CaptionPipeline(config, RunConfig(output=str(tmp_path / "out")), captioner).run(discover_shards(shards))
    smaller = RunConfig(output=str(tmp_path / "out"), max_side=64)
    with pytest.raises(ConfigMismatchError, match="max_side"):
        CaptionPipeline(config, smaller, captioner).run(discover_shards(shards))


def test_cli_passes_filter_and_export(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    runner = CliRunner()
    shards = write_shards(tmp_path / "in", 1, 4)
    passes = "- {name: tags, prompt: 'Tags for: {caption}', max_new_tokens: 8}\n"
    (tmp_path / "passes.yaml").write_text(passes)
    result = runner.invoke(app, ["caption", *shards, "-o", str(tmp_path / "out"), "--max-new-tokens", "12",
                                 "--pass", f"short={SHORT}", "--passes", str(tmp_path / "passes.yaml")])
    assert result.exit_code == 0, result.output
    assert "bound by" in result.output
    names = pq.read_schema(tmp_path / "out" / "00000.parquet").names
    assert {"re_caption_short", "re_caption_tags_length", "re_caption_tags_truncated"} <= set(names)
    bad = runner.invoke(app, ["caption", *shards, "-o", str(tmp_path / "o2"), "--pass", "Short Name=x"])
    assert bad.exit_code == 2 and bad.output.count("error:") == 1 and "pass name" in bad.output
    kept = runner.invoke(app, ["filter", str(tmp_path / "out"), "--where", "re_caption_tags_length <= 8",
                               "-o", str(tmp_path / "kept")])
    assert kept.exit_code == 0 and "kept 4 of 4 rows" in kept.output, kept.output
    exported = runner.invoke(app, ["export", str(tmp_path / "kept"), "-o", str(tmp_path / "wds"),
                                   "--caption", "re_caption_short"])
    assert exported.exit_code == 0, exported.output
    from recaption.readers import open_shard

    texts = [s.org_caption for s in open_shard(str(tmp_path / "wds" / "00000.tar"))]
    assert texts == column(tmp_path / "out", "00000", "re_caption_short")
