"""train-clip / train-dit --mix: any caption columns, drawn per sample through CaptionMix."""

from __future__ import annotations

import json
import random

import pytest

from recaption.dit.data import pick_mixed_caption
from recaption.training.captions import CaptionMix

from .test_training import one_error_line, recap

SMALL = ["--steps", "3", "--batch-size", "16", "--width", "32", "--warmup", "1", "--device", "cpu",
         "--workers", "0"]


@pytest.fixture(scope="module")
def captioned(tmp_path_factory, captioner):
    """Shapes shards captioned by the tiny model with a second pass, `short`."""
    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import CaptionConfig, RunConfig
    from recaption.readers import discover_shards
    from recaption.shapes import write_shapes_shards

    root = tmp_path_factory.mktemp("mixed")
    shards = write_shapes_shards(root / "in", 32, seed=0, shard_size=16)
    short = "short=Describe the image in one sentence."
    config = CaptionConfig(model="tiny", max_new_tokens=8, passes=[short])
    CaptionPipeline(config, RunConfig(output=str(root / "out")), captioner).run(
        discover_shards([str(p) for p in shards]))
    return root


def test_train_clip_mixes_pass_columns_of_caption_output(captioned, tmp_path):
    spec = "mix:re_caption=0.5,re_caption_short=0.3,org_caption=0.2"
    result = recap("train-clip", captioned / "out", "-o", tmp_path / "clip", "--mix", spec, *SMALL)
    assert result.exit_code == 0, result.output
    used = json.loads((tmp_path / "clip" / "train_summary.json").read_text())["captions_trained_on"]
    assert set(used) <= {"re_caption", "re_caption_short", "org_caption"} and sum(used.values()) == 48, used
    assert used.get("re_caption_short"), used

    # A column the data does not have, or probabilities that do not sum to 1: one line, no training.
    missing = recap("train-clip", captioned / "out", "-o", tmp_path / "c2", "--mix",
                    "re_caption=0.5,re_caption_dense=0.5", *SMALL)
    one_error_line(missing, "offers no re_caption_dense")
    bad = recap("train-clip", captioned / "out", "-o", tmp_path / "c3", "--mix", "re_caption=0.5", *SMALL)
    assert bad.exit_code == 2 and "sum to 0.5, not 1" in bad.output
    assert not (tmp_path / "c2" / "train_summary.json").exists()


def test_train_clip_mixes_json_fields_of_plain_shards_and_export_columns(captioned, tmp_path):
    import recaption

    result = recap("train-clip", captioned / "in", "-o", tmp_path / "plain", "--mix",
                   "org_caption=0.5,description=0.5", *SMALL)
    assert result.exit_code == 0, result.output
    used = json.loads((tmp_path / "plain" / "train_summary.json").read_text())["captions_trained_on"]
    assert set(used) == {"org_caption", "description"}, used

    recaption.export(captioned / "out", tmp_path / "wds", caption="re_caption")
    result = recap("train-clip", tmp_path / "wds", "-o", tmp_path / "exp", "--mix",
                   "re_caption_short=0.5,org_caption=0.5", *SMALL)
    assert result.exit_code == 0, result.output
    used = json.loads((tmp_path / "exp" / "train_summary.json").read_text())["captions_trained_on"]
    assert set(used) == {"re_caption_short", "org_caption"}, used


def test_dit_mixed_draws_name_their_column_and_keep_dropout():
    mix = CaptionMix.parse("re_caption_short=0.5,org_caption=0.5")
    rng = random.Random(0)
    more = {"re_caption_short": "short"}
    kinds = [pick_mixed_caption(mix, "alt", None, more, 0.1, rng)[1] for _ in range(400)]
    assert set(kinds) == {"re_caption_short", "org_caption", "dropped"}
    assert pick_mixed_caption(mix, None, None, {}, 0.0, rng) == ("", "no caption")
