"""The trainers' streaming data (training/stream.py, stream_sources.py): every sample once per
epoch across ranks and loader workers, exact resume mid-epoch, caption output joined with its
images, broken shards named in one line."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from recaption.training.captions import is_caption_output
from recaption.training.inputs import TrainingInputError
from recaption.training.stream import Position, StreamBatches, TrainingStream
from recaption.training.stream_sources import COUNTS_FILE, spread, stream_shards


class FakeProcessor:
    """Stands in for an image processor: one number per image. With `jitter`, a random pause
    first, so loader workers finish their batches in varying order."""

    def __init__(self, jitter: float = 0.0):
        self.jitter = jitter

    def __call__(self, images, return_tensors):
        if self.jitter:
            time.sleep(random.random() * self.jitter)
        return {"pixel_values": torch.tensor([[float(np.asarray(im).mean())] for im in images])}


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """Five shapes-world shards of 32, 32, 32, 32 and 22 samples."""
    from recaption.shapes import write_shapes_shards

    root = tmp_path_factory.mktemp("uneven")
    write_shapes_shards(root, 150, seed=0, shard_size=32)
    return root


def all_keys(shards) -> Counter:
    return Counter(r.key for s in shards for r in s.records())


def make_stream(shards, world_size=1, rank=0, workers=2, batch_size=10, shuffle_buffer=8, jitter=0.0):
    return TrainingStream(
        spread(shards, world_size),
        batch_size,
        FakeProcessor(jitter),
        seed=3,
        rank=rank,
        world_size=world_size,
        workers=workers,
        shuffle_buffer=shuffle_buffer,
    )


def whole_epoch(stream: TrainingStream, epoch: int) -> list[dict]:
    """Every batch this rank's workers make in `epoch` (no steps-per-epoch cut), through a
    DataLoader with the stream's number of processes."""
    stream.position = Position.start(stream.workers, epoch)
    loader = DataLoader(stream, batch_size=None, collate_fn=lambda b: b, num_workers=stream.workers)
    return list(loader)


# ---- (a) ranks x workers: every sample once per epoch ----


@pytest.mark.parametrize("world_size,workers", [(1, 2), (2, 2), (3, 1)])
def test_ranks_and_workers_cover_every_sample_once_per_epoch(uneven, world_size, workers):
    shards = stream_shards([str(uneven)])
    expected = all_keys(shards)
    assert sum(expected.values()) == 150 and set(expected.values()) == {1}
    orders = []
    for epoch in (0, 1):
        seen: Counter = Counter()
        order = []
        for rank in range(world_size):
            stream = make_stream(shards, world_size, rank, workers)
            batches = whole_epoch(stream, epoch)
            assert len(batches) == sum(stream.batches_of(epoch, rank))  # the counts predict the batches
            assert all(len(b["keys"]) <= 10 and b["pixels"].shape[1] == 1 for b in batches)
            for batch in batches:
                seen.update(batch["keys"])
                order += batch["keys"]
        assert seen == expected, f"epoch {epoch}: every sample exactly once over ranks and workers"
        orders.append(order)
    assert orders[0] != orders[1], "each epoch shuffles again"


def test_fewer_shards_than_ranks_are_cut_into_parts(uneven):
    one = [s for s in stream_shards([str(uneven)]) if s.count == 22]
    seen: Counter = Counter()
    for rank in range(3):
        for batch in whole_epoch(make_stream(one, world_size=3, rank=rank, workers=1), 0):
            seen.update(batch["keys"])
    assert seen == all_keys(one)


def test_every_rank_takes_the_same_steps_per_epoch(uneven):
    """DDP: an epoch ends on every rank after the fewest batches any rank makes; the rest of a
    bigger rank's batches (its ragged tail) is left out of that epoch."""
    shards = stream_shards([str(uneven)])
    streams = [make_stream(shards, 2, rank) for rank in range(2)]
    for epoch in range(3):
        per_rank = [sum(s.batches_of(epoch, s.rank)) for s in streams]
        assert all(s.steps_per_epoch(epoch) == min(per_rank) for s in streams)
    batches = StreamBatches(streams[0], 2)
    first = streams[0].steps_per_epoch(0)
    for _ in range(first):
        assert batches.position.epoch == 0
        next(batches)
    assert batches.position == Position.start(2, epoch=1)
    batches.close()


# ---- (b) resume mid-epoch: the same batches ----


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores: on purpose
@pytest.mark.parametrize("world_size,rank", [(1, 0), (2, 1)])
def test_resume_gives_exactly_the_batches_of_an_uninterrupted_run(uneven, world_size, rank):
    shards = stream_shards([str(uneven)])
    stream = make_stream(shards, world_size, rank, workers=3, batch_size=7, jitter=0.01)
    per_worker = stream.batches_of(0, rank)
    assert len(set(per_worker)) > 1, "uneven workers: one runs out before the others"
    first, second = stream.steps_per_epoch(0), stream.steps_per_epoch(1)
    total = first + second + 2
    full = StreamBatches(stream, 3)
    positions, seen = [], []
    for _ in range(total):
        positions.append(full.position.copy())
        seen.append(next(full)["keys"])
    full.close()
    # where a worker has already run out: the round-robin skips it, before and after resume
    exhausted = next(
        i
        for i, p in enumerate(positions)
        if p.epoch == 0 and any(c == n > 0 for c, n in zip(p.consumed, per_worker, strict=True))
    )
    cuts = {1, exhausted, first - 1, first, first + 1, first + second}  # mid-epoch, at and after the ends
    for cut in sorted(cuts):
        resumed = StreamBatches(stream, 3, positions[cut])
        rest = [next(resumed)["keys"] for _ in range(total - cut)]
        resumed.close()
        assert rest == seen[cut:], f"resumed at step {cut} ({positions[cut]})"


def test_in_process_and_one_loader_process_give_the_same_batches(uneven):
    shards = stream_shards([str(uneven)])
    runs = []
    for loader_workers in (0, 1):
        batches = StreamBatches(make_stream(shards, workers=1), loader_workers)
        runs.append([next(batches)["keys"] for _ in range(20)])
        batches.close()
    assert runs[0] == runs[1]


# ---- (c) a killed train-clip run resumes to the same weights ----


@pytest.mark.slow
def test_a_killed_train_clip_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    """Shards of 40, 40 and 20 samples, two loader workers, batches of 24: one worker makes more
    batches than the other, an epoch is 5 steps. Killed after step 3 (mid-epoch), 5 (at the end
    of the epoch) or 6 (just after): resumed, the final weights are the uninterrupted run's."""
    from safetensors.torch import load_file

    from recaption.shapes import write_shapes_shards
    from recaption.training.clip_train import ClipTrainConfig, train_clip

    write_shapes_shards(tmp_path / "data", 100, seed=1, shard_size=40)
    config = ClipTrainConfig(
        data=[str(tmp_path / "data")],
        output=str(tmp_path / "full"),
        caption_field="description",
        recaption_field="description",
        p=0.5,
        steps=8,
        batch_size=24,
        width=32,
        layers=1,
        warmup=1,
        save_every=1,
        workers=2,
        shuffle_buffer=16,
        device="cpu",
    )
    full = train_clip(config)
    uninterrupted = load_file(str(tmp_path / "full" / "model.safetensors"))
    state = json.loads((tmp_path / "full" / "checkpoint-0000005" / "trainer_state.json").read_text())
    assert state["extra"]["stream"]["positions"] == [[1, 0, 0, 0]], "an epoch is 5 steps"
    assert json.loads((tmp_path / "full" / COUNTS_FILE).read_text())["shards"], "counts remembered"
    for killed_after in (3, 5, 6):
        out = tmp_path / f"killed-{killed_after}"
        shutil.copytree(tmp_path / "full", out)
        for checkpoint in out.glob("checkpoint-*"):
            if int(checkpoint.name.rsplit("-", 1)[1]) > killed_after:
                shutil.rmtree(checkpoint)
        (out / "model.safetensors").unlink()
        config.output = str(out)
        resumed = train_clip(config)
        assert resumed["losses"] == full["losses"][killed_after:]
        after = load_file(str(out / "model.safetensors"))
        assert after.keys() == uninterrupted.keys()
        assert all(torch.equal(after[k], uninterrupted[k]) for k in after), f"killed after {killed_after}"


def test_resuming_with_other_data_settings_is_one_line(tmp_path):
    from recaption.shapes import write_shapes_shards
    from recaption.training.clip_train import ClipTrainConfig, train_clip

    write_shapes_shards(tmp_path / "data", 40, seed=1, shard_size=20)
    options = dict(data=[str(tmp_path / "data")], output=str(tmp_path / "out"), caption_field="description",
                   recaption_field="description", steps=1, batch_size=8, width=32, layers=1, warmup=0,
                   workers=0, device="cpu")  # fmt: skip
    train_clip(ClipTrainConfig(**options))
    with pytest.raises(TrainingInputError) as refused:
        train_clip(ClipTrainConfig(**{**options, "steps": 2, "batch_size": 4}))
    message = str(refused.value)
    assert "\n" not in message and "batch-size: 8 then, 4 now" in message


def test_the_same_data_named_another_way_resumes_and_other_data_is_named(tmp_path, monkeypatch):
    from recaption.shapes import write_shapes_shards
    from recaption.training.clip_train import ClipTrainConfig, train_clip

    write_shapes_shards(tmp_path / "data", 40, seed=1, shard_size=20)
    write_shapes_shards(tmp_path / "other", 40, seed=2, shard_size=20)
    (tmp_path / "elsewhere").mkdir()
    options = dict(output=str(tmp_path / "out"), caption_field="description", recaption_field="description",
                   steps=1, batch_size=8, width=32, layers=1, warmup=0, workers=0, device="cpu")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    train_clip(ClipTrainConfig(data=["data"], **options))  # relative, from tmp_path
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = train_clip(ClipTrainConfig(data=["../data"], **{**options, "steps": 2}))  # the same shards
    assert len(resumed["losses"]) == 1
    with pytest.raises(TrainingInputError, match=r"shard 1 was /\S+/data/\S+, is /\S+/other/"):
        train_clip(ClipTrainConfig(data=[str(tmp_path / "other")], **{**options, "steps": 3}))


# ---- (d) caption output joined with its image shards ----


def write_caption_output(out, shard, failed_every=3):
    """A finished `recap caption` shard for the samples of `shard`: every `failed_every`-th row
    failed, the others captioned with a recaption of their own."""
    from recaption.captioning.rows import sample_row
    from recaption.readers import open_shard
    from recaption.samples.sample import Sample
    from recaption.schema import METADATA_KEY, output_schema

    rows = []
    for i, sample in enumerate(open_shard(str(shard))):
        row = Sample(key=sample.key, url=sample.url, org_caption=sample.org_caption)
        if i % failed_every == 0:
            row.fail("decode_error", "OSError: image file is truncated")
        else:
            row.re_caption = f"recaption of {sample.key}"
            row.re_truncated = False
        rows.append(sample_row(row))
    out.mkdir(parents=True)
    metadata = {METADATA_KEY: json.dumps({"model": "x"}).encode()}
    schema = output_schema(conditional=False).with_metadata(metadata)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "00000.parquet")
    (out / "00000_stats.json").write_text(json.dumps({"source": str(shard)}))
    (out / "00000.done").write_text(json.dumps({"model": "x"}))
    return rows


def test_a_caption_output_streams_only_its_ok_rows_with_both_captions(uneven, tmp_path):
    out = tmp_path / "captions"
    rows = write_caption_output(out, uneven / "00000.tar")
    ok = {r["key"]: r for r in rows if r["status"] == "ok"}
    assert is_caption_output(str(out)) and 0 < len(ok) < len(rows)
    shards = stream_shards([str(out)])
    assert [s.count for s in shards] == [len(ok)]
    seen = {}
    for batch in whole_epoch(make_stream(shards, workers=2), 0):
        for key, org, re in zip(batch["keys"], batch["org"], batch["re"], strict=True):
            seen[key] = (org, re)
    assert seen == {k: (r["org_caption"], r["re_caption"]) for k, r in ok.items()}
    assert all(org and re for org, re in seen.values())


# ---- (e) a broken shard is named in one line, never silently lost ----


def one_line(error: TrainingInputError, *phrases):
    message = str(error)
    assert "\n" not in message, message
    for phrase in phrases:
        assert phrase in message, message


def test_a_truncated_tar_is_named_before_training(uneven, tmp_path):
    shutil.copytree(uneven, tmp_path / "data")
    tar = tmp_path / "data" / "00002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(TrainingInputError) as refused:
        stream_shards([str(tmp_path / "data")])
    one_line(refused.value, "broken shard", "00002.tar", "truncated")


def test_a_shard_that_breaks_after_counting_stops_the_run_in_one_line(uneven, tmp_path):
    """Counts from img2dataset's stats: the tar is not read before training. One tar is cut
    short, another holds fewer samples than its stats say: each named when its worker reaches it."""
    shutil.copytree(uneven, tmp_path / "data")
    for name in ("00000", "00001", "00002", "00003", "00004"):
        successes = 32 if name != "00004" else 22
        (tmp_path / "data" / f"{name}_stats.json").write_text(json.dumps({"successes": successes}))
    shards = stream_shards([str(tmp_path / "data")])
    assert not (tmp_path / COUNTS_FILE).exists()
    tar = tmp_path / "data" / "00002.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    batches = StreamBatches(make_stream(shards, workers=2), 2)
    with pytest.raises(TrainingInputError) as stopped:
        for _ in range(100):
            next(batches)
    one_line(stopped.value, "broken shard", "00002.tar")

    (tmp_path / "data" / "00002.tar").write_bytes((uneven / "00002.tar").read_bytes())
    (tmp_path / "data" / "00003_stats.json").write_text(json.dumps({"successes": 40}))
    batches = StreamBatches(make_stream(stream_shards([str(tmp_path / "data")]), workers=2), 2)
    with pytest.raises(TrainingInputError) as stopped:
        for _ in range(100):
            next(batches)
    one_line(stopped.value, "00003.tar", "32 training samples now, 40 when counted")


def test_an_undecodable_image_is_left_out_of_its_batch_with_a_warning(tmp_path, caplog):
    from recaption.samples.shards import ShardRecord, write_webdataset_shard

    from ..conftest import image_bytes

    records = [ShardRecord(image_bytes(seed=i), caption=f"c{i}") for i in range(6)]
    records[2] = ShardRecord(b"not an image", caption="c2", extension="jpg")
    write_webdataset_shard(tmp_path / "00000.tar", records)
    shards = stream_shards([str(tmp_path / "00000.tar")])
    stream = make_stream(shards, workers=1, batch_size=4, shuffle_buffer=0)
    batches = StreamBatches(stream, 0)
    with caplog.at_level("WARNING"):
        sizes = [len(next(batches)["keys"]) for _ in range(2)]
    assert sizes == [3, 2]  # the batch that held it is one smaller; the steps are the same
    assert "000000002 not used" in caplog.text


def test_a_batch_with_no_decodable_image_is_passed_over_and_replays_on_resume(tmp_path, caplog):
    from recaption.samples.shards import ShardRecord, write_webdataset_shard

    from ..conftest import image_bytes

    records = [ShardRecord(image_bytes(seed=i), caption=f"c{i}") for i in range(6)]
    records[2:4] = [ShardRecord(b"not an image", caption=f"bad{i}", extension="jpg") for i in range(2)]
    write_webdataset_shard(tmp_path / "00000.tar", records)
    shards = stream_shards([str(tmp_path / "00000.tar")])
    stream = make_stream(shards, workers=1, batch_size=2, shuffle_buffer=0)
    batches = StreamBatches(stream, 0)
    with caplog.at_level("WARNING"):
        keys = [next(batches)["keys"]]
        after_first = batches.position.copy()
        keys += [next(batches)["keys"] for _ in range(2)]
    # Batch 2 of epoch 0 (both bad) is passed over: the run goes on into the next epoch.
    assert keys == [["000000000", "000000001"], ["000000004", "000000005"], ["000000000", "000000001"]]
    assert "is passed over" in caplog.text
    resumed = StreamBatches(make_stream(shards, workers=1, batch_size=2, shuffle_buffer=0), 0, after_first)
    assert [next(resumed)["keys"] for _ in range(2)] == keys[1:]  # as the uninterrupted run
    all_bad = tmp_path / "bad"
    all_bad.mkdir()
    write_webdataset_shard(all_bad / "00000.tar", [ShardRecord(b"x", caption="c", extension="jpg")] * 4)
    never = StreamBatches(make_stream(stream_shards([str(all_bad)]), workers=1, batch_size=2), 0)
    with pytest.raises(TrainingInputError, match="no image of a whole epoch decodes"):
        next(never)


def test_the_loader_options_of_the_cli(uneven, tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    args = ["train-clip", str(uneven), "-o", str(tmp_path / "clip"), "--steps", "2", "--p", "1",
            "--batch-size", "8", "--width", "32", "--device", "cpu", "--workers", "0",
            "--shuffle-buffer", "4"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained 2 steps on 150 pairs" in result.output
    state = json.loads((tmp_path / "clip" / "checkpoint-0000002" / "trainer_state.json").read_text())
    assert state["extra"]["stream"]["settings"]["shuffle_buffer"] == 4
    refused = CliRunner().invoke(app, [*args[:-4], "--workers", "-1"])
    assert refused.exit_code == 2 and "workers must not be negative" in refused.output
