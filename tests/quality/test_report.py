"""`recap report` and `recap stats` as a user runs them: the models named beside every number, our
numbers beside the paper's, per-image preferences, rounding, failed rows, the degenerate flag,
captions that wrap, a missing dependency, atomic writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recaption.captioning.rows import sample_row
from recaption.cli import app
from recaption.quality.clip import ClipScorer
from recaption.samples.sample import Sample
from recaption.samples.shards import write_webdataset_shard
from recaption.schema import JUDGE_METADATA_KEY, METADATA_KEY, SCORES_METADATA_KEY, output_schema

from ..conftest import make_records, write_shards

runner = CliRunner()
CAPTIONER = {
    "conditional": False,
    "max_new_tokens": 128,
    "model": "acme/llava-test-8b",
    "prompt": "Describe this image in detail.",
    "seed": 0,
    "recaption_version": "0.1.0",
}
TINY_CLIP_WARNING = "mean nothing for real photos"  # from TINY_CLIP_NOTE


def write_output(out, name: str, samples: list[Sample], shard_path=None, clip_model=None, judge=None):
    """One finished shard as `recap caption` leaves it (parquet with the run's provenance in its
    metadata, {name}_stats.json naming its input, the .done marker), then stamped the way
    `recap score` / `recap judge` stamp the files they fill."""
    out.mkdir(parents=True, exist_ok=True)
    metadata = {METADATA_KEY: json.dumps(CAPTIONER).encode()}
    if clip_model:
        # what `recap score` stamps (ClipScorer.provenance() needs no loaded model)
        stamp = {**ClipScorer(clip_model).provenance(), "scored_at": "2026-01-02T03:04:05+00:00"}
        metadata[SCORES_METADATA_KEY] = json.dumps(stamp).encode()
    if judge:
        metadata[JUDGE_METADATA_KEY] = json.dumps(
            {"model": judge, "fraction": 0.5, "seed": 0, "prompt": "..."}
        ).encode()
    schema = output_schema(conditional=False).with_metadata(metadata)
    pq.write_table(
        pa.Table.from_pylist([sample_row(s) for s in samples], schema=schema), out / f"{name}.parquet"
    )
    (out / f"{name}_stats.json").write_text(json.dumps({"source": str(shard_path or out / "gone.tar")}))
    (out / f"{name}.done").write_text(json.dumps(CAPTIONER))


def captioned(key, re_caption, org_caption="alt text", re_clip=None, org_clip=None):
    sample = Sample(
        key=key, url=f"https://example.org/{key}.jpg", org_caption=org_caption,
        captions={"re_caption": re_caption},
    )
    sample.re_truncated = False
    if re_clip is not None:
        sample.scores.update(
            re_clip_score=re_clip, org_clip_score=org_clip, re_clip_truncated=False, org_clip_truncated=False
        )
    return sample


def failed(key, status="decode_error", error="OSError: image file is truncated"):
    return Sample(key=key, org_caption="alt text", status=status, error=error)


def with_judge(out, name, ratings: dict[str, tuple[int, int]]):
    """Fill the judge columns as `recap judge` does."""
    table = pq.read_table(out / f"{name}.parquet")
    keys = table.column("key").to_pylist()
    for i, column in enumerate(("re_gpt4v_score", "org_gpt4v_score")):
        values = pa.array([ratings.get(k, (None, None))[i] for k in keys], pa.int64())
        table = table.set_column(table.schema.get_field_index(column), column, values)
    pq.write_table(table, out / f"{name}.parquet")


class _Text(HTMLParser):
    """The page's visible text (no SVG, no style), and the text of each table row by table id."""

    def __init__(self):
        super().__init__()
        self.skip = 0
        self.table = None
        self.rows: dict[str, list[str]] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("svg", "style"):
            self.skip += 1
        if tag == "table":
            self.table = dict(attrs).get("id")
        if tag == "tr" and self.table:
            self.rows.setdefault(self.table, []).append("")

    def handle_endtag(self, tag):
        if tag in ("svg", "style"):
            self.skip -= 1
        if tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.skip:
            return
        self.text.append(data)
        if self.table and self.rows.get(self.table):
            self.rows[self.table][-1] += " " + " ".join(data.split())


def page(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    return parser


def report(out, tmp_path, *extra) -> str:
    path = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(out), "-o", str(path), *extra])
    assert result.exit_code == 0, result.output
    return path.read_text()


def stats_json(out) -> dict:
    result = runner.invoke(app, ["stats", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def scored(tmp_path):
    """4 images: the recaption scores higher on 3 (by hand: 75% / 25%), 1 decode failure;
    CLIP by the built-in tiny-clip, ratings by a judge on 2 images."""
    shard = tmp_path / "in" / "00000.tar"
    keys = write_webdataset_shard(shard, make_records(5))
    samples = [
        captioned(
            keys[0], "a red square on a white background with a blue circle", re_clip=30.0, org_clip=20.0
        ),
        captioned(
            keys[1], "two green triangles next to a yellow star in the corner", re_clip=25.5, org_clip=25.0
        ),
        captioned(
            keys[2], "a large purple diamond in the middle of the picture", re_clip=18.0, org_clip=12.25
        ),
        captioned(keys[3], "a small orange circle at the top of a grey field", re_clip=10.0, org_clip=22.0),
        failed(keys[4]),
    ]
    out = tmp_path / "out"
    write_output(out, "00000", samples, shard, clip_model="tiny-clip", judge="judge-vlm-7b")
    with_judge(out, "00000", {keys[0]: (5, 3), keys[1]: (4, 4)})
    return out


def test_report_names_every_model_beside_the_numbers_it_made(scored, tmp_path):
    text = page(report(scored, tmp_path))
    models = text.rows["models"]
    captioner = next(r for r in models if "captioner" in r)
    assert "acme/llava-test-8b" in captioner and "Describe this image in detail." in captioner
    assert "greedy, at most 128 new tokens" in captioner and "4 rows" in captioner
    clip = next(r for r in models if "CLIP scorer" in r)
    assert "tiny-clip" in clip and "4 rows" in clip
    assert any(TINY_CLIP_WARNING in r for r in models)
    judge = next(r for r in models if r.strip().startswith("judge"))
    assert "judge-vlm-7b" in judge and "2 rows" in judge
    rows = text.rows["comparison"]
    clip_rows = [r for r in rows if "CLIP" in r.split("made by")[0][:40]]
    assert len(clip_rows) == 2  # mean and preference, each naming tiny-clip and warning beside it
    assert all("tiny-clip" in r and TINY_CLIP_WARNING in r for r in clip_rows)
    assert "acme/llava-test-8b" in next(r for r in rows if r.strip().startswith("caption length"))
    assert "judge-vlm-7b" in next(r for r in rows if r.strip().startswith("judge rating"))


def test_preferences_beside_the_papers_figures(scored, tmp_path):
    html = report(scored, tmp_path)
    rows = page(html).rows["comparison"]
    preference = next(r for r in rows if r.strip().startswith("CLIP prefers"))
    assert "75.00%" in preference and "25.00%" in preference and "over 4 images" in preference
    assert "49.57% / 50.43%" in preference and "89.91% / 10.09%" in preference  # the paper's, same measure
    length = next(r for r in rows if r.strip().startswith("caption length"))
    assert "49.43 / 10.22" in length
    # judge: image 0 rated 5 vs 3, image 1 4 vs 4: one preferred, one tie, means 4.5 vs 3.5
    judge = next(r for r in rows if r.strip().startswith("judge rating"))
    assert "4.50" in judge and "3.50" in judge and "4.14 / 3.71" in judge
    judge_pref = next(r for r in rows if r.strip().startswith("judge rates"))
    assert "50.00%" in judge_pref and "0.00%" in judge_pref and "1 tie)" in judge_pref
    # the per-image scatter with the diagonal, and the share above it
    scatter = html[html.index('id="plot-clip-scatter"') :]
    scatter = scatter[: scatter.index("</figure>")]
    assert "75.00% of 4 images" in scatter and "y = x" in scatter
    # recap stats says the same
    summary = stats_json(scored)
    assert summary["clip_preference"] == {
        "n": 4,
        "re_higher": 3,
        "org_higher": 1,
        "ties": 0,
        "re_higher_share": 0.75,
        "org_higher_share": 0.25,
        "left_out_degenerate": 0,
    }
    assert summary["judge_preference"]["ties"] == 1 and summary["judge_preference"]["re_higher_share"] == 0.5
    assert summary["paper"]["clip_preference_pct"]["LongCLIP-L"] == {"re": 89.91, "org": 10.09}
    assert [m["model"] for m in summary["models"]["clip"]] == ["tiny-clip"]
    assert TINY_CLIP_WARNING in summary["models"]["clip"][0]["note"]
    table = runner.invoke(app, ["stats", str(scored)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "75.00%" in table.output and "89.91%" in table.output and TINY_CLIP_WARNING in table.output
    assert "not counted" not in table.output
    # a shard left unfinished (no marker) is counted nowhere: the numbers say so
    import shutil

    shutil.copy(scored / "00000.parquet", scored / "00001.parquet")
    table = runner.invoke(app, ["stats", str(scored)], env={"COLUMNS": "200"})
    said = " ".join(table.output.split())
    assert table.exit_code == 0 and "not counted: 1 shard with a parquet but no .done marker (00001)" in said


def test_numbers_are_rounded_for_display(tmp_path):
    # median of -21.3901 and -21.4 is -21.395049999999998 in floating point
    assert (-21.3901 + -21.4) / 2 == -21.395049999999998
    shard = tmp_path / "in" / "00000.tar"
    keys = write_webdataset_shard(shard, make_records(2))
    samples = [
        captioned(keys[0], "one two three four", re_clip=-21.3901, org_clip=1 / 3),
        captioned(keys[1], "five six seven", re_clip=-21.4, org_clip=2 / 3),
    ]
    out = tmp_path / "out"
    write_output(out, "00000", samples, shard, clip_model="openai/clip-vit-large-patch14")
    text = " ".join(page(report(out, tmp_path)).text).replace("arXiv 2406.08478", "")
    assert not re.search(r"\d\.\d{3,}", text), re.findall(r"\S*\d\.\d{3,}\S*", text)
    assert "-21.40 (median -21.40)" in text  # mean and median -21.39505, to 2 decimals
    summary = stats_json(out)
    assert summary["clip_score"]["re"]["median"] == -21.395
    ours = json.dumps({k: v for k, v in summary.items() if k != "paper"})
    assert not re.search(r"\d\.\d{5,}", ours), "JSON numbers are rounded to 4 decimals"
    assert summary["models"]["clip"][0]["note"] is None  # a real CLIP: no warning


def test_failed_rows_are_listed_with_a_cap(tmp_path):
    samples = [captioned(f"{i:09d}", "a b c d e") for i in range(3)]
    samples += [failed(f"{i:09d}", error=f"OSError: broken image {i}") for i in range(3, 153)]
    out = tmp_path / "out"
    write_output(out, "00000", samples)
    text = page(report(out, tmp_path))
    listed = text.rows["failed-rows"][1:]  # after the header
    assert len(listed) == 100
    assert "000000003" in listed[0] and "decode_error" in listed[0] and "broken image 3" in listed[0]
    assert "The first 100 of 150 failed rows" in " ".join(" ".join(text.text).split())
    assert stats_json(out)["failed_rows"]["count"] == 150
    table = runner.invoke(app, ["stats", str(out)], env={"COLUMNS": "200"})
    assert "failed rows: 150 (first 10" in table.output and "broken image 12" in table.output
    assert "broken image 13" not in table.output


def test_no_scores_say_so_and_an_unrecorded_clip_model_is_named_as_such(tmp_path):
    out = tmp_path / "out"
    write_output(out, "00000", [captioned("000000000", "a b c d", re_clip=1.0, org_clip=2.0)])  # no stamp
    write_output(out, "00001", [captioned("000000001", "e f g h")])
    clip = stats_json(out)["models"]["clip"]
    assert [(c["model"], c["shards"], c["rows"]) for c in clip] == [(None, 1, 1)]
    assert "not recorded" in clip[0]["note"]
    models = page(report(out, tmp_path)).rows["models"]
    assert any("not recorded" in r for r in models)
    assert any("none: no ratings" in r for r in models)


def test_scores_from_two_clip_models_are_named_as_a_mix(tmp_path):
    out = tmp_path / "out"
    write_output(
        out, "00000", [captioned("000000000", "a b c d", re_clip=1.0, org_clip=2.0)], clip_model="tiny-clip"
    )
    write_output(
        out, "00001", [captioned("000000001", "e f g h", re_clip=3.0, org_clip=2.0)], clip_model="m/clip"
    )
    rows = page(report(out, tmp_path)).rows["comparison"]
    preference = next(r for r in rows if r.strip().startswith("CLIP prefers"))
    assert "2 CLIP models made these numbers, pooled here" in preference
    assert "tiny-clip (1 shard)" in preference and "m/clip (1 shard)" in preference


def test_scores_by_the_old_random_tiny_clip_say_they_mean_nothing(tmp_path):
    out = tmp_path / "out"
    write_output(out, "00000", [captioned("000000000", "a b c d", re_clip=1.0, org_clip=2.0)])
    table = pq.read_table(out / "00000.parquet")  # stamped as recap score stamped before versions
    metadata = {
        **table.schema.metadata,
        SCORES_METADATA_KEY: json.dumps({"clip_model": "tiny-clip"}).encode(),
    }
    pq.write_table(table.replace_schema_metadata(metadata), out / "00000.parquet")
    note = stats_json(out)["models"]["clip"][0]["note"]
    assert "older built-in version" in note and "mean nothing" in note


# -- re_degenerate --------------------------------------------------------------------------------


def test_degenerate_column_follows_the_published_schema():
    from recaption.schema import PUBLISHED_FIELDS

    schema = output_schema(conditional=False)
    assert schema.names[: len(PUBLISHED_FIELDS)] == [f.name for f in PUBLISHED_FIELDS]
    assert schema.field("re_degenerate").type == pa.bool_()
    assert schema.names.index("re_degenerate") == schema.names.index("re_boilerplate") + 1
    assert sample_row(captioned("k", ""))["re_degenerate"] is True  # status ok, empty caption
    assert sample_row(captioned("k", "A dog runs on a beach."))["re_degenerate"] is False
    assert sample_row(failed("k"))["re_degenerate"] is None  # no caption: null


class _Degenerating:
    """The tiny captioner, with some of its captions replaced by degenerate ones."""

    def __init__(self, inner, texts):
        self.inner, self.texts = inner, list(texts)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, inputs, decoding=None):
        generations = self.inner.generate(inputs, decoding)
        return [replace(g, text=self.texts.pop(0)) if self.texts else g for g in generations]


def test_degenerate_captions_are_flagged_counted_and_shown(tmp_path, captioner):
    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import RunConfig
    from recaption.readers import discover_shards

    shards = write_shards(tmp_path / "in", n_shards=1, per_shard=5)
    out = tmp_path / "out"
    texts = ["", ",,,,,,,,,,,,,,,,,,,,,,,,,,,,,,", "a large red circle in the top left corner"]
    engine = _Degenerating(captioner, texts)
    CaptionPipeline(captioner.config, RunConfig(output=str(out)), engine).run(discover_shards(shards))
    rows = pq.read_table(out / "00000.parquet").to_pylist()
    assert [r["re_degenerate"] for r in rows][:3] == [True, True, False]
    assert rows[0]["re_caption"] == "" and rows[0]["status"] == "ok"
    shard_stats = json.loads((out / "00000_stats.json").read_text())
    expected = sum(bool(r["re_degenerate"]) for r in rows) / 5
    assert shard_stats["flag_rates"]["re_degenerate"] == pytest.approx(expected, abs=1e-4) and expected >= 0.4
    assert stats_json(out)["flag_rates"]["re_degenerate"] == pytest.approx(expected, abs=1e-4)
    html = report(out, tmp_path, "--gallery", "5")
    flag_row = next(r for r in page(html).rows["flags"] if "re_degenerate" in r)
    assert f"{100 * expected:.2f}%" in flag_row
    assert html.count('<span class="flag">re_degenerate</span>') == sum(
        bool(r["re_degenerate"]) for r in rows
    )


def test_output_of_an_older_version_gets_the_flag_from_its_text(tmp_path):
    out = tmp_path / "out"
    write_output(out, "00000", [captioned("000000000", ",,,,,,"), captioned("000000001", "a cat on a mat")])
    table = pq.read_table(out / "00000.parquet")
    pq.write_table(table.drop_columns(["re_degenerate"]), out / "00000.parquet")
    assert stats_json(out)["flag_rates"]["re_degenerate"] == 0.5


# -- the page in a browser --------------------------------------------------------------------------

_MEASURE = """<script>
window.addEventListener('load', () => {
  const cards = [...document.querySelectorAll('.card')];
  const right = e => e.getBoundingClientRect().right;
  const wide = cards.filter(c => c.scrollWidth > c.clientWidth + 1 ||
    [...c.querySelectorAll('p')].some(p => right(p) > right(c) + 1));
  const page = document.documentElement.scrollWidth > window.innerWidth + 1;
  const measured = {cards: cards.length, overflowing: wide.length, page};
  document.body.setAttribute('data-measured', JSON.stringify(measured));
});
</script>"""


def test_captions_without_spaces_wrap_inside_their_cards(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium package is not installed")
    shard = tmp_path / "in" / "00000.tar"
    keys = write_webdataset_shard(shard, make_records(3))
    samples = [
        captioned(keys[0], "," * 300, org_caption="x" * 400),
        captioned(keys[1], "https://example.org/" + "a" * 300, org_caption="."),
        captioned(keys[2], "a normal caption with ordinary words in it"),
    ]
    out = tmp_path / "out"
    write_output(out, "00000", samples, shard)
    html = report(out, tmp_path)
    assert "<script" not in html  # the report itself has none: the test adds its measuring script
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", _MEASURE + "</body>"))
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=900,1600",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r"data-measured=\"([^\"]*)\"", dom.stdout)
    assert found, dom.stderr[-2000:]
    measured = json.loads(found.group(1).replace("&quot;", '"'))
    assert measured == {"cards": 3, "overflowing": 0, "page": False}


# -- dependencies and writing ------------------------------------------------------------------------


def test_a_missing_plotting_library_is_one_line_naming_pip(scored, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    result = runner.invoke(app, ["report", str(scored), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.rstrip().endswith("pip install matplotlib")
    assert not (tmp_path / "r.html").exists()


def test_report_and_stats_files_are_written_whole_or_not_at_all(scored, tmp_path, monkeypatch):
    target = tmp_path / "site" / "report.html"
    target.parent.mkdir()
    target.write_text("the previous report")
    import recaption.quality.report as report_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full halfway")

    monkeypatch.setattr(report_module, "gallery", broken)
    result = runner.invoke(app, ["report", str(scored), "-o", str(target)])
    assert result.exit_code != 0
    assert target.read_text() == "the previous report"
    monkeypatch.undo()
    assert runner.invoke(app, ["report", str(scored), "-o", str(target)]).exit_code == 0
    assert target.read_text().rstrip().endswith("</html>")
    saved = tmp_path / "site" / "stats.json"
    assert runner.invoke(app, ["stats", str(scored), "-o", str(saved)]).exit_code == 0
    assert json.loads(saved.read_text())["clip_preference"]["re_higher"] == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html", "stats.json"]  # no temporaries


def test_slices_of_one_folder_count_as_one_captioner(tmp_path, captioner):
    """Each folder slice's marker records its own files; the captioner is still one."""
    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import CaptionConfig, RunConfig
    from recaption.quality.stats import collect
    from recaption.readers import discover_shards

    from ..conftest import image_bytes

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    pipeline = CaptionPipeline(CaptionConfig(max_new_tokens=24), RunConfig(str(tmp_path / "out")), captioner)
    pipeline.run(discover_shards([str(photos)], folder_shard_size=2))
    captioners = collect(str(tmp_path / "out")).summary()["models"]["captioner"]
    assert len(captioners) == 1, captioners


def test_a_negative_gallery_is_one_line_before_any_work(scored, tmp_path):
    result = runner.invoke(app, ["report", str(scored), "-o", str(tmp_path / "r.html"), "--gallery", "-5"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --gallery -5: must be 0 (no gallery) or more"
    assert not (tmp_path / "r.html").exists()
