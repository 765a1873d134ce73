"""`recap export` (recaption.export): caption output as WebDataset tars that webdataset and
`recap caption`'s readers read unchanged, with the caption chosen per column or mixed."""

from __future__ import annotations

import io
import json
import math
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

import recaption
from recaption.readers import open_shard
from recaption.samples.shards import ShardRecord, img2dataset_key, write_webdataset_shard
from recaption.spine.contract import OutputAmongInputsError
from recaption.spine.errors import RecaptionError
from recaption.spine.results import ConfigMismatchError
from recaption.steps.export import (
    CaptionChoiceError,
    export_lines,
    image_extension,
    not_exported,
    takes_original,
)

from ..conftest import image_bytes
from .test_selection import row, write_output


def read_wds(path) -> list[dict]:
    import webdataset as wds

    return list(wds.WebDataset(str(path), shardshuffle=False).decode())


def png(seed: int = 0, size: int = 4) -> bytes:
    return image_bytes(size, size, fmt="PNG", seed=seed)


def write_input(path, n: int, shard_id: int = 0) -> list[str]:
    """An img2dataset-layout tar of n tiny PNGs; returns the keys."""
    records = [ShardRecord(png(i), f"alt {i}", f"https://example.org/{i}.png", "png") for i in range(n)]
    return write_webdataset_shard(path, records, shard_id=shard_id)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory, captioner):
    """`recap caption` output of the tiny model on 6 shapes images in 2 shards."""
    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import RunConfig
    from recaption.readers import discover_shards
    from recaption.shapes import write_shapes_shards

    tmp = tmp_path_factory.mktemp("captioned")
    shards = write_shapes_shards(tmp / "in", count=6, shard_size=3)
    CaptionPipeline(captioner.config, RunConfig(output=str(tmp / "out")), captioner).run(
        discover_shards([str(p) for p in shards])
    )
    return tmp


@pytest.mark.parametrize("caption", ["re_caption", "org_caption", "mix:p=0.5"])
def test_export_writes_tars_that_webdataset_and_recap_read(captioned, tmp_path, caption):
    out, dest = captioned / "out", tmp_path / "wds"
    summary = recaption.export(out, dest, caption=caption, seed=3, format="keep")
    assert summary.done == ["00000", "00001"] and not summary.failed
    assert (summary.count("rows_in"), summary.status_counts["exported"], not_exported(summary)) == (6, 6, {})
    assert export_lines(summary)[-1].startswith(f"exported 6 of 6 rows with --caption {caption} to ")

    for name in ("00000", "00001"):
        rows = {r["key"]: r for r in pq.read_table(out / f"{name}.parquet").to_pylist()}
        images = {s.key: s.image_bytes for s in open_shard(str(captioned / "in" / f"{name}.tar"))}
        expected = {}
        for key, r in rows.items():
            column = caption
            if caption.startswith("mix"):
                column = "org_caption" if takes_original(key, 0.5, 3) else "re_caption"
            expected[key] = (r[column], column)

        samples = read_wds(dest / f"{name}.tar")
        assert [s["__key__"] for s in samples] == list(rows)  # input order, every row
        for s in samples:
            key, r = s["__key__"], rows[s["__key__"]]
            assert s["png"] == images[key]  # the original bytes
            assert (s["txt"], s["json"]["caption_source"]) == expected[key]
            meta = s["json"]
            assert {k: meta[k] for k in ("key", "url", "sha256", "org_caption", "re_caption")} == {
                k: r[k] for k in ("key", "url", "sha256", "org_caption", "re_caption")
            }
            assert meta["re_clip_score"] is None and "org_clip_score" in meta  # not scored: null

        read_back = list(open_shard(str(dest / f"{name}.tar")))  # as `recap caption` reads it
        assert [(s.key, s.org_caption, s.url, s.sha256, s.image_bytes) for s in read_back] == [
            (key, expected[key][0].strip(), rows[key]["url"], rows[key]["sha256"], images[key])
            for key in rows
        ]
        stats = json.loads((dest / f"{name}_stats.json").read_text())
        assert (stats["rows"], stats["exported"], stats["not_exported"]) == (3, 3, {})
        assert stats["images_from"] == [str(captioned / "in" / f"{name}.tar")]
        done = json.loads((dest / f"{name}.done").read_text())
        assert (done["caption"], done["seed"], done["from"]) == (caption, 3, str(out))
    if caption.startswith("mix"):
        assert summary.settings["caption"] == "mix:p=0.5"
    assert not list(dest.glob("*.tmp"))


def test_mix_takes_the_original_with_probability_p_and_is_fixed_by_the_seed(tmp_path):
    n = 400
    keys = write_input(tmp_path / "in" / "00000.tar", n)
    rows = [row(k, re_caption=f"recaption {k}") for k in keys]
    write_output(tmp_path / "out", "00000", rows, source=tmp_path / "in" / "00000.tar")

    summary = recaption.export(tmp_path / "out", tmp_path / "a", caption="mix:p=0.8", seed=7)
    assert summary.status_counts["exported"] == n
    samples = read_wds(tmp_path / "a" / "00000.tar")
    sources = [s["json"]["caption_source"] for s in samples]
    share = sources.count("re_caption") / n
    assert abs(share - 0.2) < 3 * math.sqrt(0.2 * 0.8 / n), share  # p is the ORIGINAL's probability
    for s, source in zip(samples, sources, strict=True):
        assert s["txt"] == f"{'recaption' if source == 're_caption' else 'alt text'} {s['__key__']}"
    stats = json.loads((tmp_path / "a" / "00000_stats.json").read_text())
    assert stats["caption_sources"] == {"org_caption": n - sources.count("re_caption"),
                                        "re_caption": sources.count("re_caption")}

    recaption.export(tmp_path / "out", tmp_path / "b", caption="mix:p=0.8", seed=7)
    recaption.export(tmp_path / "out", tmp_path / "c", caption="mix:p=0.8", seed=8)
    again = [(s["__key__"], s["txt"]) for s in read_wds(tmp_path / "b" / "00000.tar")]
    other = [(s["__key__"], s["txt"]) for s in read_wds(tmp_path / "c" / "00000.tar")]
    assert again == [(s["__key__"], s["txt"]) for s in samples]  # same seed: the same tar content
    assert other != again

    # p=1 / p=0: all originals / all recaptions.
    recaption.export(tmp_path / "out", tmp_path / "p1", caption="mix:p=1")
    assert {s["json"]["caption_source"] for s in read_wds(tmp_path / "p1" / "00000.tar")} == {"org_caption"}
    recaption.export(tmp_path / "out", tmp_path / "p0", caption="mix:p=0")
    assert {s["json"]["caption_source"] for s in read_wds(tmp_path / "p0" / "00000.tar")} == {"re_caption"}


def test_every_row_is_accounted_for_and_a_missing_input_fails_only_its_shard(tmp_path):
    keys = write_input(tmp_path / "in" / "00000.tar", 4)
    out = tmp_path / "out"
    write_output(out, "00000", [
        row(keys[0]),
        row(keys[1], status="decode_error"),
        row(keys[2], re_caption="  "),  # an ok row whose recaption is blank
        row(keys[3]),
        row("not-in-the-input"),
    ], source=tmp_path / "in" / "00000.tar")
    write_output(out, "00001", [row(img2dataset_key(1, 0))], source=tmp_path / "gone" / "00001.tar")
    dest = tmp_path / "wds"

    summary = recaption.export(out, dest, format="keep")
    assert summary.done == ["00000"] and list(summary.errors) == ["00001"]
    assert "00001.tar" in summary.errors["00001"]
    assert any(line.startswith("00001: FAILED") for line in export_lines(summary))
    assert "; 1 shard FAILED, their rows not counted (00001)" in export_lines(summary)[-1]
    assert summary.status_counts["exported"] == 2 and not_exported(summary) == {
        "status_not_ok": 1, "no_caption": 1, "image_not_found": 1
    }
    assert [s["__key__"] for s in read_wds(dest / "00000.tar")] == [keys[0], keys[3]]
    stats = json.loads((dest / "00000_stats.json").read_text())
    assert stats["rows"] == 5 and stats["exported"] == 2
    assert stats["not_exported"] == {"status_not_ok": 1, "no_caption": 1, "image_not_found": 1}
    assert (dest / "00000.done").exists()
    assert not (dest / "00001.done").exists() and not (dest / "00001.tar").exists()
    assert not list(dest.glob("*.tmp"))

    # The images were moved: --images finds them by shard name; the finished shard is skipped.
    moved = [ShardRecord(png(9), "alt", "u", "png")]
    write_webdataset_shard(tmp_path / "moved" / "00001.tar", moved, shard_id=1)
    write_input(tmp_path / "moved" / "00000.tar", 4)
    again = recaption.export(out, dest, images=[str(tmp_path / "moved" / "*.tar")], format="keep")
    assert again.skipped == ["00000"] and again.done == ["00001"] and not again.failed
    assert (again.status_counts["exported"], again.count("rows_in")) == (3, 6)  # skipped: from stats
    assert [s["png"] for s in read_wds(dest / "00001.tar")] == [png(9)]
    stats = json.loads((dest / "00001_stats.json").read_text())
    assert stats["images_from"] == [str(tmp_path / "moved" / "00001.tar")]

    # A redo (--overwrite) that fails keeps the finished export as it was.
    before = (dest / "00000.tar").read_bytes()
    (tmp_path / "in" / "00000.tar").unlink()
    redo = recaption.export(out, dest, overwrite=True, format="keep")
    assert "00000" in redo.errors
    assert (dest / "00000.done").exists() and (dest / "00000.tar").read_bytes() == before
    assert not list(dest.glob("*.tmp"))


def test_keys_a_tar_cannot_hold_and_other_caption_columns(tmp_path):
    """A folder's keys (`sub/cat.v2`) are written as `sub_cat_v2` and read back from the json;
    a conditional caption column can be exported; jpg and png keep their formats."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "cat.v2.png").write_bytes(png(1, 8))
    (folder / "dog.jpg").write_bytes(image_bytes(8, 8, fmt="JPEG"))
    out = tmp_path / "out"
    rows = [
        row(key, re_caption=f"long caption of {key}", re_caption_condition_diverse_topk=f"short {key}")
        for key in ("dog", "sub/cat.v2")
    ]
    write_output(out, "captioned", rows, conditional=True)  # its recorded input is gone: --images

    dest = tmp_path / "wds"
    summary = recaption.export(out, dest, images=[str(folder)], caption="re_caption_condition_diverse_topk",
                               format="keep")
    assert summary.status_counts["exported"] == 2 and not summary.failed
    with tarfile.open(dest / "captioned.tar") as tar:
        assert tar.getnames() == ["dog.jpg", "dog.txt", "dog.json", "sub_cat_v2.png", "sub_cat_v2.txt",
                                  "sub_cat_v2.json"]
    samples = {s["__key__"]: s for s in read_wds(dest / "captioned.tar")}
    assert samples["sub_cat_v2"]["png"] == png(1, 8) and samples["sub_cat_v2"]["txt"] == "short sub/cat.v2"
    meta = samples["sub_cat_v2"]["json"]
    assert meta["key"] == "sub/cat.v2" and meta["caption_source"] == "re_caption_condition_diverse_topk"
    assert meta["re_caption"] == "long caption of sub/cat.v2"
    assert meta["re_caption_condition_diverse_topk"] == "short sub/cat.v2"
    assert Image.open(io.BytesIO(samples["dog"]["jpg"])).format == "JPEG"
    assert [(s.key, s.org_caption) for s in open_shard(str(dest / "captioned.tar"))] == [
        ("dog", "short dog"), ("sub/cat.v2", "short sub/cat.v2")
    ]
    assert json.loads((dest / "captioned_stats.json").read_text())["keys_renamed"] == 1


@pytest.mark.parametrize(
    "caption,says",
    [
        ("nope", "has no text column nope; its text columns: re_caption, org_caption"),
        ("re_length", "has no text column re_length"),  # a number column
        ("url", "has no text column url"),  # where the row came from, not a caption
        ("mix:re_caption=0.5,sha256=0.5", "has no text column sha256"),
        ("mix:p=1.5", "mix:p=P with P in [0, 1]"),
        ("mix", "mix:p=P with P in [0, 1]"),
        ("mix:p=abc", "mix:p=P with P in [0, 1]"),
        ("", "--caption is empty"),
    ],
)
def test_caption_choices_that_cannot_be_made_are_refused_in_one_line(tmp_path, caption, says):
    write_output(tmp_path / "out", "00000", [row("a")])
    with pytest.raises(CaptionChoiceError) as caught:
        recaption.export(tmp_path / "out", tmp_path / "wds", caption=caption)
    assert isinstance(caught.value, RecaptionError)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "wds").exists()


def test_reruns_and_destinations(tmp_path):
    keys = write_input(tmp_path / "in" / "00000.tar", 2)
    out = tmp_path / "out"
    write_output(out, "00000", [row(k) for k in keys], source=tmp_path / "in" / "00000.tar")
    with pytest.raises(OutputAmongInputsError, match="is the input"):
        recaption.export(out, out)
    with pytest.raises(OutputAmongInputsError, match="the input .*in"):  # the images' folder
        recaption.export(out, tmp_path / "in")
    with pytest.raises(OutputAmongInputsError, match="lies inside the input .*in"):  # read back as images
        recaption.export(out, tmp_path / "in" / "sub")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["00000.tar"]
    dest = tmp_path / "wds"
    recaption.export(out, dest, caption="org_caption")
    stamp = (dest / "00000.tar").stat().st_mtime_ns
    assert recaption.export(out, dest, caption="org_caption").skipped == ["00000"]
    assert (dest / "00000.tar").stat().st_mtime_ns == stamp
    said = 'caption "org_caption" there, "re_caption" now.*--overwrite'
    with pytest.raises(ConfigMismatchError, match=said):
        recaption.export(out, dest, caption="re_caption")
    redone = recaption.export(out, dest, caption="re_caption", overwrite=True)
    assert redone.done == ["00000"]
    assert {s["txt"] for s in read_wds(dest / "00000.tar")} == {"a red circle on white"}


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"),
                                     ("BMP", "bmp"), ("TIFF", "tiff")])
def test_image_extension_from_the_bytes(fmt, ext):
    assert image_extension(image_bytes(8, 8, fmt=fmt)) == ext
    assert image_extension(b"not an image") is None and image_extension(None) is None


def test_the_default_export_is_one_format_upright_and_loads_in_datasets_and_webdataset(tmp_path):
    """Mixed jpg and png input, and a photo stored sideways with an EXIF orientation: the default
    export is all .jpg, the photo's pixels upright as it was captioned, and HF datasets'
    webdataset builder (which refuses mixed types under one prefix) loads the tar."""
    from PIL import Image as PILImage

    folder = tmp_path / "photos"
    folder.mkdir()
    sideways = PILImage.new("RGB", (40, 20), (200, 30, 30))  # stored 40x20, shown 20x40
    exif = sideways.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    sideways.save(folder / "a.jpg", exif=exif)
    (folder / "b.png").write_bytes(png(2, 8))
    upright_jpeg = image_bytes(16, 16, fmt="JPEG", seed=3)
    (folder / "c.jpg").write_bytes(upright_jpeg)
    write_output(tmp_path / "out", "photos", [row(k) for k in ("a", "b", "c")])

    summary = recaption.export(tmp_path / "out", tmp_path / "wds", images=[str(folder)])
    assert summary.status_counts["exported"] == 3
    with tarfile.open(tmp_path / "wds" / "photos.tar") as tar:
        assert sorted(n.rsplit(".", 1)[1] for n in tar.getnames()) == ["jpg"] * 3 + ["json"] * 3 + ["txt"] * 3
        a = PILImage.open(io.BytesIO(tar.extractfile("a.jpg").read()))
        assert a.size == (20, 40) and a.getexif().get(0x0112, 1) == 1, "turned upright, nothing left to turn"
        assert tar.extractfile("c.jpg").read() == upright_jpeg, "already jpg and upright: its own bytes"

    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("webdataset", data_files={"train": str(tmp_path / "wds" / "photos.tar")},
                                   split="train")
    assert loaded.num_rows == 3 and sorted(loaded["__key__"]) == ["a", "b", "c"]
    assert [s["__key__"] for s in read_wds(tmp_path / "wds" / "photos.tar")] == ["a", "b", "c"]
    with pytest.raises(RecaptionError, match="--format"):
        recaption.export(tmp_path / "out", tmp_path / "gif", images=[str(folder)], format="gif")



def test_export_takes_any_pass_column_and_a_mix_over_several(tmp_path):
    v2 = "re_caption_condition_diverse_topk"  # a pass column beside re_caption
    keys = write_input(tmp_path / "in" / "00000.tar", 4)
    rows = [row(k) | {v2: f"v2 caption {k}"} for k in keys]
    rows[0][v2] = None  # a blank draw falls back to the next column of the mix
    write_output(tmp_path / "out", "00000", rows, source=tmp_path / "in" / "00000.tar", conditional=True)
    recaption.export(tmp_path / "out", tmp_path / "one", caption=v2)
    stats = json.loads((tmp_path / "one" / "00000_stats.json").read_text())
    assert stats["exported"] == 3 and stats["caption_sources"] == {v2: 3}
    spec = f"mix:{v2}=0.5,org_caption=0.25,re_caption=0.25"
    recaption.export(tmp_path / "out", tmp_path / "mix", caption=spec, seed=1)
    stats = json.loads((tmp_path / "mix" / "00000_stats.json").read_text())
    assert stats["exported"] == 4 and set(stats["caption_sources"]) <= {v2, "org_caption", "re_caption"}
    assert stats["caption"] == spec
    with pytest.raises(CaptionChoiceError, match="sum to 0.9, not 1"):
        recaption.export(tmp_path / "out", tmp_path / "bad", caption="mix:re_caption=0.5,org_caption=0.4")
    with pytest.raises(CaptionChoiceError, match="has no text column re_caption_dense"):
        recaption.export(tmp_path / "out", tmp_path / "bad",
                         caption="mix:re_caption=0.5,re_caption_dense=0.5")


def test_an_image_too_wide_for_the_format_is_said_so_and_png_takes_it(capfd):
    from io import BytesIO

    from PIL import Image

    from recaption.steps.export import TOO_LARGE_FOR_FORMAT, exported_image

    buf = BytesIO()
    Image.new("RGB", (70000, 2), "white").save(buf, "PNG")
    assert exported_image(buf.getvalue(), "jpg") == (None, TOO_LARGE_FOR_FORMAT)
    assert exported_image(buf.getvalue(), "webp") == (None, TOO_LARGE_FOR_FORMAT)
    assert exported_image(buf.getvalue(), "png")[1] == "png"
    assert "Maximum supported image dimension" not in capfd.readouterr().err  # libjpeg never ran
