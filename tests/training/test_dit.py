"""Recap-DiT: the paper's p in training, a tiny DiT that learns, exact resume, deterministic
generation into an img2dataset shard, the latent path through a tiny VAE, and the evaluators."""

from __future__ import annotations

import io
import json
import random
import tarfile

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from recaption.dit.data import DROPPED, ORIGINAL, ORIGINAL_NO_RECAPTION, RECAPTION, pick_caption  # noqa: E402
from recaption.dit.eval import eval_shapes, eval_t2i, frechet_distance  # noqa: E402
from recaption.dit.generate import generate, load_prompts  # noqa: E402
from recaption.dit.model import TextEncoder  # noqa: E402
from recaption.dit.train import DitTrainConfig, train_dit  # noqa: E402
from recaption.spine.contract import OutputError  # noqa: E402
from recaption.training.data import Pair  # noqa: E402
from recaption.training.inputs import TrainingInputError  # noqa: E402

TINY = dict(layers=2, heads=2, head_dim=16, patch_size=8, batch_size=16, lr=1e-3, device="cpu", log_every=5)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from recaption.shapes import write_shapes_shards

    root = tmp_path_factory.mktemp("dit-shapes")
    write_shapes_shards(root / "train", 64, seed=0, shard_size=32)
    return root / "train"


def config(shapes, output, **options) -> DitTrainConfig:
    options = {"data": [str(shapes)], "recaption_field": "description", **TINY, **options}
    return DitTrainConfig(output=str(output), **options)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """A tiny DiT trained 30 steps (shared by the generation tests)."""
    out = tmp_path_factory.mktemp("dit-run") / "run"
    result = train_dit(config(shapes, out, steps=30, save_every=15))
    return out, result


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_p_is_the_probability_of_the_original_caption(p):
    rng = random.Random(0)
    pair = Pair("k", None, org="web words", re="a long recaption")
    draws = [pick_caption(pair, p, 0.0, rng) for _ in range(4000)]
    share = sum(kind == ORIGINAL for _, kind in draws) / len(draws)
    assert share == pytest.approx(p, abs=0.025)
    assert all(text == ("web words" if kind == ORIGINAL else "a long recaption") for text, kind in draws)
    # Caption dropout: the empty text at its rate, whatever was drawn.
    dropped = [pick_caption(pair, p, 0.2, rng) for _ in range(4000)]
    assert sum(k == DROPPED for _, k in dropped) / 4000 == pytest.approx(0.2, abs=0.025)
    assert all(t == "" for t, k in dropped if k == DROPPED)


def test_a_tiny_dit_learns_and_writes_a_dit_folder(trained):
    out, result = trained
    losses = result["losses"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
    assert result["images_per_s"] > 0
    for part in ("transformer", "transformer_ema", "scheduler", "text_encoder", "dit.json"):
        assert (out / part).exists(), part
    meta = json.loads((out / "dit.json").read_text())
    assert meta["space"] == "pixel" and meta["p"] == 0.5 and meta["step"] == 30
    # No pickle anywhere in what training wrote.
    assert not [p for p in out.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_min_snr_gamma_weights_each_sample_by_hand(prediction_type):
    from diffusers import DDPMScheduler

    from recaption.dit.train import diffusion_loss

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    cfg = DitTrainConfig(data=["x"], output="y", prediction_type=prediction_type, snr_gamma=5.0)
    gen = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    timesteps = torch.tensor([0, 100, 500, 999])  # SNR from ~10^4 (capped) down to ~4e-5
    expected = 0.0
    for i, t in enumerate(timesteps.tolist()):
        a = scheduler.alphas_cumprod[t].item()
        snr = a / (1 - a)
        weight = min(snr, 5.0) / (snr + 1 if prediction_type == "v_prediction" else snr)
        expected += weight * ((prediction[i] - target[i]) ** 2).mean().item() / 4
    loss = diffusion_loss(prediction, target, timesteps, scheduler, cfg)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    plain = diffusion_loss(prediction, target, timesteps, scheduler, DitTrainConfig(data=["x"], output="y"))
    assert plain.item() == pytest.approx(((prediction - target) ** 2).mean().item(), rel=1e-6)
    assert loss.item() != pytest.approx(plain.item(), rel=0.05)  # the weighting changes the loss


def test_min_snr_gamma_is_recorded_and_fixed_for_resume(shapes, tmp_path):
    out = tmp_path / "snr"
    result = train_dit(config(shapes, out, steps=4, save_every=2, snr_gamma=5.0))
    assert len(result["losses"]) == 4 and all(np.isfinite(result["losses"]))
    assert json.loads((out / "dit.json").read_text())["snr_gamma"] == 5.0
    with pytest.raises(TrainingInputError, match="snr_gamma"):  # another loss cannot resume it
        train_dit(config(shapes, out, steps=6, save_every=2, snr_gamma=1.0))
    with pytest.raises(ValueError, match="snr-gamma"):
        config(shapes, tmp_path / "bad", snr_gamma=0)


def test_resume_equals_an_uninterrupted_run(shapes, tmp_path):
    from safetensors.torch import load_file

    straight = train_dit(config(shapes, tmp_path / "straight", steps=8, save_every=4))
    interrupted = config(shapes, tmp_path / "resumed", steps=4, save_every=4)
    train_dit(interrupted)
    interrupted.steps = 8
    resumed = train_dit(interrupted)  # picks up checkpoint-0000004
    assert resumed["losses"] == straight["losses"]
    assert resumed["captions"] == straight["captions"]
    for part in ("transformer", "transformer_ema"):
        a = load_file(str(tmp_path / "straight" / part / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(tmp_path / "resumed" / part / "diffusion_pytorch_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    # Other settings into the same output are refused, not silently mixed.
    with pytest.raises(TrainingInputError, match="other settings"):
        train_dit(config(shapes, tmp_path / "resumed", steps=12, p=0.9))


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_p_extremes_never_see_the_other_caption(shapes, tmp_path, monkeypatch, p):
    from recaption.shapes import ShapesWorld

    world = ShapesWorld(0)
    descriptions = {world.sample(i).description for i in range(64)}
    alt_texts = {world.sample(i).alt_text for i in range(64)}
    seen: list[str] = []
    encode = TextEncoder.encode

    def spy(self, texts):
        seen.extend(texts)
        return encode(self, texts)

    monkeypatch.setattr(TextEncoder, "encode", spy)
    result = train_dit(config(shapes, tmp_path / "run", steps=6, p=p))
    texts = [t for t in seen if t]
    assert len(texts) > 50
    if p == 1.0:
        assert result["captions"][RECAPTION] == 0 and all(t in alt_texts for t in texts)
    else:
        assert result["captions"][ORIGINAL] == 0 and all(t in descriptions for t in texts)
    assert result["captions"][DROPPED] == len(seen) - len(texts)


def test_recaptions_missing_is_refused(shapes, tmp_path):
    with pytest.raises(TrainingInputError, match="recaption"):
        train_dit(DitTrainConfig(data=[str(shapes)], output=str(tmp_path / "x"), p=0.5, **TINY))


def _members(folder):
    out = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                out[m.name] = tar.extractfile(m).read()
    return out


def test_generation_is_seeded_and_written_as_a_shard(trained, tmp_path):
    from recaption.shapes.prompts import balanced_prompt_set

    model, _ = trained
    prompts = balanced_prompt_set(1)
    options = dict(steps=4, batch_size=3, device="cpu", guidance=3.0)
    first = generate(model, prompts, tmp_path / "a", seed=7, **options)
    generate(model, prompts, tmp_path / "b", seed=7, **options)
    generate(model, prompts, tmp_path / "c", seed=8, **options)
    a, b, c = _members(tmp_path / "a"), _members(tmp_path / "b"), _members(tmp_path / "c")
    pngs = sorted(k for k in a if k.endswith(".png"))
    assert len(pngs) == 4 and first["images"] == 4
    assert all(a[k] == b[k] for k in pngs)
    assert any(a[k] != c[k] for k in pngs)
    key = pngs[0][: -len(".png")]
    meta = json.loads(a[f"{key}.json"])
    assert a[f"{key}.txt"].decode() == prompts[0].text == meta["caption"]
    assert meta["spec"] == prompts[0].spec and meta["style"] == "human" and meta["seed"] == 7
    assert (tmp_path / "a-contact-sheet.png").is_file()
    # A file of someone else's where the sheet would go is refused before any work, kept as it was;
    # the sheet an earlier run into the same folder wrote is replaced.
    (tmp_path / "f-contact-sheet.png").write_bytes(b"mine")
    with pytest.raises(TrainingInputError, match="f-contact-sheet.png: something is there already"):
        generate(model, prompts, tmp_path / "f", seed=7, **options)
    with pytest.raises(TrainingInputError, match="f-contact-sheet.png: something is there already"):
        generate(model, prompts, tmp_path / "g", sheet=str(tmp_path / "f-contact-sheet.png"), **options)
    assert (tmp_path / "f-contact-sheet.png").read_bytes() == b"mine" and not (tmp_path / "f").exists()
    generate(model, prompts, tmp_path / "a", seed=7, overwrite=True, **options)
    # A run stopped while writing (its generate.json says incomplete) is redone over its own sheet
    recorded = json.loads((tmp_path / "a" / "generate.json").read_text())
    (tmp_path / "a" / "generate.json").write_text(json.dumps({**recorded, "incomplete": "stopped"}))
    generate(model, prompts, tmp_path / "a", seed=7, overwrite=True, **options)
    # The checker reads the shard back: every image scored, by complexity 1-4.
    report = eval_shapes([str(tmp_path / "a")])
    assert report["overall"]["images"] == 4 and set(report["by_complexity"]) == {1, 2, 3, 4}
    # Other samplers run too; a checkpoint is a model folder as well.
    generate(model, ["a small red circle in the center"], tmp_path / "d", sampler="dpm", **options)
    generate(model / "checkpoint-0000015", ["red circle"], tmp_path / "e", sampler="ddpm", **options)


def test_generate_refuses_a_used_output_and_overwrite_leaves_no_old_shard(trained, tmp_path):
    model, _ = trained
    options = dict(steps=2, device="cpu", shard_size=1)
    out = tmp_path / "gen"
    generate(model, ["a red circle", "a blue square", "a green diamond"], out, **options)
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    with pytest.raises(TrainingInputError, match="already holds 3 shard"):
        generate(model, ["a red circle"], out, **options)
    generate(model, ["a yellow triangle"], out, overwrite=True, **options)
    assert [p.name for p in out.glob("*.tar")] == ["00000.tar"]  # no shard of the old set left to mix in
    assert eval_t2i([str(out)])["images"] == 1
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(TrainingInputError, match="no prompts"):
        generate(model, str(tmp_path / "blank.txt"), tmp_path / "none", **options)


@pytest.mark.parametrize("sampler", ["ddim", "dpm", "ddpm"])
def test_samplers_reach_the_data_under_an_ideal_denoiser(sampler):
    """With the exact noise prediction for a one-image dataset, every sampler (with and without
    guidance) lands on that image: the sampling loop, guidance and decoding are right."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from recaption.dit.generate import sample
    from recaption.dit.model import LoadedDit, PixelCodec

    schedule = DDPMScheduler(clip_sample=True)
    target = torch.rand(3, 16, 16) * 2 - 1

    class Ideal(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # sample() reads the device off it

        def forward(self, x, encoder_hidden_states, encoder_attention_mask, timestep):
            a = schedule.alphas_cumprod[timestep.long()].view(-1, 1, 1, 1)
            return SimpleNamespace(sample=(x - a.sqrt() * target) / (1 - a).sqrt())

    class Text:
        def encode(self, texts):
            return torch.zeros(len(texts), 3, 8), torch.ones(len(texts), 3, dtype=torch.long)

    dit = LoadedDit(Ideal(), Text(), PixelCodec(), dict(schedule.config), {"image_size": 16}, None)
    expected = PixelCodec().decode(target)
    for guidance in (1.0, 4.0):
        images = sample(
            dit, ["a", "b"], [1, 2], guidance, steps=100 if sampler == "ddpm" else 20, sampler=sampler
        )
        assert (images.int() - expected.int()).abs().max() <= 1


def test_latent_space_with_a_tiny_vae(shapes, tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    vae.save_pretrained(tmp_path / "vae")
    result = train_dit(config(shapes, tmp_path / "run", steps=3, vae=str(tmp_path / "vae"), patch_size=4))
    assert len(result["losses"]) == 3 and all(np.isfinite(result["losses"]))
    meta = json.loads((tmp_path / "run" / "dit.json").read_text())
    assert meta["space"] == "latent" and (tmp_path / "run" / "vae" / "config.json").is_file()
    generate(tmp_path / "run", ["a red circle"], tmp_path / "gen", steps=2, device="cpu")
    from PIL import Image

    image = Image.open(
        io.BytesIO(next(v for k, v in _members(tmp_path / "gen").items() if k.endswith(".png")))
    )
    assert image.size == (64, 64)


def test_prompts_from_a_list_a_text_file_jsonl_and_a_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert load_prompts(["a", "b"]) == [{"prompt": "a"}, {"prompt": "b"}]
    (tmp_path / "p.txt").write_text("one red circle\n\ntwo blue squares\n")
    assert [p["prompt"] for p in load_prompts(tmp_path / "p.txt")] == ["one red circle", "two blue squares"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "x", "style": "human"}) + "\n")
    assert load_prompts(tmp_path / "p.jsonl") == [{"prompt": "x", "style": "human"}]
    pq.write_table(pa.table({"key": ["k1", "k2"], "re_caption": ["long one", None]}), tmp_path / "c.parquet")
    assert load_prompts(tmp_path / "c.parquet", column="re_caption") == [
        {"prompt": "long one", "source_key": "k1"}
    ]
    with pytest.raises(TrainingInputError, match="no column"):
        load_prompts(tmp_path / "c.parquet", column="nope")


def test_frechet_distance_by_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # Same covariance, mean moved by (1, 2, 0): the distance is the squared shift (5).
    assert frechet_distance(a, a + [1.0, 2.0, 0.0]) == pytest.approx(5.0, abs=1e-6)
    # Diagonal covariances: sum of (sigma_a - sigma_b)^2, here (2 - 1)^2 on one axis.
    b = a * [2.0, 1.0, 1.0]
    expected = (np.sqrt(np.var(b[:, 0], ddof=1)) - np.sqrt(np.var(a[:, 0], ddof=1))) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.05)


def test_eval_t2i_on_the_worlds_own_images(shapes):
    report = eval_t2i([str(shapes)], [str(shapes)], device="cpu")
    assert report["images"] == 64
    assert report["shapes"]["overall"]["all"] == 1.0  # the truth scores right
    assert report["shapes"]["layout"]["overall"]["layout"] == 1.0  # and so does its colour by cell
    assert report["clip_score"]["mean"] is not None and report["clip_score"]["clip_model"] == "tiny-clip"
    assert report["frechet_distance"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert report["frechet_distance"]["encoder"] == "tiny-clip"


@pytest.mark.slow
def test_train_dit_under_torchrun_with_two_processes(shapes, tmp_path):
    """Two ranks on CPU (gloo): DDP averages gradients, each rank draws its own batches, rank 0
    writes; resuming a two-rank run from its checkpoint gives the uninterrupted run's weights."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    script = tmp_path / "train.py"
    script.write_text(
        "import sys\n"
        "from recaption.dit.train import DitTrainConfig, train_dit\n"
        f"config = DitTrainConfig(data=[{str(shapes)!r}], output=sys.argv[1],\n"
        f"    recaption_field='description', steps=int(sys.argv[2]), save_every=3, **{TINY!r})\n"
        "result = train_dit(config)\n"
        "print('trained', result['steps'], 'steps')\n"
    )
    torchrun = str(Path(sys.executable).with_name("torchrun"))

    def run(output, steps):
        done = subprocess.run(
            [torchrun, "--nproc_per_node", "2", str(script), str(output), str(steps)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert run(tmp_path / "straight", 6).count("trained 6 steps") == 2  # both ranks ran
    run(tmp_path / "resumed", 3)
    run(tmp_path / "resumed", 6)
    for part in ("transformer", "transformer_ema"):
        a = load_file(str(tmp_path / "straight" / part / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(tmp_path / "resumed" / part / "diffusion_pytorch_model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), part
    summary = json.loads((tmp_path / "straight" / "train_summary.json").read_text())
    assert summary["world_size"] == 2


def test_cli_trains_generates_and_evaluates(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app
    from recaption.shapes import write_shapes_shards

    runner = CliRunner()
    write_shapes_shards(str(tmp_path / "shapes"), 32, shard_size=32)
    trained = runner.invoke(app, ["train-dit", str(tmp_path / "shapes"), "-o", str(tmp_path / "dit"),
                                  "--steps", "3", "--batch-size", "8", "--layers", "1",
                                  "--recaption-field", "description"])
    assert trained.exit_code == 0 and "trained 3 steps on 32 images" in trained.output, trained.output
    made = runner.invoke(app, ["generate", str(tmp_path / "dit"), "a large red circle in the top left",
                               "-o", str(tmp_path / "gen"), "--steps", "2"])
    assert made.exit_code == 0 and (tmp_path / "gen" / "00000.tar").exists(), made.output
    scored = runner.invoke(app, ["eval-t2i", str(tmp_path / "gen")])  # a table by default
    assert scored.exit_code == 0 and "recap eval-t2i" in scored.output, scored.output
    as_json = runner.invoke(app, ["eval-t2i", str(tmp_path / "gen"), "--json"])
    assert as_json.exit_code == 0 and '"images": 1' in as_json.output, as_json.output


# ---- what train-dit does with the inputs people have ----


def _shard(folder, records, shard_id=0):
    from recaption.samples.shards import write_webdataset_shard

    write_webdataset_shard(folder / f"{shard_id:05d}.tar", records, shard_id=shard_id)
    return folder


def _world_records(n, start=0, describe=lambda i: True, caption=True):
    from recaption.samples.shards import ShardRecord
    from recaption.shapes import ShapesWorld

    world = ShapesWorld(0)
    records = []
    for i in range(start, start + n):
        s = world.sample(i)
        extra = {"description": s.description} if describe(i) else {}
        text = s.alt_text if caption else None
        records.append(ShardRecord(image=s.image, caption=text, extension="png", extra=extra))
    return records


def test_two_folders_with_the_same_shard_names_train_together_but_one_shard_twice_is_refused(tmp_path):
    a = _shard(tmp_path / "a", _world_records(16))
    b = _shard(tmp_path / "b", _world_records(16, start=100))  # both hold 00000.tar
    result = train_dit(config(a, tmp_path / "ab", steps=2, workers=0, data=[str(a), str(b)]))
    assert result["pairs"] == 32
    from recaption.spine.errors import RecaptionError  # a user error: one line, exit 2

    with pytest.raises(RecaptionError, match="given twice"):
        train_dit(config(a, tmp_path / "aa", steps=2, workers=0, data=[str(a), str(a / "00000.tar")]))
    with pytest.raises(RecaptionError, match="given twice"):  # however it is spelled
        train_dit(config(a, tmp_path / "ab2", steps=2, workers=0,
                         data=[str(a / "00000.tar"), str(a / ".." / "a" / "00000.tar")]))


def test_data_without_any_caption_is_refused_and_leaves_no_folder(tmp_path):
    data = _shard(tmp_path / "bare", _world_records(16, describe=lambda i: False, caption=False))
    out = tmp_path / "run"
    with pytest.raises(TrainingInputError, match="no sample of the first batch has a caption"):
        train_dit(config(data, out, p=1.0, steps=2, workers=0, recaption_field=None))  # default dropout
    assert not out.exists()  # no half-made model folder


def test_samples_without_a_recaption_are_counted_apart(tmp_path):
    data = _shard(tmp_path / "partial", _world_records(32, describe=lambda i: i % 4 == 0))
    result = train_dit(config(data, tmp_path / "run", p=0.0, steps=2, workers=0, caption_dropout=0.0))
    kinds = result["captions"]
    assert kinds[RECAPTION] + kinds[ORIGINAL_NO_RECAPTION] == 32 and kinds[ORIGINAL] == 0
    assert kinds[ORIGINAL_NO_RECAPTION] > 10  # 3 in 4 samples have no description


def test_resume_with_another_learning_rate_is_refused_and_steps_must_be_positive(shapes, tmp_path):
    out = tmp_path / "run"
    train_dit(config(shapes, out, steps=2, save_every=1, workers=0))
    with pytest.raises(TrainingInputError, match="lr 0.001 there, 0.5 now"):
        train_dit(config(shapes, out, steps=4, lr=0.5, workers=0))
    # A run from before snr_gamma was recorded trained with plain MSE: resuming it with another
    # weighting is refused too.
    for folder in [out, *out.glob("checkpoint-*")]:
        meta = json.loads((folder / "dit.json").read_text())
        meta.pop("snr_gamma")
        meta["train_config"].pop("snr_gamma")
        (folder / "dit.json").write_text(json.dumps(meta))
    with pytest.raises(TrainingInputError, match="snr_gamma null there, 5.0 now"):
        train_dit(config(shapes, out, steps=4, snr_gamma=5.0, workers=0))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        config(shapes, tmp_path / "none", steps=0)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="which is a file, not a folder"):
        train_dit(config(shapes, tmp_path / "afile" / "sub", steps=2, workers=0))


def test_mix_trains_on_the_columns_it_names(shapes, tmp_path, monkeypatch):
    """train-dit --mix over json fields of plain shards (here the description and the alt-text):
    only those texts are seen, counted by column; a column no sample has is refused first."""
    from recaption.shapes import ShapesWorld
    from recaption.training.captions import MixError

    world = ShapesWorld(0)
    allowed = {world.sample(i).description for i in range(64)} | {world.sample(i).alt_text for i in range(64)}
    seen: list[str] = []
    encode = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", lambda self, texts: seen.extend(texts) or encode(self, texts))
    result = train_dit(config(shapes, tmp_path / "run", steps=6, mix="description=0.7,org_caption=0.3"))
    assert {t for t in seen if t} <= allowed
    assert result["captions"]["description"] > result["captions"]["org_caption"] > 0
    with pytest.raises(MixError, match="offers no re_caption_short"):
        train_dit(config(shapes, tmp_path / "bad", steps=2, mix="re_caption_short=1"))
