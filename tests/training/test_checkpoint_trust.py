"""A checkpoint is data from disk: every field is checked before a resume uses it, and a resume
must train as the run it continues (train-clip, train-captioner and train-dit alike)."""

from __future__ import annotations

import json
import shutil

import pytest

from recaption.shapes import write_shapes_shards
from recaption.training.checkpoints import CheckpointError
from recaption.training.clip_train import ClipTrainConfig, train_clip
from recaption.training.inputs import TrainingInputError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A train-clip run of 2 steps with a checkpoint at step 2, and its data."""
    root = tmp_path_factory.mktemp("trust")
    write_shapes_shards(root / "data", 16, shard_size=16)
    train_clip(config(root, root / "run"))
    return root


def config(root, output, **changes) -> ClipTrainConfig:
    settings = dict(caption_field="description", recaption_field="description", batch_size=8, width=32,
                    warmup=1, device="cpu", steps=2, save_every=2, workers=0)
    return ClipTrainConfig([str(root / "data")], str(output), **{**settings, **changes})


def copy_run(trained, tmp_path):
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run", tmp_path / "run" / "checkpoint-0000002"


@pytest.mark.parametrize("field,value,says", [
    ("step", -5, "'step' is -5, not a whole number >= 0"),
    ("step", "abc", "'step' is \"abc\", not a whole number >= 0"),
    ("step", 7, "'step' is 7, not the step 2 its folder name says"),
    ("step", True, "'step' is true"),
    ("optimizer", [], "'optimizer' is [], not a mapping"),
    ("world_size", 0, "'world_size' is 0, not a whole number >= 1"),
])  # fmt: skip
def test_a_tampered_trainer_state_is_one_line_naming_file_and_field(trained, tmp_path, field, value, says):
    run, checkpoint = copy_run(trained, tmp_path)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state[field] = value
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError) as caught:
        train_clip(config(trained, run, steps=4))
    message = str(caught.value)
    assert str(checkpoint / "trainer_state.json") in message and says in message, message
    assert "\n" not in message


def test_a_truncated_model_file_is_one_line(trained, tmp_path):
    run, checkpoint = copy_run(trained, tmp_path)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: unreadable tensors .*delete that"):
        train_clip(config(trained, run, steps=4))


def test_an_optimizer_state_of_another_model_is_one_line(trained, tmp_path):
    run, checkpoint = copy_run(trained, tmp_path)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["optimizer"]["param_groups"] = []  # fits no model
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="optimizer state does not fit this model"):
        train_clip(config(trained, run, steps=4))


def test_a_resume_with_another_p_is_refused_and_with_more_steps_goes_on(trained, tmp_path):
    run, _ = copy_run(trained, tmp_path)
    with pytest.raises(TrainingInputError, match=r"other settings \(p 0.5 there, 0.2 now\)"):
        train_clip(config(trained, run, steps=4, p=0.2))
    summary = train_clip(config(trained, run, steps=4))  # training longer is a resume
    assert summary["steps"] == 4 and (run / "checkpoint-0000004").is_dir()


@pytest.mark.parametrize("edit,says", [
    (lambda s: s["extra"].update(stream={"__tensor__": "rng.0.torch"}), "unreadable"),
    (lambda s: s["optimizer"].update(state={"__items__": [[1]]}), "unreadable trainer state"),
    (lambda s: s["extra"].update(stream=5), "data position is unreadable"),
    (lambda s: s["scheduler"].update(base_lrs=[1000.0]), "learning rates [1000.0] are not this run's"),
    (lambda s: s["optimizer"]["param_groups"][0].update(lr=float("nan")),
     "optimizer.param_groups[0].lr is NaN, not a usable float"),
    (lambda s: s["optimizer"]["param_groups"][0].update(betas="x"), "optimizer.param_groups[0].betas is"),
    (lambda s: s["scheduler"].update(last_epoch=-100), "scheduler.last_epoch is -100, not a usable int"),
    (lambda s: s["scheduler"].update(last_epoch="x"), "scheduler.last_epoch is \"x\", not a usable int"),
    (lambda s: s["scheduler"].update(last_epoch=10**400), "scheduler.last_epoch is"),
    (lambda s: s["optimizer"]["state"]["__items__"][0][1].update(exp_avg={"__pickle__": "x"}),
     "optimizer state"),
])  # fmt: skip
def test_a_tampered_structure_is_one_line_not_a_traceback(trained, tmp_path, edit, says):
    run, checkpoint = copy_run(trained, tmp_path)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    edit(state)
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError) as caught:
        train_clip(config(trained, run, steps=4))
    assert says in str(caught.value) and "\n" not in str(caught.value), caught.value
