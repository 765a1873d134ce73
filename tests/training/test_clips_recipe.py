"""The CLIPS recipe: partial recaptions (one sentence, block-masked) and two contrastive losses."""

from __future__ import annotations

import random

import pytest
import torch

from recaption.training.clip_train import ClipTrainConfig, train_clip
from recaption.training.clips_recipe import clips_loss, clips_texts, contrastive_loss, partial_recaption

RECAPTION = ("A large red square in the top left corner. A small blue circle in the middle of the picture "
             "next to a green triangle that is drawn quite large. A tiny orange diamond.")


def test_a_partial_recaption_is_a_block_of_one_of_its_sentences():
    rng = random.Random(0)
    sentences = [s.split() for s in ("A large red square in the top left corner.",
                                     "A small blue circle in the middle of the picture next to a green "
                                     "triangle that is drawn quite large.", "A tiny orange diamond.")]
    seen = set()
    for _ in range(200):
        words = partial_recaption(RECAPTION, rng, block_words=6).split()
        assert len(words) <= 6
        # consecutive words of exactly one sentence
        assert any(words == s[i : i + len(words)] for s in sentences for i in range(len(s))), words
        seen.add(" ".join(words))
    assert len(seen) > 5  # drawn anew each time
    assert partial_recaption("Short one.", rng, block_words=6) == "Short one."


def test_clips_texts_fall_back_so_no_sample_is_dropped():
    originals, partials = clips_texts(["alt a", None, "alt c"], [RECAPTION, "Only this.", None],
                                      random.Random(0), block_words=32)
    assert originals == ["alt a", "Only this.", "alt c"]
    assert partials[1] == "Only this." and partials[2] == "alt c"


def test_the_clips_loss_is_the_sum_of_both_contrastive_losses():
    torch.manual_seed(0)
    logits = torch.randn(4, 8)
    expected = contrastive_loss(logits[:, :4]) + contrastive_loss(logits[:, 4:])
    assert torch.allclose(clips_loss(logits), expected)
    perfect = torch.cat([10 * torch.eye(4), 10 * torch.eye(4)], dim=1)
    assert clips_loss(perfect) < clips_loss(torch.zeros(4, 8))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from recaption.shapes import write_shapes_shards

    root = tmp_path_factory.mktemp("shapes")
    write_shapes_shards(root / "train", 96, seed=0, shard_size=48)
    return root


@pytest.mark.slow
def test_train_clip_with_the_clips_recipe_lowers_its_loss(shapes, tmp_path):
    config = ClipTrainConfig(data=[str(shapes / "train")], output=str(tmp_path / "clips"),
                             recaption_field="description", steps=20, batch_size=32, width=32,
                             save_every=100, warmup=2, lr=1e-3, device="cpu", recipe="clips", workers=1)
    losses = train_clip(config)["losses"]
    assert len(losses) == 20 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3
    # two losses, each about log(32) or more at the start
    assert losses[0] > 2 * torch.log(torch.tensor(32.0)).item() * 0.9


def test_the_clips_recipe_refuses_concat():
    with pytest.raises(ValueError, match="--recipe clips"):
        ClipTrainConfig(data=["x"], output="y", recipe="clips", concat=True)
    with pytest.raises(ValueError, match="recap or clips"):
        ClipTrainConfig(data=["x"], output="y", recipe="nope")
