"""A folder captioned once, then changed: the output always covers exactly its current images."""

import pyarrow.parquet as pq

from recaption.captioning.pipeline import CaptionPipeline
from recaption.config import CaptionConfig, RunConfig
from recaption.executors.run import run_caption
from recaption.quality.stats import collect
from recaption.readers import discover_shards

from ..conftest import image_bytes


def test_a_folder_that_shrank_to_fewer_slices_leaves_no_stale_rows(tmp_path, captioner, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        (photos / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    out = tmp_path / "out"

    def run():  # through run_caption, as the CLI and the Python API do
        shards = discover_shards([str(photos)], folder_shard_size=3)
        return run_caption(shards, CaptionConfig(max_new_tokens=24), RunConfig(str(out)))

    run()
    assert sorted(p.name for p in out.glob("*.done")) == ["photos-00000.done", "photos-00001.done"]
    for i in (3, 4):
        (photos / f"{i}.jpg").unlink()
    with caplog.at_level("WARNING"):
        run()
    assert "photos-00001: " in caplog.text and "removing its output" in caplog.text
    assert sorted(p.name for p in out.glob("*.parquet")) == ["photos-00000.parquet"]
    assert pq.read_table(out / "photos-00000.parquet").column("key").to_pylist() == ["0", "1", "2"]
    assert collect(str(out)).summary()["rows"] == 3


def test_a_worker_given_some_slices_leaves_the_others_alone(tmp_path, captioner):
    """Per-device workers and Ray actors each run a subset of the shards: none may take the
    others' slices for vanished ones."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        (photos / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    out = tmp_path / "out"
    shards = discover_shards([str(photos)], folder_shard_size=2)
    pipeline = CaptionPipeline(CaptionConfig(max_new_tokens=24), RunConfig(str(out)), captioner)
    pipeline.run(shards)
    pipeline.run(shards[:1])  # what one worker does
    assert sorted(p.name for p in out.glob("*.done")) == [f"photos-0000{i}.done" for i in range(3)]


def test_a_folder_on_remote_storage_can_be_scored_after_captioning(tmp_path):
    import fsspec

    import recaption

    fs = fsspec.filesystem("memory")
    root = f"/remote-{tmp_path.name}/imgs"
    for i in range(2):
        fs.pipe(f"{root}/{i}.jpg", image_bytes(seed=i))
    out = tmp_path / "out"
    recaption.caption(f"memory://{root}", out, max_new_tokens=4)
    summary = recaption.score(out, clip_model="tiny-clip-random")
    assert summary.done == ["imgs-00000"] and not summary.failed
    scores = pq.read_table(out / "imgs-00000.parquet").column("re_clip_score").to_pylist()
    assert all(s is not None for s in scores)


def test_what_a_folder_listing_skips_is_said_at_caption_not_by_each_later_step(tmp_path, captioner, caplog):
    from recaption.quality.outputs import input_shard
    from recaption.spine.ledger import OutputDir

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(image_bytes(seed=1))
    (photos / "notes.md").write_text("not an image")
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        run_caption(discover_shards([str(photos)]), CaptionConfig(max_new_tokens=4), RunConfig(str(out)))
    assert "skipped 1 file that is not an image (.md x1)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        shard = input_shard(OutputDir(str(out)), "photos-00000")  # as score, report, export find it
    assert [s.key for s in shard] == ["a"] and "skipped" not in caplog.text
    with caplog.at_level("WARNING"):
        discover_shards([str(photos)])  # a new listing still says it
    assert "skipped 1 file" in caplog.text
