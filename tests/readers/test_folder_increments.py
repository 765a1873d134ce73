"""A finished folder that changed is captioned again image by image: the rows of images that did
not change are kept (captions, scores, ratings), only the added and changed ones are captioned."""

import hashlib
import json
import os

import pyarrow.parquet as pq

import recaption
from recaption.captioning.pipeline import CaptionPipeline
from recaption.config import CaptionConfig, RunConfig
from recaption.quality.outputs import rewrite_output
from recaption.readers import discover_shards
from recaption.schema import JUDGE_METADATA_KEY, PARTIAL, SCORES_METADATA_KEY
from recaption.spine.ledger import OutputDir

from ..conftest import image_bytes

CLIP = "tiny-clip-random"  # built offline; which score lands on which row is what counts


class CountingCaptioner:
    """The shared tiny captioner, counting the images it is asked to caption."""

    def __init__(self, captioner):
        self.inner, self.images = captioner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, inputs, decoding):
        generations = self.inner.generate(inputs, decoding)
        self.images += len(generations)
        return generations


def photos_folder(tmp_path, n: int):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(n):
        (photos / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    return photos


def caption(photos, out, captioner, size: int = 10_000, **run):
    counting = CountingCaptioner(captioner)
    shards = discover_shards([str(photos)], folder_shard_size=size)
    pipeline = CaptionPipeline(CaptionConfig(max_new_tokens=8), RunConfig(str(out), **run), counting)
    summary = pipeline.run(shards)
    return summary, counting.images


def by_url(out) -> dict[str, dict]:
    return {r["url"]: r for path in sorted(out.glob("*.parquet")) for r in pq.read_table(path).to_pylist()}


def stamp(path, key: bytes) -> dict:
    return json.loads(pq.read_schema(path).metadata.get(key, b"{}"))


def test_one_photo_added_is_the_only_one_captioned_the_others_keep_caption_and_scores(tmp_path, captioner):
    photos, out = photos_folder(tmp_path, 3), tmp_path / "out"
    caption(photos, out, captioner)
    recaption.score(out, clip_model=CLIP)
    before = by_url(out)
    assert all(r["re_clip_score"] is not None for r in before.values())

    (photos / "3.jpg").write_bytes(image_bytes(seed=3))
    summary, captioned = caption(photos, out, captioner)

    assert summary.done == ["photos-00000"] and captioned == 1
    after = by_url(out)
    assert sorted(after) == sorted(str(p) for p in photos.iterdir())
    for url, row in before.items():  # kept whole: caption, flags, scores
        assert after[url] == row
    new = after[str(photos / "3.jpg")]
    assert new["status"] == "ok" and new["re_caption"] and new["re_clip_score"] is None
    stats = json.loads((out / "photos-00000_stats.json").read_text())
    assert stats["rows_kept"] == 3 and stats["rows"] == 4
    parquet = out / "photos-00000.parquet"
    assert stamp(parquet, SCORES_METADATA_KEY)[PARTIAL] is True

    # `recap score` fills only the row without a score; the kept ones stay as they were.
    scored = recaption.score(out, clip_model=CLIP)
    assert scored.done == ["photos-00000"]
    final = by_url(out)
    assert final[str(photos / "3.jpg")]["re_clip_score"] is not None
    assert all(final[url]["re_clip_score"] == row["re_clip_score"] for url, row in before.items())
    assert PARTIAL not in stamp(parquet, SCORES_METADATA_KEY)
    assert recaption.score(out, clip_model=CLIP).skipped == ["photos-00000"]


def test_a_changed_photo_is_captioned_again_and_a_removed_one_is_gone(tmp_path, captioner):
    photos, out = photos_folder(tmp_path, 3), tmp_path / "out"
    caption(photos, out, captioner)
    (photos / "1.jpg").write_bytes(image_bytes(width=70, seed=9))
    os.utime(photos / "1.jpg", (1, 1))
    (photos / "2.jpg").unlink()

    _, captioned = caption(photos, out, captioner)

    assert captioned == 1
    rows = by_url(out)
    assert sorted(rows) == [str(photos / "0.jpg"), str(photos / "1.jpg")]
    changed = hashlib.sha256((photos / "1.jpg").read_bytes()).hexdigest()
    assert rows[str(photos / "1.jpg")]["sha256"] == changed


def test_an_edited_sidecar_caption_counts_as_a_change(tmp_path, captioner):
    photos, out = photos_folder(tmp_path, 2), tmp_path / "out"
    caption(photos, out, captioner)
    (photos / "0.txt").write_text("a red square")

    _, captioned = caption(photos, out, captioner)

    assert captioned == 1
    assert by_url(out)[str(photos / "0.jpg")]["org_caption"] == "a red square"


def test_an_insertion_that_shifts_every_slice_captions_only_the_new_photo(tmp_path, captioner):
    photos, out = photos_folder(tmp_path, 5), tmp_path / "out"
    caption(photos, out, captioner, size=2)
    before = by_url(out)
    (photos / "0a.jpg").write_bytes(image_bytes(seed=10))  # sorts second: every slice shifts

    summary, captioned = caption(photos, out, captioner, size=2)

    assert captioned == 1 and len(summary.done) == 3
    after = by_url(out)
    assert sorted(after) == sorted(str(p) for p in photos.iterdir())
    def without_key(row):
        return {k: v for k, v in row.items() if k != "key"}

    for url, row in before.items():
        assert without_key(after[url]) == without_key(row)


def test_failed_rows_are_tried_again_and_overwrite_keeps_nothing(tmp_path, captioner):
    photos, out = photos_folder(tmp_path, 2), tmp_path / "out"
    (photos / "broken.jpg").write_bytes(b"not an image")
    caption(photos, out, captioner)
    (photos / "broken.jpg").write_bytes(image_bytes(seed=7))

    _, captioned = caption(photos, out, captioner)
    assert captioned == 1 and all(r["status"] == "ok" for r in by_url(out).values())

    _, captioned = caption(photos, out, captioner, overwrite=True)
    assert captioned == 3


def test_scores_from_another_clip_are_not_kept_when_the_run_scores(tmp_path, captioner):
    """Rows scored by one CLIP must not sit in a file stamped with another."""
    photos, out = photos_folder(tmp_path, 2), tmp_path / "out"
    caption(photos, out, captioner)
    parquet = out / "photos-00000.parquet"
    recaption.score(out, clip_model=CLIP)
    (photos / "2.jpg").write_bytes(image_bytes(seed=2))

    caption(photos, out, captioner, clip_model="tiny-clip")

    rows = by_url(out)
    assert stamp(parquet, SCORES_METADATA_KEY)["clip_model"] == "tiny-clip"
    assert stamp(parquet, SCORES_METADATA_KEY)[PARTIAL] is True
    assert rows[str(photos / "2.jpg")]["re_clip_score"] is not None
    assert rows[str(photos / "0.jpg")]["re_clip_score"] is None  # tiny-clip-random's, cleared


def test_judge_ratings_are_kept_and_the_stamp_says_partial(tmp_path, captioner):
    photos, out = photos_folder(tmp_path, 2), tmp_path / "out"
    caption(photos, out, captioner)
    table = pq.read_table(out / "photos-00000.parquet")
    stamp_ = {"model": "judge", "fraction": 1.0, "seed": 0, "prompt": "p"}
    rewrite_output(OutputDir(str(out)), "photos-00000", table,
                   {"re_gpt4v_score": [4, 5], "re_judge_status": ["ok", "ok"]}, JUDGE_METADATA_KEY, stamp_)
    (photos / "2.jpg").write_bytes(image_bytes(seed=2))

    caption(photos, out, captioner)

    rows = by_url(out)
    assert [rows[str(photos / f"{i}.jpg")]["re_gpt4v_score"] for i in range(3)] == [4, 5, None]
    assert stamp(out / "photos-00000.parquet", JUDGE_METADATA_KEY) == {**stamp_, PARTIAL: True}


def test_judge_rates_only_the_rows_a_partial_stamp_lacks(tmp_path, captioner):
    from recaption.quality.judge import JudgeConfig, judge_output

    from ..openai_server import LoopbackServer, completion

    async def judge(body, state):
        return 200, completion("Rating: 4"), {}

    photos, out = photos_folder(tmp_path, 2), tmp_path / "out"
    caption(photos, out, captioner)
    with LoopbackServer(judge) as server:
        config = JudgeConfig(endpoints=[server.url], model="j", fraction=1.0, seed=0, retries=1)
        assert judge_output(str(out), config).done == ["photos-00000"]
        assert len(server.state.requests) == 2  # one per photo: no alt-text to rate
    (photos / "2.jpg").write_bytes(image_bytes(seed=2))
    caption(photos, out, captioner)

    with LoopbackServer(judge) as server:
        config.endpoints = [server.url]
        assert judge_output(str(out), config).done == ["photos-00000"]
        assert len(server.state.requests) == 1  # the new photo only
        assert judge_output(str(out), config).skipped == ["photos-00000"]
    assert [r["re_gpt4v_score"] for r in by_url(out).values()] == [4, 4, 4]
    assert stamp(out / "photos-00000.parquet", JUDGE_METADATA_KEY) == config.stamp()
