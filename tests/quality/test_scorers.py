"""Scorers beside transformers CLIP: open_clip models, and captions longer than the text window
(truncated, chunked by sentences, or read whole by a long-text CLIP). Every score equals the
library's own forward on the same inputs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from recaption.quality.clip import ClipModelError, ClipScorer
from recaption.quality.long_text import sentence_chunks, sentences
from recaption.quality.scorers import make_scorer
from recaption.schema import SCORES_METADATA_KEY

SENTENCE = "A small red square sits beside a large blue circle on a plain grey background."
LONG = " ".join(f"{SENTENCE[:-1]} number {i}." for i in range(12))  # far past 77 tokens


def images():
    return [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 50), (30, 30, 200))]


def cosine_100(a, b) -> list[float]:
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    return (100.0 * (a * b).sum(-1)).tolist()


def test_sentence_chunks_keep_every_sentence_in_order_within_the_window():
    count = len  # one "token" per character: easy to see
    chunks, too_long = sentence_chunks("One two. Three four five. Six. Seven eight nine ten.", count, 21)
    assert chunks == ["One two.", "Three four five. Six.", "Seven eight nine ten."]  # packed greedily
    assert all(len(c) <= 21 for c in chunks) and not too_long
    assert sentences(" ".join(chunks)) == sentences("One two. Three four five. Six. Seven eight nine ten.")
    _, too_long = sentence_chunks("A sentence that is longer than the window alone.", count, 10)
    assert too_long


@pytest.fixture(scope="module")
def tiny_clip():
    scorer = ClipScorer("tiny-clip", device="cpu")
    scorer.setup()
    return scorer


def test_chunked_long_text_is_the_mean_of_its_chunks_and_short_text_is_unchanged(tiny_clip):
    chunked = ClipScorer("tiny-clip", device="cpu", long_text="chunk")
    chunked.setup()
    assert tiny_clip.truncated([LONG]) == [True] and tiny_clip.truncated([SENTENCE]) == [False]
    pixels = tiny_clip.pixel_values(images())
    embeddings = tiny_clip.image_embeddings(pixels)
    cut = tiny_clip.score(embeddings, [LONG, SENTENCE])
    whole = chunked.score(embeddings, [LONG, SENTENCE])
    assert [s.truncated for s in cut] == [True, False]
    assert [s.truncated for s in whole] == [False, False]
    assert whole[1].score == cut[1].score  # within the window: the same score either way
    # The chunked score by hand: the model's own text features of each chunk, normalised, averaged.
    chunks, _ = sentence_chunks(LONG, lambda t: tiny_clip.token_counts([t])[0], tiny_clip.window)
    assert len(chunks) > 1
    with torch.no_grad():
        tokens = tiny_clip.tokenizer(chunks, padding=True, return_tensors="pt")
        features = tiny_clip.model.get_text_features(**tokens)
        features = getattr(features, "pooler_output", features)
        mean = (features / features.norm(dim=-1, keepdim=True)).mean(0, keepdim=True)
    expected = cosine_100(embeddings[:1], mean)[0]
    assert whole[0].score == pytest.approx(expected, abs=1e-3)
    assert chunked.provenance()["clip_long_text"] == "chunk"


def test_a_long_text_clip_reads_past_77_tokens_whole(tmp_path):
    """LongCLIP's way: a text encoder with 248 positions; its window is read from the model."""
    from recaption.models.tiny_clip import small_clip

    model, tokenizer, processor = small_clip(width=32, intermediate=64, heads=2, layers=1, image_size=32,
                                             patch_size=8, projection_dim=32, text_length=248, seed=0)
    for part in (model, tokenizer, processor):
        part.save_pretrained(tmp_path / "long-clip")
    scorer = ClipScorer(str(tmp_path / "long-clip"), device="cpu")
    scorer.setup()
    assert scorer.window == 248
    n = scorer.token_counts([LONG])[0]
    assert 77 < n <= 248
    pixels = scorer.pixel_values(images()[:1])
    result = scorer.score(scorer.image_embeddings(pixels), [LONG])[0]
    assert result.truncated is False
    with torch.no_grad():
        out = model(**tokenizer([LONG], return_tensors="pt"), pixel_values=pixels)
    assert result.score == pytest.approx(cosine_100(out.image_embeds, out.text_embeds)[0], abs=1e-3)


def test_an_open_clip_name_without_open_clip_installed_is_one_line(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    scorer = make_scorer("open_clip:ViT-B-32:laion2b_s34b_b79k", device="cpu")
    with pytest.raises(ClipModelError, match=r"pip install 'recaption\[vision\]'"):
        scorer.setup()
    (tmp_path / "not-open-clip").mkdir()
    with pytest.raises(ClipModelError, match="no open_clip_config.json"):
        make_scorer(f"open_clip:{tmp_path / 'not-open-clip'}").setup()


# ---- open_clip (the vision test environment) ----

OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_open_clip(folder):
    """A random-weight open_clip CLIP in open_clip's folder layout (config + safetensors)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**OPEN_CLIP_CONFIG)
    folder.mkdir(parents=True)
    config = {"model_cfg": OPEN_CLIP_CONFIG, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, folder / "open_clip_model.safetensors")
    return folder


@pytest.mark.vision
@pytest.mark.parametrize("long_text", ["truncate", "chunk"])
def test_open_clip_scores_equal_open_clips_own_forward(tmp_path, long_text):
    import open_clip

    folder = tiny_open_clip(tmp_path / "oc")
    scorer = make_scorer(str(folder), device="cpu", long_text=long_text)  # detected without the prefix
    scorer.setup()
    assert scorer.provenance()["clip_library"] == "open_clip" and scorer.window == 77
    texts = [SENTENCE, "a blue circle"]
    pixels = scorer.pixel_values(images())
    results = scorer.score(scorer.image_embeddings(pixels), texts)

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    with torch.no_grad():
        image = model.encode_image(torch.stack([preprocess(im) for im in images()]))
        text = model.encode_text(tokenizer(texts))
    assert [r.score for r in results] == pytest.approx(cosine_100(image, text), abs=1e-3)
    assert [r.truncated for r in results] == [False, False]
    assert scorer.truncated([LONG]) == [True]


@pytest.mark.vision
def test_recap_score_with_an_open_clip_folder(tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from recaption.cli import app

    from ..conftest import write_shards

    folder = tiny_open_clip(tmp_path / "oc")
    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=3)
    runner = CliRunner()
    made = runner.invoke(app, ["caption", *map(str, shards), "-o", str(tmp_path / "out"), "--model", "tiny",
                               "--max-new-tokens", "8"])
    assert made.exit_code == 0, made.output
    scored = runner.invoke(app, ["score", str(tmp_path / "out"), "--clip-model", f"open_clip:{folder}",
                                 "--device", "cpu"])
    assert scored.exit_code == 0, scored.output
    table = pq.read_table(tmp_path / "out" / "00000.parquet")
    assert all(s is not None for s in table.column("re_clip_score").to_pylist())
    stamp = json.loads(table.schema.metadata[SCORES_METADATA_KEY])  # which scorer made the columns
    assert stamp["clip_library"] == "open_clip" and stamp["clip_model"] == f"open_clip:{folder}"
    assert stamp["clip_long_text"] == "truncate"


@pytest.mark.vision
def test_the_vision_environment_has_a_working_torchvision():
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
