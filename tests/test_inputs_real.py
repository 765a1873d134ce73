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

from recaption.cli import app
from recaption.config import CaptionConfig, RunConfig
from recaption.pipeline import CaptionPipeline
from recaption.readers import ColumnConfig, Shard, discover_shards, open_shard
from recaption.sample import Sample

from .conftest import image_bytes, write_shards

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
    from recaption.images import decode_image

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
    assert "photos-00000: folder changed since it was captioned" in flat(result.output)
    assert "recap caption" in flat(result.output)
    assert all(r["re_clip_score"] is None for r in rows(out / "photos-00000.parquet"))
