"""A real caption output for the `recap view` tests: shapes-world shards captioned by the built-in
tiny model, then given scores, a set flag and hostile captions (web text is anything)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '"><img src=x onerror="window.__pwned = 2">',
    "it's 100% <b>bold</b>; DROP TABLE rows; -- {braces} $HOME `x`",
]


@pytest.fixture(scope="session")
def captioned(tmp_path_factory, tiny_model_dir):
    """(output folder, shards folder): 2 shards of 10 rows; shard 00000's first three alt-texts
    and recaptions are HOSTILE, scores are set on most rows, re_boilerplate on two, and one image
    is truncated (a decode_error row)."""
    import recaption
    from recaption.quality.outputs import rewrite_output
    from recaption.samples.shards import ShardRecord, write_webdataset_shard
    from recaption.shapes import ShapesWorld
    from recaption.shapes.world import shapes_record
    from recaption.spine.ledger import OutputDir

    root = tmp_path_factory.mktemp("view")
    world = ShapesWorld(0)
    for shard in range(2):
        records = []
        for i in range(10):
            sample = world.sample(800_000 + 10 * shard + i)
            alt = HOSTILE[i] if shard == 0 and i < len(HOSTILE) else sample.alt_text
            records.append(shapes_record(sample, 0, alt))
        if shard == 1:
            records[-1] = ShardRecord(records[-1].image[:40], "cut short", "https://example.org/x.png", "png")
        write_webdataset_shard(root / "shards" / f"{shard:05d}.tar", records, shard_id=shard)
    summary = recaption.caption([str(root / "shards")], root / "out", model="tiny", max_new_tokens=24)
    assert not summary.failed
    out = OutputDir(str(root / "out"))
    for shard in ("00000", "00001"):
        table = pq.read_table(out.parquet(shard))
        n = table.num_rows
        re_caption = table.column("re_caption").to_pylist()
        if shard == "00000":
            re_caption[: len(HOSTILE)] = HOSTILE
        base = 0 if shard == "00000" else 100
        re_scores = [None if i == 4 else 20.0 + ((base + 7 * i) % 13) for i in range(n)]
        org_scores = [None if i == 5 else 18.0 + ((base + 5 * i) % 11) for i in range(n)]
        boiler = [i in (1, 6) for i in range(n)]
        rewrite_output(out, shard, table, {"re_caption": re_caption, "re_clip_score": re_scores,
                                           "org_clip_score": org_scores, "re_boilerplate": boiler},
                       b"test", {"set": "by the view tests"})
    return root / "out", root / "shards"
