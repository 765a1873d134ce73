"""Caption quality flags, CLIP scores, the judge's parser and the report."""

from __future__ import annotations

import pytest

from recaption.flags import is_boilerplate, is_degenerate, is_repetitive, repetition_rate

NATURAL = (
    "A brown horse stands in a green field in front of a wooden fence, with trees in the background "
    "and a cloudy sky above. The horse has a white blaze on its face and looks towards the camera, "
    "while a second horse grazes in the background near the fence."
)
LOOP = "A cat sits on a red sofa. " + "The cat is looking at the camera. " * 6


def test_repetition_flags_loops_not_natural_repeats():
    rate, repeats = repetition_rate(NATURAL)
    assert repeats < 3 and rate < 0.1  # "in the background" twice is no loop
    assert is_repetitive(NATURAL) is False
    rate, repeats = repetition_rate(LOOP)
    assert rate > 0.6 and is_repetitive(LOOP) is True
    assert is_repetitive("short caption") is False and is_repetitive(None) is None
    # Hand count: 8 words -> 5 four-grams; "a b c d a b c d" repeats "a b c d" once (1/5).
    assert repetition_rate("a b c d a b c d") == (pytest.approx(1 / 5), 1)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The image shows a dog on a beach.", True),
        ("This photograph depicts a mountain lake.", True),
        ("In this image, a woman is reading.", True),
        ("the picture features two cups", True),
        ("A dog runs on a beach at sunset.", False),
        ("Images of the moon are shown on a screen.", False),
        (None, None),
    ],
)
def test_boilerplate_openers(text, expected):
    assert is_boilerplate(text) is expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", True),  # an ok row with an empty caption
        ("   \n", True),
        (",,,,,,,,,,,,,,,,,,,,,,,,,,,,,,", True),  # no word at all
        ("a dog", True),  # 2 words < 3
        ("... a ... b ... c ...", True),  # 3 words, but 3 of 15 visible characters are letters
        ("a b c !!!!!!!!", True),  # 3 of 11 visible characters
        ("A dog runs.", False),  # 3 words, 8 of 9 visible characters
        ("a, b, c", False),  # 3 of 5
        ("Ein Hund läuft über die Wiese", False),  # letters of any script
        ("一只猫坐在沙发上。", False),  # no spaces: each CJK character is a word
        (None, None),  # no caption (a failed row): null
    ],
)
def test_degenerate_captions(text, expected):
    assert is_degenerate(text) is expected


# -- CLIP scores ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    from recaption.quality.clip import ClipScorer

    s = ClipScorer("tiny-clip", device="cpu", batch_size=3)
    s.setup()
    return s


def independent_scores(scorer, images, texts):
    """CLIPModel's own forward: logits_per_image = logit_scale * cosine."""
    import torch

    tokens = scorer.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    pixels = scorer.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = scorer.model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels
        )
    return (100 * out.logits_per_image.diagonal() / scorer.model.logit_scale.exp()).tolist()


def test_clip_score_matches_the_models_own_forward(scorer):
    from PIL import Image

    from ..conftest import image_bytes

    images = [
        Image.open(__import__("io").BytesIO(image_bytes(50 + i, 40, seed=i))).convert("RGB") for i in range(5)
    ]
    texts = ["a red circle", "a blue square on a white background", "a cat", "two purple ellipses", "smoke"]
    ours = [r.score for r in scorer.score(scorer.image_embeddings(scorer.pixel_values(images)), texts)]
    assert ours == pytest.approx(independent_scores(scorer, images, texts), abs=1e-3)
    assert len(set(ours)) == 5  # not a constant


def test_long_texts_are_truncated_and_say_so(scorer):
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 10, 10))
    long_text = " ".join(["a red circle and a blue square"] * 20)  # ~140 words, over 77 tokens
    results = scorer.score(
        scorer.image_embeddings(scorer.pixel_values([image, image])), [long_text, "a red circle"]
    )
    assert [r.truncated for r in results] == [True, False]
    assert results[0].score == pytest.approx(independent_scores(scorer, [image], [long_text])[0], abs=1e-3)


def test_score_command_fills_columns_in_place_resumably(tmp_path, captioner, scorer):
    import json

    import pyarrow.parquet as pq

    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import RunConfig
    from recaption.quality.score import score_output
    from recaption.readers import discover_shards

    from ..conftest import write_shards

    shards = write_shards(tmp_path / "in", n_shards=2, per_shard=4)
    out = tmp_path / "out"
    CaptionPipeline(captioner.config, RunConfig(output=str(out)), captioner).run(discover_shards(shards))
    before = pq.read_table(out / "00000.parquet")
    assert before.column("re_clip_score").null_count == 4  # null until scored, never 0

    summary = score_output(str(out), scorer)
    assert summary.done == ["00000", "00001"] and not summary.failed
    after = pq.read_table(out / "00000.parquet")
    assert after.num_rows == 4 and after.drop_columns(
        ["re_clip_score", "org_clip_score", "re_clip_truncated", "org_clip_truncated"]
    ).equals(
        before.drop_columns(["re_clip_score", "org_clip_score", "re_clip_truncated", "org_clip_truncated"])
    )
    rows = after.to_pylist()
    assert all(isinstance(r["re_clip_score"], float) and isinstance(r["org_clip_score"], float) for r in rows)
    assert all(r["org_clip_truncated"] is False for r in rows)
    assert json.loads(after.schema.metadata[b"recaption_scores"])["clip_model"] == "tiny-clip"
    assert b"recaption" in after.schema.metadata  # the captioning provenance is kept
    # The scores are those of the model's own forward on the same images and captions.
    from recaption.readers import open_shard
    from recaption.samples.images import decode_sample

    images = [decode_sample(s).image for s in open_shard(shards[0])]
    assert [r["org_clip_score"] for r in rows] == pytest.approx(
        independent_scores(scorer, images, [r["org_caption"] for r in rows]), abs=1e-3
    )
    # Rerun: nothing to do, file untouched.
    stamp = (out / "00000.parquet").stat().st_mtime_ns
    again = score_output(str(out), scorer)
    assert again.skipped == ["00000", "00001"] and (out / "00000.parquet").stat().st_mtime_ns == stamp
    assert not list(out.glob("*.tmp"))


def test_scoring_in_the_caption_pass_equals_scoring_afterwards(tmp_path, captioner, scorer):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.cli import app
    from recaption.config import RunConfig
    from recaption.readers import discover_shards

    from ..conftest import write_shards

    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=5)
    CaptionPipeline(
        captioner.config, RunConfig(output=str(tmp_path / "same"), clip_model="tiny-clip"), captioner
    ).run(discover_shards(shards))
    CaptionPipeline(captioner.config, RunConfig(output=str(tmp_path / "after")), captioner).run(
        discover_shards(shards)
    )
    result = CliRunner().invoke(
        app, ["score", str(tmp_path / "after"), "--clip-model", "tiny-clip", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    same = pq.read_table(tmp_path / "same" / "00000.parquet").to_pylist()
    after = pq.read_table(tmp_path / "after" / "00000.parquet").to_pylist()
    for column in ("re_clip_score", "org_clip_score"):
        assert [r[column] for r in same] == pytest.approx([r[column] for r in after], abs=1e-3)
        assert all(r[column] is not None for r in same)


# -- the judge ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("Rating: 4", (4, "ok")),
        ("The caption is accurate and fluent.\nRating: **5**", (5, "ok")),
        ("3", (3, "ok")),
        ("4/5 - fluent, one small error", (4, "ok")),
        ("Rating: 7", (None, "out_of_range")),
        ("Rating: 0", (None, "out_of_range")),
        ("Rating: 3.5", (None, "out_of_range")),
        ("I'm sorry, but I can't help with rating this image.", (None, "no_rating")),
        ("Between 2 and 3, I'd say.", (None, "no_rating")),
        ("", (None, "no_rating")),
        (None, (None, "no_rating")),
    ],
)
def test_judge_reply_parser(reply, expected):
    from recaption.quality.judge import parse_rating

    assert parse_rating(reply) == expected


def test_judge_fills_ratings_on_a_sample_and_survives_bad_replies(tmp_path, captioner, monkeypatch, caplog):
    import logging

    import pyarrow.parquet as pq

    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import RunConfig
    from recaption.quality.judge import JudgeConfig, judge_output, selected
    from recaption.readers import discover_shards

    from ..conftest import write_shards
    from ..openai_server import LoopbackServer, completion, prompt_of

    async def judge(body, state):
        prompt = prompt_of(body)
        if "alt text number 1 " in prompt:
            return 200, completion("I'm sorry, I can't rate this image."), {}
        if "alt text number 2 " in prompt:
            return 200, completion("Rating: 9"), {}
        if "alt text number 6 " in prompt:
            return 500, "internal error", {}
        return 200, completion("Rating: 2" if "alt text" in prompt else "Rating: 5"), {}

    monkeypatch.setenv("JUDGE_KEY", "sk-judge-secret")
    caplog.set_level(logging.DEBUG)
    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=12)
    out = tmp_path / "out"
    CaptionPipeline(captioner.config, RunConfig(output=str(out)), captioner).run(discover_shards(shards))
    with LoopbackServer(judge) as server:
        config = JudgeConfig(
            endpoints=[server.url],
            model="judge-vlm",
            fraction=0.5,
            seed=1,
            retries=1,
            api_key_env="JUDGE_KEY",
        )
        summary = judge_output(str(out), config)
        assert all(h["Authorization"] == "Bearer sk-judge-secret" for h in server.state.headers)
        requests = len(server.state.requests)
    rows = pq.read_table(out / "00000.parquet").to_pylist()
    chosen = [r for r in rows if selected(r["key"], 0.5, 1)]
    assert 0 < len(chosen) < 12 and summary.done == ["00000"] and summary.count("judged") == len(chosen)
    assert {1, 2, 6} <= {int(r["org_caption"].split()[3]) for r in chosen}  # the faulty replies are sampled
    for r in rows:
        if r not in chosen:
            assert (r["re_gpt4v_score"], r["org_gpt4v_score"], r["org_judge_status"]) == (None, None, None)
            continue
        assert (r["re_gpt4v_score"], r["re_judge_status"]) == (5, "ok")
        number = int(r["org_caption"].split()[3])
        expected = {1: (None, "no_rating"), 2: (None, "out_of_range"), 6: (None, "request_failed")}.get(
            number, (2, "ok")
        )
        assert (r["org_gpt4v_score"], r["org_judge_status"]) == expected
    assert "sk-judge-secret" not in caplog.text
    # Same settings again: nothing sent, nothing rewritten.
    with LoopbackServer(judge) as server:
        config.endpoints = [server.url]
        assert judge_output(str(out), config).skipped == ["00000"] and not server.state.requests
    assert requests >= 2 * len(chosen)


# -- stats and report --------------------------------------------------------------------------------


@pytest.fixture
def scored_output(tmp_path, captioner, scorer):
    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import RunConfig
    from recaption.readers import discover_shards

    from ..conftest import write_shards

    shards = write_shards(tmp_path / "in", n_shards=2, per_shard=6)
    out = tmp_path / "out"
    CaptionPipeline(captioner.config, RunConfig(output=str(out), clip_model="tiny-clip"), captioner).run(
        discover_shards(shards)
    )
    return out


def test_stats_vocabulary_overlap_is_the_papers_measure(scored_output):
    import pyarrow.parquet as pq

    from recaption.quality.stats import collect, words

    stats = collect(str(scored_output))
    rows = [r for n in ("00000", "00001") for r in pq.read_table(scored_output / f"{n}.parquet").to_pylist()]
    re_vocab = {w for r in rows for w in words(r["re_caption"])}
    org_vocab = {w for r in rows for w in words(r["org_caption"])}
    overlap = stats.vocabulary_overlap
    assert overlap["re_share_of_combined"] == pytest.approx(len(re_vocab) / len(re_vocab | org_vocab))
    assert overlap["shared"] == len(re_vocab & org_vocab)
    assert stats.rows == 12 and stats.status_counts == {"ok": 12}
    assert len(stats.clip_scores["re"]) == 12
    org_mean = stats.summary(digits=None)["length"]["org"]["mean"]
    assert org_mean == pytest.approx(sum(r["org_length"] for r in rows) / 12)


def test_report_is_self_contained_and_renders_in_chromium(scored_output, tmp_path):
    import re
    import shutil
    import subprocess

    from recaption.quality.report import write_report

    report = tmp_path / "report.html"
    write_report(str(scored_output), str(report), gallery_size=5)
    html = report.read_text()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html), "the report must fetch nothing"
    assert "<script" not in html and "<link" not in html
    assert html.count('<div class="card">') == 5 and html.count('src="data:image/jpeg;base64,') == 5
    assert 'id="plot-length"' in html and 'id="plot-clip"' in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium package is not installed")
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2400",
    ]
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [*flags, f"--screenshot={shot}", report.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert shot.exists() and shot.stat().st_size > 10_000, run.stderr[-2000:]
    console_errors = [
        line for line in run.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()
    ]
    assert not console_errors, console_errors
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    gallery = dom.stdout[dom.stdout.index('id="gallery"') :]
    assert gallery.count("<img") == 5, "the rendered gallery shows every sample's image"
    from PIL import Image

    assert Image.open(shot).size == (1280, 2400)


def test_siglip_scores_match_the_models_own_forward(tmp_path):
    """SigLIP: max-length padding, no attention mask, sigmoid logits = scale * cos + bias."""
    from PIL import Image
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel

    from recaption.models.tiny import tiny_model_path
    from recaption.quality.clip import ClipScorer

    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    tok.padding_side, tok.model_max_length = "right", 16
    config = SiglipConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=16,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
    )
    import torch

    torch.manual_seed(0)
    model = SiglipModel(config)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    scorer = ClipScorer(str(tmp_path), device="cpu")
    scorer.setup()
    images = [Image.new("RGB", (40, 30), (200, 0, 0)), Image.new("RGB", (30, 40), (0, 0, 200))]
    texts = ["a red circle", "a blue square in the center"]
    ours = [r.score for r in scorer.score(scorer.image_embeddings(scorer.pixel_values(images)), texts)]
    tokens = tok(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], pixel_values=scorer.pixel_values(images))
    cosine = (out.logits_per_image.diagonal() - model.logit_bias) / model.logit_scale.exp()
    assert ours == pytest.approx((100 * cosine).tolist(), abs=1e-3)


def test_an_unreachable_judge_leaves_shards_unjudged_and_says_so(tmp_path, captioner):
    import socket

    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.cli import app
    from recaption.config import RunConfig
    from recaption.readers import discover_shards

    from ..conftest import write_shards

    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=3)
    out = tmp_path / "out"
    CaptionPipeline(captioner.config, RunConfig(output=str(out)), captioner).run(discover_shards(shards))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = CliRunner().invoke(app, ["judge", str(out), "--endpoint", dead, "--model", "j",
                                      "--fraction", "1", "--retries", "0"])
    assert result.exit_code == 1, result.output
    assert "00000: all 6 judge requests failed; left unjudged" in " ".join(result.output.split())
    assert all(s is None for s in pq.read_table(out / "00000.parquet").column("re_judge_status").to_pylist())


def test_every_reader_of_flags_takes_them_from_the_one_table():
    """Rows, the schema, passes, stats and the report all read flags.CAPTION_FLAGS."""
    from recaption.captioning.rows import sample_row
    from recaption.flags import CAPTION_FLAGS
    from recaption.passes import FLAGS, parse_pass
    from recaption.quality import report, stats
    from recaption.samples.sample import Sample
    from recaption.schema import output_schema

    columns = [f"re_{f.name}" for f in CAPTION_FLAGS]
    assert set(columns) <= set(output_schema().names)
    assert FLAGS == tuple(f.name for f in CAPTION_FLAGS)
    assert set(columns) <= set(stats.FLAGS) and tuple(columns) == tuple(report.GALLERY_FLAGS)
    named = parse_pass("short=Describe briefly.")
    sample = Sample(key="k", url=None, org_caption="alt", sha256=None, image_bytes=b"")
    sample.captions = {"re_caption": "The image shows a cat.", named.column: ",,,,"}
    row = sample_row(sample, [named])
    assert row[named.flag_column("degenerate")] is True and row[named.flag_column("boilerplate")] is False
    assert set(named.flag_column(f.name) for f in CAPTION_FLAGS) <= set(row)


def test_preferences_leave_out_degenerate_recaptions_and_say_how_many(tmp_path):
    """",,,,," scores higher than many alt-texts: counted, it would call junk a win."""
    from recaption.quality.stats import collect, comparison

    from .test_selection import row, write_output

    rows = [row("a", re_clip_score=30.0, org_clip_score=20.0),
            row("b", re_clip_score=10.0, org_clip_score=20.0),
            row("c", re_caption=",,,,,,,,", re_degenerate=True, re_clip_score=40.0, org_clip_score=20.0),
            row("d", re_caption="...", re_degenerate=True, re_clip_score=35.0, org_clip_score=20.0)]
    write_output(tmp_path / "out", "00000", rows)
    summary = collect(str(tmp_path / "out")).summary()
    pref = summary["clip_preference"]
    assert (pref["n"], pref["re_higher"], pref["org_higher"], pref["left_out_degenerate"]) == (2, 1, 1, 2)
    line = next(line for line in comparison(summary) if line.measure.startswith("CLIP prefers"))
    assert "2 images whose recaption is degenerate left out" in line.made_by
    # Every pair left out: the measure stays, with no shares and the reason, not silently gone
    write_output(tmp_path / "junk", "00000", rows[2:])
    summary = collect(str(tmp_path / "junk")).summary()
    assert summary["clip_preference"]["n"] == 0 and summary["clip_preference"]["re_higher_share"] is None
    line = next(line for line in comparison(summary) if line.measure.startswith("CLIP prefers"))
    assert (line.re, line.org) == ("-", "-") and "over 0 images" in line.made_by
    assert "2 images whose recaption is degenerate left out" in line.made_by


def test_the_caption_summary_puts_flags_beside_statuses_and_names_junk(capsys):
    from recaption.cli.common import print_caption_summary
    from recaption.spine.results import DONE, RunSummary, ShardResult

    junk = RunSummary(results=[ShardResult("00000", "in.tar", DONE, 20, {"ok": 20},
                                           counts={"re_degenerate": 18, "re_truncated": 18})])
    print_caption_summary(junk, "out", "tiny")
    printed = " ".join(capsys.readouterr().out.split())
    assert "captions flagged re_degenerate │ 18 of 20 (90%)" in printed
    assert "18 of the 20 captions written are degenerate" in printed and "tiny" in printed
    fine = RunSummary(results=[ShardResult("00000", "in.tar", DONE, 20, {"ok": 20},
                                           counts={"re_degenerate": 1})])
    print_caption_summary(fine, "out", "tiny")
    assert "degenerate (next to no words" not in capsys.readouterr().out
