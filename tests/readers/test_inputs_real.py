"""Real inputs, no surprises: every input sample gives exactly one row under a unique key, a
sample that cannot be read is a row with a status, a shard that cannot be read at all is named
while the others are captioned, and a finished folder that changed is captioned again."""

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recaption.captioning.pipeline import CaptionPipeline
from recaption.cli import app
from recaption.config import CaptionConfig, RunConfig
from recaption.readers import ColumnConfig, Shard, discover_shards, open_shard
from recaption.samples.sample import Sample

from ..conftest import image_bytes, write_shards

runner = CliRunner()
GiB = 1 << 30
PLUMBING_CLIP = "tiny-clip-random"  # built offline; which score lands on which row is what counts


def flat(output: str) -> str:
    return " ".join(output.split())


def caption(inputs: list[str], out, *more: str):
    return runner.invoke(
        app, ["caption", *inputs, "-o", str(out), "--max-new-tokens", "4", "--device", "cpu", *more]
    )


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# -- 1. a `datasets` parquet whose images are paths -------------------------------------------


def test_datasets_parquet_of_image_paths_reads_each_file_beside_it(tmp_path, monkeypatch):
    from datasets import Dataset, Image

    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    files = {"a.jpg": image_bytes(seed=1), "b.png": image_bytes(seed=2, fmt="PNG"), "gone.jpg": image_bytes()}
    for name, content in files.items():
        (data / "imgs" / name).write_bytes(content)
    monkeypatch.chdir(data)  # datasets stores the paths as given: relative ones stay relative
    paths = [f"imgs/{name}" for name in files]
    Dataset.from_dict({"image": paths, "text": ["one", "two", "three"]}).cast_column(
        "image", Image()
    ).to_parquet("train.parquet")
    (data / "imgs" / "gone.jpg").unlink()
    assert pq.read_table(data / "train.parquet").column("image")[0].as_py()["bytes"] is None
    monkeypatch.chdir(tmp_path)  # relative to the parquet file, not to where recap runs

    result = caption([str(data / "train.parquet")], tmp_path / "out")

    assert result.exit_code == 0, result.output
    out = rows(tmp_path / "out" / "train.parquet")
    assert [r["status"] for r in out] == ["ok", "ok", "missing_image"]
    assert out[0]["sha256"] == hashlib.sha256(files["a.jpg"]).hexdigest()
    assert out[1]["org_caption"] == "two" and out[1]["re_caption"]
    assert "imgs/gone.jpg" in out[2]["error"]


def test_parquet_string_image_column_holds_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(image_bytes(seed=1))
    elsewhere = tmp_path / "b.jpg"
    elsewhere.write_bytes(image_bytes(seed=2))
    path = tmp_path / "paths.parquet"
    paths = ["imgs/a.jpg", str(elsewhere), "https://example.org/c.jpg", None]
    pq.write_table(pa.table({"image": paths}), path)

    samples = list(open_shard(str(path)))

    assert samples[0].image_bytes == (tmp_path / "imgs" / "a.jpg").read_bytes()
    assert samples[1].image_bytes == elsewhere.read_bytes()
    assert samples[2].status == "missing_image" and "recap download" in samples[2].error
    assert samples[3].image_bytes is None and samples[3].ok  # no image: decode says missing_image


# -- 2. one unreadable photo in a folder ----------------------------------------------------------


def test_folder_with_a_dangling_symlink_captions_every_other_photo(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(image_bytes(seed=1))
    (photos / "c.jpg").write_bytes(image_bytes(seed=2))
    os.symlink(tmp_path / "deleted.jpg", photos / "b.jpg")

    result = caption([str(photos)], tmp_path / "out")

    assert result.exit_code == 0, result.output
    out = {r["key"]: r for r in rows(tmp_path / "out" / "photos-00000.parquet")}
    assert {k: r["status"] for k, r in out.items()} == {"a": "ok", "b": "missing_image", "c": "ok"}
    assert str(photos / "b.jpg") in out["b"]["error"]
    assert out["a"]["re_caption"] and out["c"]["re_caption"]


# -- 3. keys are unique within a shard -------------------------------------------------------------


def _solid(color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format=fmt)
    return buf.getvalue()


def _clip_score(scorer, image_path: str, text: str) -> float:
    from recaption.samples.images import decode_image

    image = decode_image(open(image_path, "rb").read())
    embedding = scorer.image_embeddings(scorer.pixel_values([image]))
    return scorer.score(embedding, [text])[0].score


def test_images_sharing_a_stem_get_their_own_rows_and_their_own_scores(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(_solid((220, 30, 30)))
    (photos / "cat.png").write_bytes(_solid((20, 40, 230), "PNG"))
    (photos / "cat_1.jpg").write_bytes(image_bytes(seed=7))  # the suffix must not take its key

    assert caption([str(photos)], tmp_path / "out").exit_code == 0
    scored = runner.invoke(
        app, ["score", str(tmp_path / "out"), "--clip-model", PLUMBING_CLIP, "--device", "cpu"])

    assert scored.exit_code == 0, scored.output
    out = rows(tmp_path / "out" / "photos-00000.parquet")
    from recaption.quality.clip import ClipScorer

    scorer = ClipScorer(PLUMBING_CLIP, device="cpu")
    scorer.setup()
    for row in out:  # each row scored against its own image
        own = _clip_score(scorer, row["url"], row["re_caption"])
        assert row["re_clip_score"] == pytest.approx(own, abs=0.01)
    # ... which matters: the two cats score differently
    other_cat = _clip_score(scorer, out[1]["url"], out[0]["re_caption"])
    assert out[0]["re_clip_score"] != pytest.approx(other_cat, abs=0.01)
    assert [(r["key"], os.path.basename(r["url"])) for r in out] == [
        ("cat", "cat.jpg"), ("cat_2", "cat.png"), ("cat_1", "cat_1.jpg")]


def test_tar_members_of_one_name_each_give_a_sample(tmp_path):
    images = [image_bytes(seed=i) for i in range(4)]
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "x.jpg", images[0])
        _add(tar, "x.txt", b"first x")
        _add(tar, "x.jpg", images[1])  # the same name again: appended, as `tar -r` does
        _add(tar, "x.txt", b"second x")
        _add(tar, "a/same.jpg", images[2])
        _add(tar, "b/same.jpg", images[3])

    samples = list(open_shard(str(path)))

    assert [(s.key, s.image_bytes, s.org_caption) for s in samples] == [
        ("x", images[0], "first x"), ("x_1", images[1], "second x"),
        ("same", images[2], None), ("same_1", images[3], None)]


def test_repeated_parquet_keys_are_made_unique_without_taking_a_given_key(tmp_path):
    path = tmp_path / "keys.parquet"
    images = [image_bytes(seed=i) for i in range(4)]
    pq.write_table(pa.table({"jpg": images, "key": ["k", "k", "k_1", None]}), path)

    keys = [s.key for s in open_shard(str(path))]

    assert keys == ["k", "k_2", "k_1", "keys_000000003"]
    assert keys == [s.key for s in open_shard(str(path))]  # the same keys on every read


# -- 4. a shard that cannot be read at all ---------------------------------------------------------


def test_shard_with_a_wrong_image_column_type_fails_alone(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"image": [1, 2], "caption": ["x", "y"]}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"image": [image_bytes()], "caption": ["z"]}), tmp_path / "in" / "b.parquet")

    result = caption([str(tmp_path / "in")], tmp_path / "out")

    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert "FAILED" in text and "a.parquet" in text and "int64" in text and "--image-col" in text
    assert [r["status"] for r in rows(tmp_path / "out" / "b.parquet")] == ["ok"]
    assert not (tmp_path / "out" / "a.parquet").exists()


def test_shard_that_is_not_a_file_fails_alone(tmp_path):
    write_shards(tmp_path / "in", 2, 1)
    os.remove(tmp_path / "in" / "00000.tar")
    (tmp_path / "in" / "00000.tar").mkdir()  # a folder named like a shard

    result = caption([str(tmp_path / "in" / "*.tar")], tmp_path / "out")

    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "00000.tar" in flat(result.output)
    assert [r["status"] for r in rows(tmp_path / "out" / "00001.parquet")] == ["ok"]


class _ExplodingShard(Shard):
    """A reader that hits something nobody planned for after its first sample."""

    name, source = "boom", "boom.custom"

    def __iter__(self):
        yield Sample(key="first", image_bytes=image_bytes())
        raise KeyError("a field nobody expected")


def test_unexpected_error_in_one_shard_fails_only_that_shard(tmp_path, captioner):
    (good,) = discover_shards(write_shards(tmp_path / "in", 1, 2))
    pipeline = CaptionPipeline(CaptionConfig(max_new_tokens=24), RunConfig(str(tmp_path / "out")), captioner)

    summary = pipeline.run([_ExplodingShard(), good])

    assert [(r.name, r.error) for r in summary.failed] == [
        ("boom", "unexpected error while reading: KeyError: 'a field nobody expected'")]
    assert summary.rows == 2 and (tmp_path / "out" / "00000.done").exists()
    assert not (tmp_path / "out" / "boom.parquet").exists()


# -- 5. a file too big to read ------------------------------------------------------------------


def _sparse_tar(path, huge_name: str, huge_size: int, then: dict[str, bytes]) -> None:
    """A tar whose first member claims huge_size bytes that are never written (a hole in a sparse
    file): only its header costs disk and memory."""
    with open(path, "wb") as f:
        huge = tarfile.TarInfo(huge_name)
        huge.size = huge_size
        f.write(huge.tobuf(tarfile.PAX_FORMAT))
        f.seek(huge_size, os.SEEK_CUR)
        for name, data in then.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            f.write(info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
        f.write(b"\0" * 2 * tarfile.BLOCKSIZE)  # end of archive


# Run in a child process whose address space is capped at 1 GiB: reading a 10 GiB file whole
# fails there with MemoryError instead of eating the machine.
_READ_CAPPED = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from recaption.readers import discover_shards
    out = {}
    for item in sys.argv[1:]:
        for shard in discover_shards([item]):
            out[shard.name] = [[s.key, s.status, s.error] for s in shard]
    print(json.dumps(out))
""")


def test_files_claiming_gigabytes_are_too_large_rows_and_never_read(tmp_path):
    _sparse_tar(tmp_path / "big.tar", "huge.jpg", 10 * GiB, {"small.jpg": image_bytes()})
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "small.jpg").write_bytes(image_bytes())
    with open(folder / "huge.jpg", "wb") as f:
        f.truncate(10 * GiB)  # sparse: no disk used
    pq.write_table(pa.table({"image": [str(folder / "huge.jpg"), str(folder / "small.jpg")]}),
                   tmp_path / "paths.parquet")

    done = subprocess.run(
        [sys.executable, "-c", _READ_CAPPED, str(tmp_path / "big.tar"), str(folder),
         str(tmp_path / "paths.parquet")],
        capture_output=True, text=True, timeout=120,
    )

    assert done.returncode == 0, done.stderr
    shards = json.loads(done.stdout)
    assert {name: [s[:2] for s in samples] for name, samples in shards.items()} == {
        "big": [["huge", "too_large"], ["small", "ok"]],
        "photos-00000": [["huge", "too_large"], ["small", "ok"]],
        "paths": [["paths_000000000", "too_large"], ["paths_000000001", "ok"]],
    }
    for samples in shards.values():
        assert "10.0 GiB" in samples[0][2] and "64.0 MiB" in samples[0][2]


def test_read_limit_is_configurable(tmp_path):
    (tmp_path / "a.jpg").write_bytes(image_bytes(seed=1))
    (shard,) = discover_shards([str(tmp_path)], ColumnConfig(max_image_bytes=100))

    (sample,) = list(shard)

    assert sample.status == "too_large" and "100 bytes" in sample.error


# -- 6. a finished folder that changed --------------------------------------------------------------


def test_photos_added_to_or_changed_in_a_finished_folder_are_captioned_on_rerun(tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    out = tmp_path / "out"
    assert caption([str(photos)], out).exit_code == 0
    again = caption([str(photos)], out)
    assert again.exit_code == 0 and "skipped (already complete) │ 1" in flat(again.output)

    (photos / "2.jpg").write_bytes(image_bytes(seed=2))
    with caplog.at_level(logging.WARNING):
        added = caption([str(photos)], out)

    assert added.exit_code == 0, added.output
    assert "photos-00000: folder changed since it was captioned (2 images then, 3 now)" in caplog.text
    assert [r["key"] for r in rows(out / "photos-00000.parquet")] == ["0", "1", "2"]

    caplog.clear()
    (photos / "1.jpg").write_bytes(image_bytes(width=60, seed=9))
    os.utime(photos / "1.jpg", (1, 1))
    with caplog.at_level(logging.WARNING):
        assert caption([str(photos)], out).exit_code == 0
    assert "still 3 images" in caplog.text
    by_key = {r["key"]: r for r in rows(out / "photos-00000.parquet")}
    assert by_key["1"]["sha256"] == hashlib.sha256((photos / "1.jpg").read_bytes()).hexdigest()


def test_inserting_a_file_shifts_folder_slices_and_each_image_is_still_captioned_once(tmp_path, captioner):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ["0", "1", "2", "3", "4"]:
        (photos / f"{name}.jpg").write_bytes(image_bytes(seed=len(name)))

    def run():
        config = CaptionConfig(max_new_tokens=24)
        pipeline = CaptionPipeline(config, RunConfig(str(tmp_path / "out")), captioner)
        return pipeline.run(discover_shards([str(photos)], folder_shard_size=2))

    run()
    (photos / "0a.jpg").write_bytes(image_bytes(seed=10))  # sorts second: every slice shifts
    summary = run()

    assert [r.outcome for r in summary.results] == ["done", "done", "done"]
    urls = [r["url"] for path in sorted((tmp_path / "out").glob("*.parquet")) for r in rows(path)]
    assert sorted(urls) == sorted(str(p) for p in photos.iterdir())


def test_score_refuses_a_folder_that_changed_since_captioning(tmp_path):
    """Rows are joined to images by key: after the folder changed, keys may name other pictures."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        (photos / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    out = tmp_path / "out"
    assert caption([str(photos)], out).exit_code == 0
    (photos / "0.jpg").write_bytes(image_bytes(width=70, seed=5))
    result = runner.invoke(app, ["score", str(out), "--clip-model", PLUMBING_CLIP])
    assert result.exit_code == 1
    said = flat(result.output)
    assert "FAILED photos-00000: folder changed since it was captioned" in said
    assert said.count("photos-00000:") == 1 and "InputChangedError" not in said  # named once, in words
    assert "recap caption" in said
    assert all(r["re_clip_score"] is None for r in rows(out / "photos-00000.parquet"))


# -- 7. what a new user's inputs look like -----------------------------------------------------------


def test_tar_made_with_tar_C_dot_gives_every_sample_and_skips_hidden_files(tmp_path):
    """`tar -cf x.tar -C dir .` names members `./000001.jpg`: those are samples, not hidden files."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "000001.jpg").write_bytes(image_bytes(seed=1))
    (src / "000001.txt").write_text("a red square")
    (src / "000002.jpg").write_bytes(image_bytes(seed=2))
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "._000002.jpg").write_bytes(b"\0\5\26\7 resource fork")
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar.add(src, arcname=".")  # what tar -C src . writes: ./, ./000001.jpg, ...
    with tarfile.open(tmp_path / "x.tar") as tar:
        assert "./000001.jpg" in tar.getnames()

    result = caption([str(tmp_path / "x.tar")], tmp_path / "out")

    assert result.exit_code == 0, result.output
    out = rows(tmp_path / "out" / "x.parquet")
    assert [(r["key"], r["status"], r["org_caption"]) for r in out] == [
        ("000001", "ok", "a red square"), ("000002", "ok", None)]


def test_folder_takes_every_image_type_pillow_reads_and_says_what_it_skipped(tmp_path, caplog):
    from PIL import features

    photos = tmp_path / "photos"
    photos.mkdir()
    if features.check("avif"):
        (photos / "x.avif").write_bytes(image_bytes(seed=1, fmt="AVIF"))
    (photos / "y.jfif").write_bytes(image_bytes(seed=2))
    (photos / "w.JPE").write_bytes(image_bytes(seed=3))
    (photos / "z.jpg").write_bytes(image_bytes(seed=4))
    (photos / "z.TXT").write_text("a caption in upper-case sidecar\n")
    for name in ["a.pdf", "b.pdf", "c.mov", ".DS_Store", "meta.json", "notes.txt"]:
        (photos / name).write_bytes(b"not an image")

    with caplog.at_level(logging.WARNING):
        result = caption([str(photos)], tmp_path / "out")

    assert result.exit_code == 0, result.output
    out = {r["key"]: r for r in rows(tmp_path / "out" / "photos-00000.parquet")}
    expected = {"w", "y", "z"} | ({"x"} if features.check("avif") else set())
    assert set(out) == expected and {r["status"] for r in out.values()} == {"ok"}
    assert out["z"]["org_caption"] == "a caption in upper-case sidecar"
    assert f"{photos}: skipped 3 files that are not images (.pdf x2, .mov x1)" in caplog.text


def test_tar_images_by_last_extension_part_each_image_member_a_row(tmp_path):
    path = tmp_path / "t.tar"
    red, blue = _solid((220, 30, 30)), _solid((20, 40, 230), "PNG")
    with tarfile.open(path, "w") as tar:
        _add(tar, "IMG_1234.edited.jpg", image_bytes(seed=1))  # webdataset: key IMG_1234, ext edited.jpg
        _add(tar, "k.jpg", red)
        _add(tar, "k.png", blue)
        _add(tar, "k.txt", b"two pictures of k")
        _add(tar, "n.txt", b"a caption without its picture")
        _add(tar, "n.json", b"{}")

    result = caption([str(path)], tmp_path / "out")

    assert result.exit_code == 0, result.output
    out = rows(tmp_path / "out" / "t.parquet")
    assert [(r["key"], r["status"]) for r in out] == [
        ("IMG_1234", "ok"), ("k", "ok"), ("k_1", "ok"), ("n", "missing_image")]
    assert out[1]["sha256"] == hashlib.sha256(red).hexdigest()
    assert out[2]["sha256"] == hashlib.sha256(blue).hexdigest()
    assert out[1]["org_caption"] == out[2]["org_caption"] == "two pictures of k"
    assert out[3]["error"] == "sample has no image member (has: txt, json)"


def test_tar_avif_member_is_an_image(tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow reads no AVIF")
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        _add(tar, "000003.avif", image_bytes(fmt="AVIF"))

    (sample,) = list(open_shard(str(tmp_path / "a.tar")))

    assert (sample.key, sample.status) == ("000003", "ok") and sample.image_bytes


def test_parquet_caption_and_image_columns_are_found_whatever_their_case(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(pa.table({"jpg": [image_bytes(seed=1)], "alt": ["an alt text"]}), inputs / "a.parquet")
    pq.write_table(pa.table({"Image": [image_bytes(seed=2)], "Caption": ["a Caption"], "URL": ["http://x/b"]}),
                   inputs / "b.parquet")

    result = caption([str(inputs)], tmp_path / "out")

    assert result.exit_code == 0, result.output
    (a,) = rows(tmp_path / "out" / "a.parquet")
    (b,) = rows(tmp_path / "out" / "b.parquet")
    assert (a["org_caption"], a["status"]) == ("an alt text", "ok")
    assert (b["org_caption"], b["url"], b["status"]) == ("a Caption", "http://x/b", "ok")


@pytest.mark.parametrize("flag, value, field", [("--key-col", "ID", "key"), ("--url-col", "link", "url")])
def test_a_named_key_or_url_column_the_parquet_lacks_fails_the_shard_naming_it(tmp_path, flag, value, field):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"jpg": [image_bytes()], "id": ["k1"], "url_": ["http://x/1"]}), path)

    result = caption([str(path)], tmp_path / "out", flag, value)

    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert "FAILED" in text and "p.parquet" in text
    assert f"no {field} column '{value}' (columns: jpg, id, url_); name it with {flag}" in text
    assert not (tmp_path / "out" / "p.parquet").exists()
    # the defaults stay optional: no key / url column is row keys and no url
    assert caption([str(path)], tmp_path / "out2").exit_code == 0


def test_folder_with_loose_images_and_shard_files_captions_both(tmp_path, caplog):
    p2 = tmp_path / "p2"
    (p2 / "old").mkdir(parents=True)
    (p2 / "a.jpg").write_bytes(image_bytes(seed=1))
    (p2 / "b.jpg").write_bytes(image_bytes(seed=2))
    with tarfile.open(p2 / "old" / "backup.tar", "w") as tar:
        _add(tar, "000000.jpg", image_bytes(seed=3))

    with caplog.at_level(logging.WARNING):
        result = caption([str(p2)], tmp_path / "out")

    assert result.exit_code == 0, result.output
    assert [r["key"] for r in rows(tmp_path / "out" / "backup.parquet")] == ["000000"]
    assert [r["key"] for r in rows(tmp_path / "out" / "p2-00000.parquet")] == ["a", "b"]
    assert f"{p2}: 1 shard file and 2 images; captioning both" in caplog.text


def test_metadata_parquet_beside_loose_images_is_skipped_not_a_failure(tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(image_bytes(seed=1))
    pq.write_table(pa.table({"file": ["a.jpg"], "caption": ["a"]}), photos / "metadata.parquet")

    with caplog.at_level(logging.WARNING):
        result = caption([str(photos)], tmp_path / "out")

    assert result.exit_code == 0, result.output
    assert [r["status"] for r in rows(tmp_path / "out" / "photos-00000.parquet")] == ["ok"]
    assert not (tmp_path / "out" / "metadata.parquet").exists()
    assert f"{photos / 'metadata.parquet'} has no image column (columns: file, caption)" in caplog.text


def test_img2dataset_folder_is_still_its_tars_alone(tmp_path, caplog):
    out = tmp_path / "dl"
    write_shards(out, 1, 2)
    pq.write_table(pa.table({"url": ["u0", "u1"], "caption": ["a", "b"]}), out / "00000.parquet")
    (out / "00000_stats.json").write_text("{}")

    with caplog.at_level(logging.WARNING):
        shards = discover_shards([str(out)])

    assert [s.name for s in shards] == ["00000"] and not caplog.text


def test_output_folder_inside_an_input_folder_is_refused(tmp_path):
    p3 = tmp_path / "p3"
    p3.mkdir()
    (p3 / "a.jpg").write_bytes(image_bytes())

    result = caption([str(p3)], p3 / "sub")

    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()  # one line
    assert line.startswith("error: the output folder ")
    assert f"the output folder {p3 / 'sub'} lies inside the input {p3}" in result.output
    assert not list(p3.rglob("*.parquet"))
    # a shard named directly is not read recursively: an output folder beside it is fine
    write_shards(tmp_path / "in", 1, 1)
    assert caption([str(tmp_path / "in" / "00000.tar")], tmp_path / "in" / "sub").exit_code == 0


def test_tar_txt_caption_is_stripped_like_a_folder_sidecar(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(image_bytes())
    (tmp_path / "photos" / "a.txt").write_text("a cat on a mat\n")
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        _add(tar, "a.jpg", image_bytes())
        _add(tar, "a.txt", b"a cat on a mat\n")

    result = caption([str(tmp_path / "photos"), str(tmp_path / "t.tar")], tmp_path / "out")

    assert result.exit_code == 0, result.output
    assert rows(tmp_path / "out" / "t.parquet")[0]["org_caption"] == "a cat on a mat"
    assert rows(tmp_path / "out" / "photos-00000.parquet")[0]["org_caption"] == "a cat on a mat"


def test_a_tar_named_by_a_relative_path_is_found_again_from_another_folder(tmp_path, monkeypatch):
    """The stats record where a shard came from; score, export and view open it from wherever
    they run, so a relative path is recorded absolute."""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    write_shards(Path("in"), n_shards=1, per_shard=2)
    assert caption(["in/00000.tar"], "out").exit_code == 0
    stats = json.loads((tmp_path / "out" / "00000_stats.json").read_text())
    assert stats["source"] == str(tmp_path / "in" / "00000.tar")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["score", str(tmp_path / "out"), "--clip-model", PLUMBING_CLIP, "--device", "cpu"]
    scored = runner.invoke(app, args)
    assert scored.exit_code == 0, scored.output
