"""The shard ledger: one commit protocol for every step's per-shard output, settings checks on
resume, and crash points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap

import pytest

from recaption.captioning.pipeline import CAPTION
from recaption.spine import ledger
from recaption.spine.ledger import OutputDir, ShardCommit, plan, require_same_settings
from recaption.spine.results import ConfigMismatchError

ADDED_LATER = CAPTION.added_later

NAME = "00007"


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _write(commit: ShardCommit, version: str) -> None:
    """A shard of two files (parquet and tar stand-ins) whose bytes say which version they are."""
    with commit.open("tar") as f:
        f.write(f"tar {version}".encode())
    with open(commit.path_for("parquet"), "wb") as f:  # path_for: written by anything that takes a path
        f.write(f"parquet {version}".encode())


def _commit(out: OutputDir, version: str) -> None:
    commit = ShardCommit(out, NAME)
    _write(commit, version)
    commit.commit({"version": version}, {"version": version})


def _shard(folder) -> dict | None:
    """The finished shard's version, its files' contents checked against its marker (None: not
    finished). A marker beside files it does not describe fails here."""
    marker = folder / f"{NAME}.done"
    if not marker.exists():
        return None
    version = json.loads(marker.read_text())["version"]
    assert (folder / f"{NAME}.tar").read_bytes() == f"tar {version}".encode()
    assert (folder / f"{NAME}.parquet").read_bytes() == f"parquet {version}".encode()
    assert json.loads((folder / f"{NAME}_stats.json").read_text()) == {"version": version}
    return version


class _FailingFs:
    """An fsspec filesystem whose `fail_at`-th change (rm, mv, or opening a file to write) raises,
    as a crash at that step would stop the commit."""

    def __init__(self, fs, fail_at: int):
        self._fs, self._fail_at, self.steps = fs, fail_at, []

    def _step(self, what: str) -> None:
        if len(self.steps) == self._fail_at:
            self._fail_at = None  # once: cleaning up after the failure works
            raise OSError(f"simulated crash before step {len(self.steps)} ({what})")
        self.steps.append(what)

    def rm(self, path, *args, **kwargs):
        self._step(f"rm {os.path.basename(path)}")
        return self._fs.rm(path, *args, **kwargs)

    def mv(self, path1, path2, *args, **kwargs):
        self._step(f"mv -> {os.path.basename(path2)}")
        return self._fs.mv(path1, path2, *args, **kwargs)

    def open(self, path, mode="rb", *args, **kwargs):
        if "r" not in mode:
            self._step(f"write {os.path.basename(path)}")
        return self._fs.open(path, mode, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fs, name)


@pytest.mark.parametrize("earlier", [False, True], ids=["new shard", "redo over a finished one"])
def test_a_crash_at_any_step_of_a_commit_never_shows_a_marker_without_its_files(tmp_path, earlier):
    steps_seen = None
    for fail_at in range(20):
        folder = tmp_path / f"{fail_at}"
        out = OutputDir(str(folder))
        if earlier:
            _commit(out, "old")
        commit = ShardCommit(out, NAME)
        _write(commit, "new")
        real = out.fs
        out.fs = failing = _FailingFs(real, fail_at)
        try:
            commit.commit({"version": "new"}, {"version": "new"})
        except OSError:
            out.fs = real
            # The old shard whole and finished, or no finished shard: never the new marker
            # beside old files, or a marker beside missing or half-renamed files.
            assert _shard(folder) == ("old" if earlier and fail_at == 0 else None), failing.steps
            commit.abort()
            assert not [p for p in _files(folder) if p.endswith(".tmp")]
            continue
        out.fs = real
        assert _shard(folder) == "new"
        steps_seen = failing.steps
        break
    # Today's order: an earlier marker first, the files renamed, the stats, the marker last.
    assert [s.split(".", 1)[0] if s.startswith("write") else s for s in steps_seen] == [
        *(["rm 00007.done"] if earlier else []),
        "mv -> 00007.tar",
        "mv -> 00007.parquet",
        "write 00007_stats",
        "mv -> 00007_stats.json",
        "write 00007",  # the marker's temporary
        "mv -> 00007.done",
    ]


def test_abort_leaves_nothing(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    commit = ShardCommit(out, NAME)
    _write(commit, "new")
    assert len(_files(tmp_path / "out")) == 2
    commit.abort()
    assert _files(tmp_path / "out") == set()
    with pytest.raises(RuntimeError, match="aborted"):
        commit.commit({}, {})


def test_a_block_left_without_commit_aborts(tmp_path):
    out = OutputDir(str(tmp_path))
    with pytest.raises(KeyError):
        with ShardCommit(out, NAME) as commit:
            _write(commit, "new")
            raise KeyError("the step failed")
    assert _files(tmp_path) == set()
    with ShardCommit(out, NAME) as commit:  # committed inside: nothing undone on leaving
        _write(commit, "new")
        commit.commit({"version": "new"}, {"version": "new"})
    assert _shard(tmp_path) == "new"
    commit.abort()  # after a commit: nothing to undo
    assert _shard(tmp_path) == "new"


def test_a_redo_keeps_the_old_output_until_it_commits(tmp_path):
    out = OutputDir(str(tmp_path))
    _commit(out, "old")
    redo = ShardCommit(out, NAME)
    _write(redo, "new")
    assert out.is_done(NAME) and _shard(tmp_path) == "old"  # readers still see the old shard
    redo.abort()
    assert _shard(tmp_path) == "old"  # a failed redo loses nothing
    redo = ShardCommit(out, NAME)
    _write(redo, "new")
    redo.commit({"version": "new"}, {"version": "new"})
    assert _shard(tmp_path) == "new"
    assert _files(tmp_path) == {f"{NAME}.tar", f"{NAME}.parquet", f"{NAME}_stats.json", f"{NAME}.done"}


def test_two_commits_of_one_shard_never_see_each_others_temporaries(tmp_path):
    out = OutputDir(str(tmp_path))
    first, second = ShardCommit(out, NAME), ShardCommit(out, NAME)
    _write(first, "first")
    _write(second, "second")
    assert not set(first.temporaries) & set(second.temporaries)
    first.commit({"version": "first"}, {"version": "first"})
    assert _shard(tmp_path) == "first"
    second.abort()  # removes its own temporaries only, never the committed files
    assert _shard(tmp_path) == "first"
    assert not [p for p in _files(tmp_path) if p.endswith(".tmp")]

    third, fourth = ShardCommit(out, NAME), ShardCommit(out, NAME)
    _write(third, "third")
    _write(fourth, "fourth")
    fourth.commit({"version": "fourth"}, {"version": "fourth"})
    third.commit({"version": "third"}, {"version": "third"})  # last commit wins, each one whole
    assert _shard(tmp_path) == "third"
    assert not [p for p in _files(tmp_path) if p.endswith(".tmp")]


def test_file_names_and_roles(tmp_path):
    out = OutputDir(str(tmp_path))
    commit = ShardCommit(out, NAME)
    assert commit.final_path("parquet") == out.parquet(NAME)
    assert commit.final_path(f"{NAME}.tar") == out.path(f"{NAME}.tar")
    assert commit.path_for("tar") == commit.path_for("tar")  # one temporary per file
    temporary = commit.path_for("tar")
    assert temporary.startswith(out.path(f"{NAME}.tar.")) and temporary.endswith(".tmp")
    for written_by_commit in ("done", f"{NAME}.done", f"{NAME}_stats.json"):
        with pytest.raises(ValueError, match="commit"):
            commit.path_for(written_by_commit)
    with pytest.raises(ValueError, match="not a file name"):
        commit.path_for("sub/x.parquet")
    commit.abort()


def test_done_names_invalidate_and_provenance(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    assert out.done_names() == []  # no folder yet
    for name in ("00002", "00000", "00001"):
        with ShardCommit(out, name) as commit:
            with commit.open("parquet") as f:
                f.write(b"rows")
            with commit.open("tar") as f:
                f.write(b"images")
            commit.commit({"rows": 1}, {"model": name})
    assert out.done_names() == ["00000", "00001", "00002"]
    assert out.is_done("00001") and out.done_provenance("00001") == {"model": "00001"}
    assert out.done_provenance("00009") is None
    out.invalidate("00001", also=("tar",))
    assert out.done_names() == ["00000", "00002"]
    assert not any(p.name.startswith("00001") for p in (tmp_path / "out").iterdir())
    out.invalidate("00002")  # marker, stats, parquet; the tar only when named
    assert {p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("00002")} == {"00002.tar"}


SETTINGS = {"model": "tiny", "prompt": "Describe.", "engine": "transformers", "dtype": "auto",
            "max_pixels": ADDED_LATER["max_pixels"], "max_side": ADDED_LATER["max_side"]}


def _marker(out: OutputDir, name: str, provenance: dict) -> None:
    with ShardCommit(out, name) as commit:
        commit.commit({}, provenance)


def test_require_same_settings(tmp_path):
    out = OutputDir(str(tmp_path))
    _marker(out, NAME, {**SETTINGS, "recaption_version": "0.0.1", "input_fingerprint": {"images": 3}})
    # The version and the input's fingerprint are no settings.
    require_same_settings(out, NAME, {**SETTINGS, "recaption_version": "9.9"})
    require_same_settings(out, NAME, dict(SETTINGS), marker={**SETTINGS, "input_fingerprint": {"images": 4}})
    with pytest.raises(ConfigMismatchError, match=r"shard 00007 made with other settings \(model differ"):
        require_same_settings(out, NAME, {**SETTINGS, "model": "other"})
    said = r"\(prompt, seed differ: prompt \"Describe.\" there, \"Other.\" now; seed null there, 1 now\); use"
    with pytest.raises(ConfigMismatchError, match=said):
        require_same_settings(out, NAME, {**SETTINGS, "prompt": "Other.", "seed": 1})
    # The marker given is used, not the file's.
    require_same_settings(out, NAME, {**SETTINGS, "model": "x"}, marker={**SETTINGS, "model": "x"})
    with pytest.raises(ConfigMismatchError, match=r"00009.done\) is unreadable; use --overwrite"):
        require_same_settings(out, "00009", dict(SETTINGS))  # no marker: nothing matches
    (tmp_path / f"{NAME}.done").write_text("[1, 2]")  # JSON, but no marker we wrote
    assert out.done_provenance(NAME) is None
    with pytest.raises(ConfigMismatchError, match="is unreadable"):
        require_same_settings(out, NAME, dict(SETTINGS))


def test_settings_added_later_match_their_old_defaults():
    assert {"engine": "transformers", "dtype": "auto"}.items() <= ADDED_LATER.items()
    out = OutputDir("memory://ledger-test/out")
    old = {"model": "tiny", "prompt": "Describe."}  # made before engine, dtype, ... were recorded
    require_same_settings(out, NAME, dict(SETTINGS), marker=old, added_later=ADDED_LATER)
    for key, other in (("engine", "vllm"), ("dtype", "bfloat16"), ("max_pixels", 1000), ("max_side", 448)):
        with pytest.raises(ConfigMismatchError, match=rf"\({key} differs: "):
            require_same_settings(out, NAME, {**SETTINGS, key: other}, marker=old, added_later=ADDED_LATER)
    # Recorded in the marker: compared as recorded, whatever the default.
    with pytest.raises(ConfigMismatchError, match=r"\(engine differs: "):
        require_same_settings(out, NAME, dict(SETTINGS), marker={**SETTINGS, "engine": "server"},
                              added_later=ADDED_LATER)
    # A step whose settings do not have the key (download) gets nothing added.
    require_same_settings(out, NAME, {"resize": "border"}, marker={"resize": "border"},
                          added_later=ADDED_LATER)
    # Without the step's defaults, an old marker is another setting.
    with pytest.raises(ConfigMismatchError, match=r"\(dtype, engine, max_pixels, max_side differ: "):
        require_same_settings(out, NAME, dict(SETTINGS), marker=old)


def test_plan_splits_units_by_marker_and_asks_the_step_what_to_redo(tmp_path):
    out = OutputDir(str(tmp_path))
    _marker(out, "a", {"model": "m", "recaption_version": "0.0.1"})
    _marker(out, "b", {"model": "m", "extra": 1})
    _marker(out, "c", {"model": "other"})
    assert plan(out, ["a", "new"], {"model": "m"}) == (["new"], ["a"])
    # only_current: a marker that also holds its input's settings (filter, export)
    assert plan(out, ["b"], {"model": "m"}, only_current=True) == ([], ["b"])
    with pytest.raises(ConfigMismatchError, match=r"\(extra differs: extra 1 there, null now\)"):
        plan(out, ["b"], {"model": "m"})
    with pytest.raises(ConfigMismatchError, match="shard c made with other settings"):
        plan(out, ["a", "c"], {"model": "m"})
    assert plan(out, ["a", "c"], {"model": "m"}, overwrite=True) == (["a", "c"], [])
    redo = {"a": "its input changed"}
    assert plan(out, ["a"], {"model": "m"}, redo=lambda name, marker: redo.get(name)) == (["a"], [])


def test_crash_point_counts_rows_handed_in_this_process(monkeypatch):
    exits = []

    class Exited(BaseException):
        pass

    def fake_exit(code):
        exits.append(code)
        raise Exited

    monkeypatch.setattr(ledger, "_rows_handed", 0)
    monkeypatch.setattr(ledger.os, "_exit", fake_exit)
    monkeypatch.delenv(ledger.CRASH_AFTER_ROWS, raising=False)
    ledger.rows_handed(1000)  # unset: nothing counted, nothing happens
    monkeypatch.setenv(ledger.CRASH_AFTER_ROWS, "10")
    ledger.rows_handed(4)
    ledger.rows_handed(5)
    assert exits == []
    with pytest.raises(Exited):
        ledger.rows_handed(4)  # 13 >= 10: right after this batch
    assert exits == [137]
    monkeypatch.setenv(ledger.CRASH_AFTER_ROWS, "ten")
    with pytest.raises(ValueError, match="RECAP_CRASH_AFTER_ROWS='ten'"):
        ledger.rows_handed(1)


def test_crash_point_kills_a_caption_writer_mid_shard(tmp_path):
    code = textwrap.dedent(f"""
        from recaption.samples.sample import Sample
        from recaption.captioning.writer import OutputDir, ShardWriter

        writer = ShardWriter(OutputDir({str(tmp_path)!r}), "00000", None, {{"model": "a"}})
        for batch in range(5):
            writer.write([Sample(key=f"k{{batch}}{{i}}", org_caption="x") for i in range(2)])
            print("batch", batch, flush=True)
        writer.commit({{"rows": 10}})
        print("committed", flush=True)
    """)
    env = {**os.environ, "RECAP_CRASH_AFTER_ROWS": "5"}
    crashed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert crashed.returncode == 137, crashed.stderr
    assert crashed.stdout.split("\n")[:-1] == ["batch 0", "batch 1"]  # the third batch reached 5
    assert not (tmp_path / "00000.done").exists() and not (tmp_path / "00000.parquet").exists()
    assert [p.name for p in tmp_path.glob("*.tmp")]  # as kill -9 leaves it: no cleanup ran
    env.pop("RECAP_CRASH_AFTER_ROWS")
    whole = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert whole.returncode == 0 and whole.stdout.endswith("committed\n"), whole.stderr


def test_tar_writer_into_a_shard_commit(tmp_path):
    from recaption.samples.tars import TarShardWriter

    out = OutputDir(str(tmp_path))
    commit = ShardCommit(out, NAME)
    tar = TarShardWriter.into(commit.open("tar"))
    tar.add("k0", {"jpg": b"image", "txt": b"caption", "json": b"{}"})
    tar.close()
    assert not (tmp_path / f"{NAME}.tar").exists()  # the commit renames it
    with pytest.raises(RuntimeError, match="ShardCommit"):
        tar.commit()
    commit.commit({}, {})
    with tarfile.open(tmp_path / f"{NAME}.tar") as t:
        assert [m.name for m in t.getmembers()] == ["k0.jpg", "k0.txt", "k0.json"]
        assert t.extractfile("k0.txt").read() == b"caption"
