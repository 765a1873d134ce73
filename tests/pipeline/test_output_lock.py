"""One writer per output folder: a second run is refused, a crashed run's lock is free again, a
stopped run (SIGTERM) cleans up, and a writer only ever commits its own temporary file."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq
import pytest

from recaption.captioning.writer import OutputDir, ShardWriter
from recaption.samples.sample import Sample
from recaption.spine.atomic import OutputLockedError, output_lock, remove_stale_temporaries

from ..conftest import write_shards


def _caption(shards, out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "recaption.cli", "caption", str(shards), "-o", str(out),
         "--max-new-tokens", "8", *extra],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    )


def _hold_lock(out):
    """Another process holding the folder's lock, until killed."""
    code = textwrap.dedent(f"""
        import time
        from recaption.spine.atomic import output_lock
        with output_lock({str(out)!r}, "recap caption"):
            print("held", flush=True)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_on_one_folder_is_refused_and_a_crashed_holder_frees_it(tmp_path):
    shards = tmp_path / "in"
    write_shards(shards, 1, 3)
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        refused = _caption(shards, out)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "another run is writing to" in refused.stdout and f"pid {holder.pid}" in refused.stdout
        assert "Traceback" not in refused.stdout + refused.stderr
        assert not list(out.glob("*.parquet")) and not list(out.glob("*.done"))
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        holder.wait()
    after_crash = _caption(shards, out)
    assert after_crash.returncode == 0, after_crash.stdout + after_crash.stderr
    assert pq.read_table(out / "00000.parquet").num_rows == 3


def test_python_api_refuses_a_locked_folder(tmp_path):
    import recaption

    shards = tmp_path / "in"
    write_shards(shards, 1, 2)
    with output_lock(str(tmp_path / "out")):
        with pytest.raises(OutputLockedError, match="another run is writing"):
            recaption.caption([str(shards)], str(tmp_path / "out"), max_new_tokens=4)


def _rows(n, tag):
    return [Sample(key=f"{tag}{i}", org_caption=tag, captions={"re_caption": f"{tag} caption {i}"})
            for i in range(n)]


def test_two_writers_of_one_shard_never_commit_each_others_file(tmp_path):
    out = OutputDir(str(tmp_path))
    first = ShardWriter(out, "00000", None, {"model": "a"})
    second = ShardWriter(out, "00000", None, {"model": "a"})
    assert first.tmp_path != second.tmp_path
    first.write(_rows(3, "a"))
    second.write(_rows(5, "b"))
    first.commit({"rows": 3})
    second.abort()  # the other writer gives up: the committed file must stay whole
    table = pq.read_table(tmp_path / "00000.parquet")
    assert table.column("key").to_pylist() == ["a0", "a1", "a2"]
    assert not list(tmp_path.glob("*.tmp"))


def test_lock_holder_clears_temporaries_left_by_crashed_runs(tmp_path):
    (tmp_path / "00000.parquet.123-abcd0123.tmp").write_bytes(b"half a file")
    (tmp_path / "00000.parquet").write_bytes(b"kept")
    (tmp_path / "draft.tmp").write_bytes(b"a user's, not a temporary we made")
    with output_lock(str(tmp_path)):
        removed = remove_stale_temporaries(OutputDir(str(tmp_path)).fs, str(tmp_path))
    assert [os.path.basename(p) for p in removed] == ["00000.parquet.123-abcd0123.tmp"]
    assert (tmp_path / "00000.parquet").read_bytes() == b"kept" and (tmp_path / "draft.tmp").exists()


def test_lock_on_an_object_store_is_exclusive_and_released(tmp_path):
    url = "memory://recap-lock-test/out"
    with output_lock(url):
        with pytest.raises(OutputLockedError, match="delete memory://"):
            with output_lock(url):
                pass
    with output_lock(url):  # released on exit
        pass


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_the_rerun_finishes(tmp_path):
    shards = tmp_path / "in"
    write_shards(shards, 3, 12)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "recaption.cli", "caption", str(shards), "-o", str(out),
           "--max-new-tokens", "48", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not list(out.glob("*.tmp")):
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert not list(out.glob("*.tmp")), "SIGTERM left a temporary file"
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert sorted(p.name for p in out.glob("*.done")) == ["00000.done", "00001.done", "00002.done"]


def test_a_refused_output_folder_is_not_created(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    photos = tmp_path / "photos"
    write_shards(photos, 1, 2)
    result = CliRunner().invoke(app, ["caption", str(photos), "-o", str(photos / "captions")])
    assert result.exit_code == 2, result.output
    assert not (photos / "captions").exists()


def test_score_and_judge_refuse_a_folder_another_run_is_writing(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    shards = tmp_path / "in"
    write_shards(shards, 1, 2)
    out = tmp_path / "out"
    assert _caption(shards, out).returncode == 0
    runner = CliRunner()
    with output_lock(str(out), "recap caption"):
        for command in (["score", str(out), "--clip-model", "tiny-clip"],
                        ["judge", str(out), "--endpoint", "http://127.0.0.1:9", "--model", "j"]):
            result = runner.invoke(app, command)
            assert result.exit_code == 2 and "another run is writing to" in result.output, result.output
    assert runner.invoke(app, ["score", str(out), "--clip-model", "tiny-clip"]).exit_code == 0


def test_without_flock_the_lock_is_an_exclusive_file(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with output_lock(str(tmp_path)):
        assert (tmp_path / ".recap.lock.excl").exists()
        with pytest.raises(OutputLockedError, match="another run is writing"):
            with output_lock(str(tmp_path)):
                pass
    assert not (tmp_path / ".recap.lock.excl").exists()


@pytest.mark.parametrize("planted", ["fifo", "link", "hard link"])
def test_a_lock_file_that_is_a_fifo_or_a_link_is_refused_and_nothing_is_written_through_it(tmp_path, planted):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("keep me")
    lock = out / ".recap.lock"
    {"fifo": lambda: os.mkfifo(lock), "link": lambda: os.symlink(victim, lock),
     "hard link": lambda: os.link(victim, lock)}[planted]()
    with pytest.raises(OutputLockedError, match=r"\.recap\.lock is (a FIFO|a link).*remove it"):
        with output_lock(str(out), "caption"):
            pass
    assert victim.read_text() == "keep me"
