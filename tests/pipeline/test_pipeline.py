import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption.captioning.pipeline import DONE, FAILED, SKIPPED, CaptionPipeline
from recaption.config import CaptionConfig, RunConfig
from recaption.engines.transformers_engine import BatchPreparer, TransformersCaptioner
from recaption.executors.run import run_caption
from recaption.readers import discover_shards
from recaption.samples.shards import ShardRecord, write_webdataset_shard
from recaption.schema import METADATA_KEY, output_schema
from recaption.spine.contract import OutputAmongInputsError
from recaption.spine.results import ConfigMismatchError

from ..conftest import image_bytes, make_records, write_shards


def run(inputs, out, captioner, **run_options):
    pipeline = CaptionPipeline(captioner.config, RunConfig(output=str(out), **run_options), captioner)
    return pipeline.run(discover_shards([str(i) for i in inputs]))


def rows(path):
    return pq.read_table(path).to_pylist()


def test_output_schema_columns_and_carried_fields(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 2, 5)
    summary = run(shards, tmp_path / "out", captioner)
    assert [r.outcome for r in summary.results] == [DONE, DONE]
    table = pq.read_table(tmp_path / "out" / "00001.parquet")
    assert table.schema.remove_metadata() == output_schema(conditional=False)
    assert table.schema.field("re_clip_score").type == pa.float64()
    assert table.schema.field("re_length").type == pa.int64()
    got = table.to_pylist()
    source = {s.key: s for s in discover_shards([shards[1]])[0]}
    assert [r["key"] for r in got] == list(source)
    for row in got:
        src = source[row["key"]]
        assert (row["url"], row["org_caption"], row["sha256"]) == (src.url, src.org_caption, src.sha256)
        assert row["status"] == "ok" and row["error"] is None
        assert row["re_caption"] and row["re_length"] == len(row["re_caption"].split())
        assert row["org_length"] == len(src.org_caption.split())
        # Unknown scores are null, never 0.
        for col in ("re_clip_score", "org_clip_score", "re_gpt4v_score", "org_gpt4v_score"):
            assert row[col] is None
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    assert meta["model"] == "tiny" and meta["prompt"].startswith("Please generate a detailed caption")
    stats = json.loads((tmp_path / "out" / "00001_stats.json").read_text())
    assert stats["rows"] == 5 and stats["status_counts"] == {"ok": 5}
    assert stats["tokens_generated"] > 0 and stats["images_per_second"] > 0


def test_broken_images_become_rows_with_status(tmp_path, captioner):
    good = image_bytes(seed=3)
    records = [
        ShardRecord(good, "fine"),
        ShardRecord(b"", "zero bytes"),
        ShardRecord(b"<html>not found</html>", "not an image"),
        ShardRecord(good[: len(good) // 2], "truncated"),
        ShardRecord(image_bytes(300, 300, fmt="PNG"), "too big", extension="png"),
        ShardRecord(image_bytes(1, 1, fmt="PNG"), "one pixel", extension="png"),
        ShardRecord(image_bytes(seed=4, mode="L", fmt="PNG"), "grey", extension="png"),
    ]
    write_webdataset_shard(tmp_path / "in" / "00000.tar", records)
    run([tmp_path / "in"], tmp_path / "out", captioner, max_pixels=50_000)
    got = {r["org_caption"]: r for r in rows(tmp_path / "out" / "00000.parquet")}
    assert len(got) == len(records)
    expected = {"fine": "ok", "zero bytes": "empty_image", "not an image": "decode_error",
                "truncated": "decode_error", "too big": "too_large", "one pixel": "ok", "grey": "ok"}
    assert {k: v["status"] for k, v in got.items()} == expected
    for caption, row in got.items():
        if expected[caption] == "ok":
            assert row["re_caption"] and row["error"] is None
        else:
            assert row["re_caption"] is None and row["re_length"] is None and row["error"]


def test_broken_shard_is_named_and_others_go_on(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 3, 3)
    data = open(shards[1], "rb").read()
    open(shards[1], "wb").write(data[: len(data) // 2])
    summary = run(shards, tmp_path / "out", captioner)
    assert [r.outcome for r in summary.results] == [DONE, FAILED, DONE]
    assert "00001.tar" in summary.failed[0].source and "truncated" in summary.failed[0].error
    out = tmp_path / "out"
    assert not (out / "00001.parquet").exists() and not (out / "00001.done").exists()
    assert not list(out.glob("*.tmp"))
    assert len(rows(out / "00002.parquet")) == 3


def test_batch_size_does_not_change_greedy_captions(tmp_path, tiny_model_dir):
    shards = write_shards(tmp_path / "in", 1, 9)
    captions = {}
    for batch_size in (1, 8):
        c = TransformersCaptioner(CaptionConfig(model="tiny", max_new_tokens=24, batch_size=batch_size))
        run(shards, tmp_path / f"out{batch_size}", c)
        out = tmp_path / f"out{batch_size}" / "00000.parquet"
        captions[batch_size] = [r["re_caption"] for r in rows(out)]
    assert captions[1] == captions[8]
    assert len(set(captions[1])) > 1  # different images really get different captions


def test_rerun_skips_done_shards_and_overwrite_redoes(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 2, 2)
    run(shards, tmp_path / "out", captioner)
    before = (tmp_path / "out" / "00000.parquet").stat().st_mtime_ns
    (tmp_path / "out" / "00001.done").unlink()  # as if killed before the marker
    summary = run(shards, tmp_path / "out", captioner)
    assert [r.outcome for r in summary.results] == [SKIPPED, DONE]
    assert (tmp_path / "out" / "00000.parquet").stat().st_mtime_ns == before
    summary = run(shards, tmp_path / "out", captioner, overwrite=True)
    assert [r.outcome for r in summary.results] == [DONE, DONE]


def test_rerun_with_other_settings_is_refused(tmp_path, captioner, tiny_model_dir):
    shards = write_shards(tmp_path / "in", 1, 1)
    run(shards, tmp_path / "out", captioner)
    other = TransformersCaptioner(CaptionConfig(model="tiny", max_new_tokens=7))
    with pytest.raises(ConfigMismatchError, match="max_new_tokens"):
        run(shards, tmp_path / "out", other)


def test_conditional_mode_writes_extra_columns_and_is_seeded(tmp_path, tiny_model_dir):
    shards = write_shards(tmp_path / "in", 1, 4)
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        c = TransformersCaptioner(CaptionConfig(model="tiny", max_new_tokens=16, conditional=True,
                                                top_k=20, seed=seed))
        run(shards, tmp_path / name, c)
        outs.append(rows(tmp_path / name / "00000.parquet"))
    table = pq.read_table(tmp_path / "a" / "00000.parquet")
    assert table.schema.remove_metadata() == output_schema(conditional=True)
    first = outs[0]
    assert all(r["re_caption_condition_diverse_topk"] for r in first)
    assert all(r["re_condition_length"] == len(r["re_caption_condition_diverse_topk"].split())
               for r in first)
    cond = [[r["re_caption_condition_diverse_topk"] for r in o] for o in outs]
    assert cond[0] == cond[1]  # same seed, same samples
    assert cond[0] != cond[2]  # another seed samples otherwise
    assert [r["re_caption"] for r in outs[0]] == [r["re_caption"] for r in outs[2]]  # greedy one fixed


def test_conditional_prompt_contains_original_caption(captioner):
    from recaption.passes import conditional_pass

    config = CaptionConfig(model="tiny", conditional=True)
    preparer = BatchPreparer(captioner.processor, captioner.family, config)

    def conditional_prompt(caption):  # the conditional pass, rendered as the pipeline does
        return preparer.render(conditional_pass(config.conditional_prompt).instruction(caption))

    assert 'is: "a red car"' in conditional_prompt("a red car")
    assert "{caption}" not in conditional_prompt(None)
    assert conditional_prompt("x").startswith("<|begin_of_text|><|start_header_id|>user")


def test_output_loads_with_datasets(tmp_path, captioner):
    datasets = pytest.importorskip("datasets")
    shards = write_shards(tmp_path / "in", 2, 3)
    run(shards, tmp_path / "out", captioner)
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "*.parquet"),
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 6
    assert ds.features["re_clip_score"].dtype == "float64"
    assert ds.features["re_length"].dtype == "int64"
    assert ds[0]["re_clip_score"] is None and ds[0]["status"] == "ok"


def test_tar_output_is_untouched(tmp_path, captioner):
    (shard,) = write_shards(tmp_path / "in", 1, 2)
    before = [m.name for m in tarfile.open(shard).getmembers()]
    run([shard], tmp_path / "out", captioner)
    assert [m.name for m in tarfile.open(shard).getmembers()] == before


def test_records_of_make_records_differ():
    assert len({r.image for r in make_records(3)}) == 3


def test_several_loader_workers_give_the_same_output(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 3, 5)
    run(shards, tmp_path / "w0", captioner, workers=0)
    summary = run(shards, tmp_path / "w2", captioner, workers=2)
    assert sorted(r.name for r in summary.results) == ["00000", "00001", "00002"]
    for name in ("00000", "00001", "00002"):
        a = pq.read_table(tmp_path / "w0" / f"{name}.parquet")
        b = pq.read_table(tmp_path / "w2" / f"{name}.parquet")
        assert a.equals(b)


def test_output_folder_that_holds_the_inputs_is_refused(tmp_path, captioner):
    shards = write_shards(tmp_path / "in", 1, 2)
    (tmp_path / "in" / "00000.parquet").write_bytes(b"img2dataset metadata")  # what would be overwritten
    with pytest.raises(OutputAmongInputsError, match="overwrite input files"):
        run_caption(discover_shards([str(s) for s in shards]), captioner.config,
                    RunConfig(output=str(tmp_path / "in")))
    assert (tmp_path / "in" / "00000.parquet").read_bytes() == b"img2dataset metadata"
