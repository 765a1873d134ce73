"""A run that dies like kill -9, at chosen points (RECAP_CRASH_AFTER_ROWS), then reruns: the
output equals an uninterrupted run's, nothing lost or duplicated."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from ..conftest import write_shards

N_SHARDS, PER_SHARD, BATCH = 5, 12, 4


def _command(shards_dir, out):
    return [sys.executable, "-m", "recaption.cli", "caption", str(shards_dir), "-o", str(out),
            "--max-new-tokens", "48", "--batch-size", str(BATCH)]


def _visible_tables(out):
    return {p.name: pq.read_table(p) for p in sorted(out.glob("*.parquet"))}


def _done(out) -> list[int]:
    return sorted(int(p.stem) for p in out.glob("*.done"))


# (crash after N rows handed to writers in that run, shards finished after it). Each run skips
# the finished shards and counts its own rows; batches of 4 rows, shards of 12.
CRASHES = [
    (5, []),  # shard 0's second batch
    (12, []),  # shard 0 written whole, killed just before its commit
    (20, [0]),  # shard 0 committed, then shard 1's second batch
    (13, [0, 1]),  # shard 1 committed, then shard 2's first batch
]


@pytest.mark.slow
def test_killed_at_crash_points_then_resumed_gives_identical_output(tmp_path):
    shards_dir = tmp_path / "in"
    write_shards(shards_dir, N_SHARDS, PER_SHARD)
    env = {k: v for k, v in os.environ.items() if k != "RECAP_CRASH_AFTER_ROWS"}

    reference = tmp_path / "reference"
    subprocess.run(_command(shards_dir, reference), check=True, env=env, capture_output=True)
    expected = _visible_tables(reference)
    assert len(expected) == N_SHARDS

    out = tmp_path / "killed"
    for rows, finished in CRASHES:
        crashed = subprocess.run(_command(shards_dir, out), env={**env, "RECAP_CRASH_AFTER_ROWS": str(rows)},
                                 capture_output=True, text=True, timeout=300)
        assert crashed.returncode == 137, crashed.stdout + crashed.stderr
        assert _done(out) == finished, rows
        # No half-written file is visible: every visible parquet is a complete, correct shard,
        # with its stats and marker.
        visible = _visible_tables(out)
        assert sorted(visible) == [f"{i:05d}.parquet" for i in finished]
        for name, table in visible.items():
            assert table.equals(expected[name]), name
        assert list(out.glob("*.tmp")), "a crash runs no cleanup: its temporaries stay until the next run"

    final = subprocess.run(_command(shards_dir, out), env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    got = _visible_tables(out)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].equals(expected[name]), name
        assert got[name].schema.metadata == expected[name].schema.metadata
        keys = got[name].column("key").to_pylist()
        assert len(keys) == len(set(keys)) == PER_SHARD  # nothing lost or duplicated
        stats = json.loads((out / name.replace(".parquet", "_stats.json")).read_text())
        assert stats["rows"] == PER_SHARD
    assert _done(out) == list(range(N_SHARDS))
    assert not list(out.glob("*.tmp"))
