"""Training and evaluation: retrieval metrics by hand, the paper's p, CLIP training and resume."""

from __future__ import annotations

import json
import random
import shutil

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
    share = draws.count(("original words", "original")) / len(draws)
    assert share == pytest.approx(p, abs=0.02)
    originals = draws.count(("original words", "original"))
    assert draws.count(("a detailed recaption", "recaption")) == len(draws) - originals
    assert choose_caption(pair, p, True, rng) == ("original words a detailed recaption", "both")
    assert choose_caption(Pair("k", None, org="only", re=None), 0.0, False, rng) == ("only", "fallback")


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
        fresh_llava,
    )

    _, processor = fresh_llava(CaptionerTrainConfig(data=[], output=str(tmp_path), width=32, layers=1))
    batcher = ConversationBatcher(processor, LLAVA_1_5)
    batch = batcher(
        torch.zeros(2, 3, 64, 64),
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
def test_train_clip_under_torchrun_with_two_processes(shapes, tmp_path, tiny_model_dir):
    """Two ranks on CPU (gloo): DDP averages gradients, rank 0 writes the checkpoints and model.
    (tiny_model_dir: the tokenizer a fresh CLIP uses is built before the ranks start.)"""
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
    # Killed after the step-3 checkpoint and resumed: each rank continues with its own batches, so
    # the weights are those of the uninterrupted run.
    uninterrupted = weights(tmp_path / "clip" / "model.safetensors")
    shutil.rmtree(tmp_path / "clip" / "checkpoint-0000006")
    (tmp_path / "clip" / "model.safetensors").unlink()
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    after = weights(tmp_path / "clip" / "model.safetensors")
    assert all(torch.equal(after[k], uninterrupted[k]) for k in uninterrupted)


# ---- checkpoints hold no pickle; resume is exact; wrong inputs are one line ----


def recap(*args):
    from typer.testing import CliRunner

    from recaption.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})  # no wrapping


SMALL_CLIP = ["--caption-field", "description", "--recaption-field", "description", "--batch-size", "16",
              "--width", "32", "--warmup", "1", "--device", "cpu"]  # fmt: skip
SMALL_CAPTIONER = ["--batch-size", "8", "--width", "32", "--layers", "1", "--device", "cpu"]


class _Planted:
    """Unpickling this creates `marker` (as a planted trainer_state.pt would run any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(checkpoint, marker):
    torch.save({"optimizer": _Planted(marker), "step": 1}, checkpoint / "trainer_state.pt")


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def one_error_line(result, *phrases):
    """Exit 2 and one line `error: ...` naming each phrase; no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1, result.output
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def test_resume_never_unpickles_a_planted_trainer_state(shapes, tmp_path):
    out, marker = tmp_path / "clip", tmp_path / "pwned"
    first = recap("train-clip", shapes / "train", "-o", out, "--steps", 4, "--save-every", 2, *SMALL_CLIP)
    assert first.exit_code == 0, first.output
    checkpoint = out / "checkpoint-0000004"
    # Beside a checkpoint's real trainer state: resumes from that state, never touches the pickle.
    plant_pickle(checkpoint, marker)
    again = recap("train-clip", shapes / "train", "-o", out, "--steps", 6, "--save-every", 2, *SMALL_CLIP)
    assert again.exit_code == 0, again.output
    assert "trained 6 steps" in again.output and not marker.exists()
    # A checkpoint whose only trainer state is the pickle (an old or planted one): refused, one line.
    checkpoint = out / "checkpoint-0000006"
    for name in checkpoint.glob("trainer_state.*"):
        name.unlink()
    plant_pickle(checkpoint, marker)
    refused = recap("train-clip", shapes / "train", "-o", out, "--steps", 8, *SMALL_CLIP)
    one_error_line(refused, "checkpoint-0000006", "trainer_state.pt", "never loaded")
    assert not marker.exists()


def test_captioner_resume_never_unpickles_a_planted_trainer_state(shapes, tmp_path):
    out, marker = tmp_path / "cap", tmp_path / "pwned"
    args = ["--stage1-steps", 2, "--stage2-steps", 0, "--save-every", 2, *SMALL_CAPTIONER]
    first = recap("train-captioner", shapes / "train", "-o", out, *args)
    assert first.exit_code == 0, first.output
    checkpoint = out / "checkpoint-s1-0000002"
    for name in checkpoint.glob("trainer_state.*"):
        name.unlink()
    plant_pickle(checkpoint, marker)
    refused = recap("train-captioner", shapes / "train", "-o", out, *args[:2], "--stage2-steps", 2, *args[4:])
    one_error_line(refused, "checkpoint-s1-0000002", "trainer_state.pt")
    assert not marker.exists()


def test_a_killed_clip_run_resumes_to_the_same_weights(shapes, tmp_path):
    out = tmp_path / "clip"
    args = ["train-clip", shapes / "train", "-o", out, "--steps", 6, "--save-every", 3, *SMALL_CLIP]
    assert recap(*args).exit_code == 0
    uninterrupted = weights(out / "model.safetensors")
    losses = json.loads((out / "train_summary.json").read_text())["losses"]
    # As if killed after the step-3 checkpoint: the later checkpoint and the final model never written.
    shutil.rmtree(out / "checkpoint-0000006")
    (out / "model.safetensors").unlink()
    resumed = recap(*args)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "train_summary.json").read_text())["losses"] == losses[3:]
    after = weights(out / "model.safetensors")
    assert after.keys() == uninterrupted.keys()
    assert all(torch.equal(after[k], uninterrupted[k]) for k in after)


def test_a_killed_captioner_run_resumes_to_the_same_weights(shapes, tmp_path):
    out = tmp_path / "cap"
    args = ["train-captioner", shapes / "train", "-o", out, "--stage1-steps", 2, "--stage2-steps", 4,
            "--save-every", 2, *SMALL_CAPTIONER]  # fmt: skip
    assert recap(*args).exit_code == 0
    uninterrupted = weights(out / "model.safetensors")
    history = json.loads((out / "train_summary.json").read_text())["history"]
    shutil.rmtree(out / "checkpoint-s2-0000004")  # killed in stage 2, after its step-2 checkpoint
    (out / "model.safetensors").unlink()
    resumed = recap(*args)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "train_summary.json").read_text())["history"] == history
    after = weights(out / "model.safetensors")
    assert all(torch.equal(after[k], uninterrupted[k]) for k in uninterrupted)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from recaption.models.tiny_clip import small_clip

    folder = tmp_path_factory.mktemp("clip") / "a-clip"
    for part in small_clip(32, 64, 2, 1, 64, 16, 16, 77, seed=0):
        part.save_pretrained(folder)
    return folder


def test_wrong_inputs_of_train_and_eval_are_one_line(shapes, tmp_path, tiny_model_dir, clip_folder):
    train = shapes / "train"
    cases = [
        (["train-clip", train, "-o", tmp_path / "a", "--model", tmp_path / "no-clip", *SMALL_CLIP],
         ["--model", "no-clip", "no such folder"]),
        (["train-clip", train, "-o", tmp_path / "b", "--model", tiny_model_dir, *SMALL_CLIP],
         ["not a CLIP-style dual encoder"]),
        (["train-clip", train, "-o", train / "00000.tar", *SMALL_CLIP], ["not a folder"]),
        (["train-captioner", train, "-o", tmp_path / "c", "--model", clip_folder, *SMALL_CAPTIONER],
         ["a clip model", "LlavaForConditionalGeneration"]),
        (["train-captioner", train, "-o", tmp_path / "d", "--vision-tower", tmp_path / "no-tower",
          *SMALL_CAPTIONER], ["--vision-tower", "no such folder"]),
        (["train-captioner", train, "-o", tmp_path / "e", "--vision-tower", tiny_model_dir, *SMALL_CAPTIONER],
         ["expected a CLIP"]),
        (["train-captioner", train, "-o", tmp_path / "f", "--stage2-field", "no_such_field", "--stage1-steps",
          1, *SMALL_CAPTIONER], ["--stage2-field no_such_field", "no sample"]),
        (["train-clip", train, "-o", tmp_path / "h", "--model", clip_folder, "--caption-field", "no_field",
          "--p", "1", "--device", "cpu"], ["--caption-field no_field", "no sample"]),
        (["eval-retrieval", clip_folder, shapes / "test", "--caption-field", "no_field", "--device", "cpu"],
         ["--caption-field no_field", "no sample"]),
        (["eval-retrieval", tmp_path / "no-clip", shapes / "test", "--device", "cpu"], ["no such folder"]),
        (["eval-retrieval", tiny_model_dir, shapes / "test", "--device", "cpu"],
         ["not a CLIP-style dual encoder"]),
        (["eval-retrieval", clip_folder, shapes / "test", "--label-field", "no_label", "--device", "cpu"],
         ["--label-field no_label", "no sample"]),
        (["eval-captioner", tmp_path / "no-captioner", "--images", 2, "--device", "cpu"], ["no such folder"]),
        (["eval-captioner", clip_folder, "--images", 2, "--device", "cpu"], ["a-clip", "model"]),
        (["eval-captioner", "tiny", "--start", -100, "--device", "cpu"], ["--start at least 0"]),
    ]  # fmt: skip
    for args, phrases in cases:
        one_error_line(recap(*args), *phrases)
    # An interrupted checkpoint folder (no trainer state) is named, not a traceback.
    (tmp_path / "g" / "checkpoint-0000002").mkdir(parents=True)
    one_error_line(
        recap("train-clip", train, "-o", tmp_path / "g", *SMALL_CLIP), "checkpoint-0000002", "not a complete"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_asking_for_cuda_without_a_gpu_is_one_line(shapes, tmp_path):
    args = ["--caption-field", "description", "--p", 1, "--steps", 1, "--device", "cuda"]
    one_error_line(recap("train-clip", shapes / "train", "-o", tmp_path / "a", *args), "no CUDA GPU")


def test_train_clip_on_an_export_trains_on_the_p_mix_it_reports(shapes, tmp_path):
    """An export's .txt holds one caption; its .json both. train-clip with default options reads
    the recaption from the .json (whatever the .txt holds), trains on the p=0.5 mix and says so;
    plain shards with no recaption are refused for p < 1, in one line, before any training."""
    import recaption
    from recaption.readers import ColumnConfig, open_shard
    from recaption.training.captions import offered, reader_fields

    from ..quality.test_selection import row, write_output

    tar = sorted((shapes / "train").glob("*.tar"))[0]
    keys = [s.key for s in open_shard(str(tar))]
    write_output(tmp_path / "captions", tar.stem, [row(k, re_caption=f"recaption of {k}") for k in keys],
                 source=tar)
    recaption.export(tmp_path / "captions", tmp_path / "wds", caption="org_caption")  # .txt: the alt-text
    exported = list(open_shard(str(tmp_path / "wds" / f"{tar.stem}.tar"),
                               ColumnConfig(extra=reader_fields(None))))
    assert [offered(s) for s in exported] == [(f"alt text {k}", f"recaption of {k}") for k in keys]

    result = recap("train-clip", tmp_path / "wds", "-o", tmp_path / "clip", "--steps", 3, "--batch-size", 16,
                   "--width", 32, "--warmup", 1, "--device", "cpu")
    assert result.exit_code == 0, result.output
    used = json.loads((tmp_path / "clip" / "train_summary.json").read_text())["captions_trained_on"]
    assert set(used) == {"original", "recaption"} and sum(used.values()) == 48, used
    assert 0.25 < used["recaption"] / 48 < 0.75, used

    plain = recap("train-clip", shapes / "train", "-o", tmp_path / "c2", "--steps", 1, "--device", "cpu")
    one_error_line(plain, "p=0.5", "offers none", "--recaption-field", "--p 1")
    assert not (tmp_path / "c2" / "train_summary.json").exists()


def test_retrieval_recalls_are_exact_shares_not_float32_noise():
    from recaption.training.retrieval import recall_at_k

    similarity = torch.eye(100)
    similarity[:27] = torch.rand(27, 100) * 0.5  # 27 images whose own text is not first
    similarity[torch.arange(27), torch.arange(27)] = 0.0
    recalls = recall_at_k(similarity)
    assert recalls["image_to_text_R@1"] == 0.73 and isinstance(recalls["image_to_text_R@1"], float)


def test_concat_and_clips_need_recaptions_and_say_why(shapes, tmp_path):
    concat = recap("train-clip", shapes / "train", "-o", tmp_path / "a", "--concat", "--steps", 1,
                   "--device", "cpu")
    one_error_line(concat, "--concat joins each original caption with its recaption", "offers none")
    assert "--p 1" not in concat.output
    clips = recap("train-clip", shapes / "train", "-o", tmp_path / "b", "--recipe", "clips", "--p", 1,
                  "--steps", 1, "--device", "cpu")
    one_error_line(clips, "--recipe clips contrasts each image with its recaption too")


def test_retrieval_leaves_out_samples_without_a_caption_and_says_how_many(tmp_path):
    """An empty text would tie with every image, and ties count as hits: such rows are not pairs."""
    from recaption.samples.shards import ShardRecord, write_webdataset_shard
    from recaption.shapes import ShapesWorld
    from recaption.training.retrieval import evaluate

    world = ShapesWorld(0)
    records = [ShardRecord(world.sample(i).image, world.sample(i).description if i % 2 else None,
                           f"https://example.org/{i}.png", "png") for i in range(6)]
    write_webdataset_shard(tmp_path / "00000.tar", records, shard_id=0)
    result = evaluate("tiny-clip", [str(tmp_path / "00000.tar")], device="cpu")
    assert (result.n, result.without_caption) == (3, 3)
    assert result.metrics["image_to_text_R@10"] == 1.0  # 3 candidates: all within 10
