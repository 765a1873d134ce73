"""Training and evaluation: retrieval metrics by hand, the paper's p, CLIP training and resume."""

from __future__ import annotations

import random

import pytest
import torch

from recaption.training.clip_train import ClipTrainConfig, choose_caption, train_clip
from recaption.training.data import Pair
from recaption.training.retrieval import recall_at_k


def test_recall_matches_a_hand_computation():
    # image 0: its text ranks 1st; image 1: 3rd; image 2: 2nd.
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.5, 0.1, 0.7], [0.0, 0.8, 0.6]])
    r = recall_at_k(sim, ks=(1, 2, 3))
    assert r["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert r["image_to_text_R@2"] == pytest.approx(2 / 3)
    assert r["image_to_text_R@3"] == pytest.approx(1.0)
    # text 0: images score 0.9, 0.5, 0.0 -> 1st; text 1: 0.1, 0.1, 0.8 -> 0.1 ties 0.1, 0.8 above -> 2nd;
    # text 2: 0.2, 0.7, 0.6 -> 0.6 below 0.7 -> 2nd.
    assert r["text_to_image_R@1"] == pytest.approx(1 / 3)
    assert r["text_to_image_R@2"] == pytest.approx(1.0)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.8, 1.0])
def test_p_is_the_probability_of_the_original_caption(p):
    rng = random.Random(0)
    pair = Pair("k", None, org="original words", re="a detailed recaption")
    draws = [choose_caption(pair, p, False, rng) for _ in range(5000)]
    share = draws.count("original words") / len(draws)
    assert share == pytest.approx(p, abs=0.02)
    assert choose_caption(pair, p, True, rng) == "original words a detailed recaption"
    assert choose_caption(Pair("k", None, org="only", re=None), 0.0, False, rng) == "only"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from recaption.shapes import write_shapes_shards

    root = tmp_path_factory.mktemp("shapes")
    write_shapes_shards(root / "train", 128, seed=0, shard_size=64)
    write_shapes_shards(root / "test", 64, seed=0, start=50_000, shard_size=64)
    return root


def test_clip_training_lowers_the_loss_and_resumes(shapes, tmp_path):
    config = ClipTrainConfig(
        data=[str(shapes / "train")],
        output=str(tmp_path / "clip"),
        caption_field="description",
        recaption_field="description",
        steps=24,
        batch_size=32,
        width=32,
        save_every=12,
        warmup=4,
        lr=1e-3,
        device="cpu",
    )
    result = train_clip(config)
    losses = result["losses"]
    assert len(losses) == 24 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3
    assert (tmp_path / "clip" / "checkpoint-0000012").is_dir() and (
        tmp_path / "clip" / "model.safetensors"
    ).exists()
    # Asking for more steps resumes from the newest checkpoint, not from scratch.
    config.steps = 30
    again = train_clip(config)
    assert again["steps"] == 30 and len(again["losses"]) == 6


def test_eval_retrieval_on_the_trained_model(shapes, tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    out = str(tmp_path / "clip")
    train_clip(
        ClipTrainConfig(
            data=[str(shapes / "train")],
            output=out,
            caption_field="description",
            recaption_field="description",
            steps=60,
            batch_size=64,
            width=32,
            warmup=5,
            lr=2e-3,
            device="cpu",
            save_every=1000,
        )
    )
    result = CliRunner().invoke(
        app,
        [
            "eval-retrieval",
            out,
            str(shapes / "test"),
            "--caption-field",
            "description",
            "--label-field",
            "label",
            "--json",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    metrics = json.loads(result.output[result.output.index("{") :])
    assert metrics["n"] == 64 and metrics["zero_shot_classes"] <= 24
    assert metrics["image_to_text_R@10"] > 10 / 64 * 1.5, "better than chance after a little training"


def test_captioner_training_recipe(shapes, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from recaption.training.captioner_train import CaptionerTrainConfig, fresh_llava, train_captioner

    config = CaptionerTrainConfig(
        data=[str(shapes / "train")],
        output=str(tmp_path / "cap"),
        stage1_steps=6,
        stage2_steps=30,
        batch_size=16,
        width=32,
        layers=1,
        warmup=2,
        save_every=6,
        stage2_lr=3e-3,
        device="cpu",
    )
    before, _ = fresh_llava(config)
    result = train_captioner(config)
    history = result["history"]
    assert len(history["stage1"]) == 6 and len(history["stage2"]) == 30
    assert sum(history["stage2"][-5:]) / 5 < sum(history["stage2"][:5]) / 5 - 0.5, "stage 2 learns"
    after = LlavaForConditionalGeneration.from_pretrained(tmp_path / "cap")

    def same(a, b):
        return all(
            torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        )

    assert same(before.model.vision_tower, after.model.vision_tower), "the vision tower stays frozen"
    assert not same(before.model.multi_modal_projector, after.model.multi_modal_projector)
    assert not same(before.model.language_model, after.model.language_model)
    assert (tmp_path / "cap" / "checkpoint-s1-0000006").is_dir() and (
        tmp_path / "cap" / "checkpoint-s2-0000030"
    ).is_dir()
    # More stage-2 steps resume from the newest checkpoint.
    config.stage2_steps = 36
    again = train_captioner(config)
    assert len(again["history"]["stage2"]) == 36 and again["history"]["stage2"][:30] == history["stage2"]


def test_only_the_answer_is_learned(tmp_path):
    from recaption.models.registry import LLAVA_1_5
    from recaption.training.captioner_train import (
        CaptionerTrainConfig,
        ConversationBatcher,
        Example,
        fresh_llava,
    )

    _, processor = fresh_llava(CaptionerTrainConfig(data=[], output=str(tmp_path), width=32, layers=1))
    batcher = ConversationBatcher(processor, LLAVA_1_5)
    pixels = torch.zeros(3, 64, 64)
    batch = batcher(
        [Example(pixels, None, None)] * 2,
        "Describe it.",
        ["a red circle", "a small blue square in the center"],
    )
    labels, ids = batch["labels"], batch["input_ids"]
    prompt = len(batcher.prompt_ids("Describe it."))
    assert (labels[:, :prompt] == -100).all()
    answer = processor.tokenizer("a red circle", add_special_tokens=False)["input_ids"] + [
        processor.tokenizer.eos_token_id
    ]
    assert labels[0, prompt : prompt + len(answer)].tolist() == answer
    assert (labels[0, prompt + len(answer) :] == -100).all() and (
        ids[0, prompt + len(answer) :] == processor.tokenizer.pad_token_id
    ).all()


@pytest.mark.slow
def test_train_clip_under_torchrun_with_two_processes(shapes, tmp_path):
    """Two ranks on CPU (gloo): DDP averages gradients, rank 0 writes the checkpoints and model."""
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "-m",
        "recaption.cli",
        "train-clip",
        str(shapes / "train"),
        "-o",
        str(tmp_path / "clip"),
        "--caption-field",
        "description",
        "--recaption-field",
        "description",
        "--steps",
        "6",
        "--batch-size",
        "16",
        "--width",
        "32",
        "--save-every",
        "3",
        "--device",
        "cpu",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("trained 6 steps") == 2  # both ranks ran
    assert (tmp_path / "clip" / "checkpoint-0000006").is_dir() and (
        tmp_path / "clip" / "model.safetensors"
    ).exists()
