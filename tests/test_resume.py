"""kill -9 at arbitrary moments, then rerun: the output equals an uninterrupted run's."""

import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from .conftest import write_shards

N_SHARDS, PER_SHARD = 5, 12


def _command(shards_dir, out):
    return [sys.executable, "-m", "recaption.cli", "caption", str(shards_dir), "-o", str(out),
            "--max-new-tokens", "48", "--batch-size", "4"]


def _visible_tables(out):
    return {p.name: pq.read_table(p) for p in sorted(out.glob("*.parquet"))}


@pytest.mark.slow
def test_kill_minus_nine_then_resume_gives_identical_output(tmp_path):
    shards_dir = tmp_path / "in"
    write_shards(shards_dir, N_SHARDS, PER_SHARD)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    reference = tmp_path / "reference"
    subprocess.run(_command(shards_dir, reference), check=True, env=env, capture_output=True)
    expected = _visible_tables(reference)
    assert len(expected) == N_SHARDS

    out = tmp_path / "killed"
    rng = random.Random(7)
    kills = 0
    for _ in range(8):
        proc = subprocess.Popen(_command(shards_dir, out), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait until it is writing a shard, then kill at a random moment within the shard.
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not list(out.glob("*.tmp")):
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.6))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        # No half-written file is visible: every visible parquet is a complete, correct shard.
        for name, table in _visible_tables(out).items():
            assert table.equals(expected[name]), name
    assert kills >= 2, "the run finished before it could be interrupted"

    final = subprocess.run(_command(shards_dir, out), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    got = _visible_tables(out)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].equals(expected[name]), name
        assert got[name].schema.metadata == expected[name].schema.metadata
    assert sorted(p.name for p in out.glob("*.done")) == [f"{i:05d}.done" for i in range(N_SHARDS)]
    assert not list(out.glob("*.tmp"))
