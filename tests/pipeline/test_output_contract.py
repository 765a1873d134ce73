"""The output contract (spine/contract.py), command by command: no command writes into a folder
that holds its inputs or files it did not make, and a read-only or full output disk is one line.

Read-only and full disks are simulated: every write under the output folder (open for writing,
os.open with a write flag, mkdir, rename) fails with EROFS or ENOSPC, as the OS would say it
(a root test process ignores permission bits, so chmod cannot stand in)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recaption.cli import app
from recaption.spine import ledger
from recaption.spine.contract import (
    STAMP_NAME,
    ForeignOutputError,
    OutputAmongInputsError,
    OutputWriteError,
    Step,
    marker_has,
    open_output,
    refuse_among_inputs,
)
from recaption.spine.ledger import OutputDir

from ..conftest import write_shards

runner = CliRunner()


def recap(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, *pieces: str, code: int = 2) -> str:
    """Exit `code` and one `error:` line holding every piece (download may say which columns it
    reads before it tries the output: that line, and nothing else, may come first)."""
    assert result.exit_code == code, result.output
    lines = [
        line for line in result.output.strip("\n").splitlines() if line and not line.startswith("columns: ")
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for piece in pieces:
        assert piece in lines[0], result.output
    return lines[0]


class Unwritable:
    """Writes under `folder` fail with `err`, as on a read-only mount or a full disk."""

    def __init__(self, monkeypatch, folder, err: int):
        self.folder, self.err, self.on = os.path.realpath(folder), err, True
        real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
        real_rename, real_replace = os.rename, os.replace

        def guarded_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+"):
                self.check(file)
            return real_open(file, mode, *args, **kwargs)

        def guarded_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                self.check(path)
            return real_os_open(path, flags, *args, **kwargs)

        def guarded_mkdir(path, *args, **kwargs):
            self.check(path)
            return real_mkdir(path, *args, **kwargs)

        def guarded(real):
            def move(src, dst, *args, **kwargs):
                self.check(dst)
                return real(src, dst, *args, **kwargs)

            return move

        for module in (builtins, io):
            monkeypatch.setattr(module, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)
        monkeypatch.setattr(os, "mkdir", guarded_mkdir)
        monkeypatch.setattr(os, "rename", guarded(real_rename))
        monkeypatch.setattr(os, "replace", guarded(real_replace))

    def check(self, path) -> None:
        if not self.on or isinstance(path, int):
            return
        full = os.path.realpath(os.fspath(path))
        if full == self.folder or full.startswith(self.folder + os.sep):
            raise OSError(self.err, os.strerror(self.err), os.fspath(path))


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """Caption output made by the current code (`recap caption`), and its input shards."""
    root = tmp_path_factory.mktemp("contract")
    write_shards(root / "images", 2, 3)
    result = recap("caption", root / "images", "-o", root / "captions", "--model", "tiny")
    assert result.exit_code == 0, result.output
    return root


# -- the contract itself -----------------------------------------------------------------------------


def test_an_output_that_is_contains_or_lies_inside_an_input_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tar").write_bytes(b"x")
    for output, how in (
        (tmp_path / "in", "is"),
        (tmp_path, "contains"),
        (tmp_path / "in" / "sub", "lies inside"),
    ):
        with pytest.raises(OutputAmongInputsError, match=f"{output} {how} the input"):
            refuse_among_inputs(str(output), [str(tmp_path / "in")])
    with pytest.raises(OutputAmongInputsError, match="contains the input"):  # a file given as input
        refuse_among_inputs(str(tmp_path / "in"), [str(tmp_path / "in" / "a.tar")])
    refuse_among_inputs(str(tmp_path / "out"), [str(tmp_path / "in"), str(tmp_path / "in" / "a.tar")])
    (tmp_path / "link").symlink_to(tmp_path / "in")  # one folder spelt two ways
    with pytest.raises(OutputAmongInputsError):
        refuse_among_inputs(str(tmp_path / "link"), [str(tmp_path / "in")])


def test_a_folder_is_adopted_only_by_its_own_step(tmp_path):
    made, other = Step("made"), Step("other")
    with open_output(str(tmp_path / "out"), made) as out:
        ledger.ShardCommit(out, "00000").commit({}, {"model": "m"})
    assert json.loads((tmp_path / "out" / STAMP_NAME).read_text()) == {"step": "made"}
    with open_output(str(tmp_path / "out"), made):  # its own earlier output
        pass
    with pytest.raises(ForeignOutputError, match="holds the output of `recap made`, not of `recap other`"):
        with open_output(str(tmp_path / "out"), other):
            pass
    with open_output(str(tmp_path / "out"), Step("reader", adopts=("made",), creates=False)):
        pass
    assert json.loads((tmp_path / "out" / STAMP_NAME).read_text()) == {"step": "made"}  # not restamped


def test_older_output_without_a_stamp_is_known_by_its_markers(tmp_path):
    old = tmp_path / "old"
    out = OutputDir(str(old))
    ledger.ShardCommit(out, "00000").commit({}, {"model": "m"})  # as versions before stamps left it
    (old / STAMP_NAME).unlink(missing_ok=True)
    with open_output(str(old), Step("caption", recognise=marker_has("model"))):
        pass
    (old / STAMP_NAME).unlink()
    with pytest.raises(ForeignOutputError, match="another recaption step"):
        with open_output(str(old), Step("export", recognise=marker_has("caption", "samples"))):
            pass


def test_files_recaption_did_not_write_are_never_adopted(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"jpeg")
    for step in (Step("caption", recognise=marker_has("model")), Step("export")):
        with pytest.raises(ForeignOutputError, match=r"holds files recaption did not write \(e.g. cat.jpg\)"):
            with open_output(str(photos), step):
                pass
    assert sorted(p.name for p in photos.iterdir()) == ["cat.jpg"]  # no lock, no stamp left


def test_an_unreadable_marker_is_a_refusal_not_a_traceback(captioned, tmp_path):
    import shutil

    out = tmp_path / "captions"
    shutil.copytree(captioned / "captions", out)
    (out / "00000.done").write_text("[1, 2]")
    for args in (("stats", out), ("filter", out, "--where", "true", "-o", tmp_path / "kept")):
        result = recap(*args)
        assert "Traceback" not in result.output and "AttributeError" not in result.output, result.output
    one_error_line(
        recap("caption", captioned / "images", "-o", out, "--model", "tiny"),
        "00000.done) is unreadable",
        "--overwrite",
    )


# -- every command: inputs and foreign folders --------------------------------------------------------


def test_caption_refuses_a_folder_of_photos_and_its_input_folder(captioned, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.txt").write_text("mine")
    one_error_line(
        recap("caption", captioned / "images", "-o", photos, "--model", "tiny"),
        "holds files recaption did not write",
    )
    one_error_line(
        recap("caption", captioned / "images", "-o", captioned / "images" / "out", "--model", "tiny"),
        "lies inside the input",
    )
    assert (photos / "notes.txt").read_text() == "mine" and not (captioned / "images" / "out").exists()


def test_filter_and_export_never_write_over_an_image_folder(captioned, tmp_path):
    images = captioned / "images"
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    one_error_line(
        recap("export", captioned / "captions", "-o", images), "contains the input", "choose another"
    )
    one_error_line(
        recap("filter", captioned / "captions", "--where", "true", "-o", images),
        "holds files recaption did not write",
    )
    one_error_line(recap("export", captioned / "captions", "-o", captioned / "captions"), "is the input")
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before
    # Export into a filter's folder: another step's output.
    other = tmp_path / "other-captions"
    assert recap("filter", captioned / "captions", "--where", "true", "-o", other).exit_code == 0
    one_error_line(recap("export", captioned / "captions", "-o", other), "holds the output of `recap filter`")


def test_score_and_judge_work_only_in_caption_output(captioned, tmp_path):
    images = captioned / "images"
    for command in ("score", "judge"):
        extra = (
            ["--clip-model", "tiny-clip"]
            if command == "score"
            else ["--endpoint", "http://127.0.0.1:9", "--model", "judge"]
        )
        one_error_line(recap(command, images, *extra), "holds files recaption did not write")
        one_error_line(
            recap(command, tmp_path / "nothing", *extra), "holds no finished shards of `recap caption`"
        )
    assert not (tmp_path / "nothing").exists()


def test_download_refuses_the_folder_of_its_metadata(tmp_path):
    (tmp_path / "meta").mkdir()
    urls = tmp_path / "meta" / "urls.txt"
    urls.write_text("ftp://example.org/a.jpg\n")
    one_error_line(recap("download", urls, "-o", tmp_path / "meta"), "contains the input")
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == ["urls.txt"]


# -- every command: a read-only or full output disk is one line -----------------------------------------


@pytest.mark.parametrize("err,says", [(errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full")])
def test_a_read_only_or_full_output_is_one_line_for_every_command(
    captioned, tmp_path, monkeypatch, err, says
):
    urls = tmp_path / "urls.txt"
    urls.write_text("ftp://example.org/a.jpg\n")
    out = tmp_path / "out"
    out.mkdir()  # a mount point: there, but not writable
    captions = tmp_path / "captions"
    import shutil

    shutil.copytree(captioned / "captions", captions)
    commands = {
        "caption": ("caption", captioned / "images", "-o", out, "--model", "tiny"),
        "download": ("download", urls, "-o", out),
        "filter": ("filter", captions, "--where", "true", "-o", out),
        "export": ("export", captions, "-o", out),
        "shapes": ("shapes", "-o", out, "--images", 2),
    }
    Unwritable(monkeypatch, out, err)
    for name, args in commands.items():
        line = one_error_line(recap(*args), f"cannot write to {out}", says)
        assert "Traceback" not in line, name
    files = tmp_path / "files"  # commands that write one file: its temporary beside it fails first
    files.mkdir()
    Unwritable(monkeypatch, files, err)
    for args in (("stats", captions, "-o", files / "s.json"), ("report", captions, "-o", files / "r.html")):
        line = one_error_line(recap(*args), f"cannot write to {files}", says)
        assert "Traceback" not in line, args
    Unwritable(monkeypatch, captions, err)
    for args in (
        ("score", captions, "--clip-model", "tiny-clip"),
        ("judge", captions, "--endpoint", "http://127.0.0.1:9", "--model", "judge"),
    ):
        one_error_line(recap(*args), f"cannot write to {captions}", says)


def test_a_disk_that_fills_after_some_shards_exits_1_and_says_a_rerun_resumes(
    captioned, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    guard = Unwritable(monkeypatch, out, errno.ENOSPC)
    guard.on = False
    commit = ledger.ShardCommit.commit

    def commit_then_fill(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        guard.on = True  # the disk is full from now on

    monkeypatch.setattr(ledger.ShardCommit, "commit", commit_then_fill)
    result = recap("caption", captioned / "images", "-o", out, "--model", "tiny", "--workers", 0)
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]  # after the progress the run showed
    assert line.startswith("error: cannot write to") and "disk is full" in line, result.output
    assert "1 shard(s) were written before this: a rerun resumes from them" in line
    guard.on = False
    monkeypatch.setattr(ledger.ShardCommit, "commit", commit)
    again = recap("caption", captioned / "images", "-o", out, "--model", "tiny", "--workers", 0)
    assert again.exit_code == 0, again.output
    assert sum(pq.read_metadata(out / f"{n}.parquet").num_rows for n in ("00000", "00001")) == 6


@pytest.mark.parametrize("command", ["export", "download"])
def test_a_disk_that_fills_at_the_first_shard_is_one_line_not_a_failed_shard(
    captioned, tmp_path, monkeypatch, command
):
    """The folder opened and stamped, then the disk fills as the first shard is written: the run
    stops with the disk's one line, exit 2, not a FAILED shard per shard and exit 1."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"ftp://example.org/{i}.jpg\n" for i in range(8)))
    out = tmp_path / "out"
    guard = Unwritable(monkeypatch, out, errno.ENOSPC)
    guard.on = False
    open_file, opened = ledger.ShardCommit.open, set()

    def fill_then_open(self, *args, **kwargs):
        guard.on = True  # the disk is full from now on
        opened.add(self.name)
        return open_file(self, *args, **kwargs)

    monkeypatch.setattr(ledger.ShardCommit, "open", fill_then_open)
    args = {"export": ("export", captioned / "captions", "-o", out),
            "download": ("download", urls, "-o", out, "--shard-size", 1)}
    result = recap(*args[command])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write to {out}") and "disk is full" in line, result.output
    assert "FAILED" not in result.output
    assert len(opened) <= 3, opened  # no shard is started once the disk is known full (2 in flight)


def test_os_errors_about_other_paths_are_not_blamed_on_the_output(tmp_path):
    with pytest.raises(FileNotFoundError):
        with open_output(str(tmp_path / "out"), Step("x")):
            open(tmp_path / "missing-input.tar", "rb")  # an input that is not there: not the output's fault
    with pytest.raises(OutputWriteError, match="read-only"):
        with open_output(str(tmp_path / "out2"), Step("x")):
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out2" / "a.parquet"))


def test_train_clip_refuses_its_data_folder_and_says_a_read_only_output_in_one_line(tmp_path, monkeypatch):
    from recaption.shapes import write_shapes_shards
    from recaption.training.clip_train import ClipTrainConfig, train_clip

    write_shapes_shards(tmp_path / "data", 16, shard_size=16)

    def config(output):
        return ClipTrainConfig(
            [str(tmp_path / "data")],
            str(output),
            caption_field="description",
            recaption_field="description",
            batch_size=8,
            width=32,
            warmup=1,
            device="cpu",
            steps=1,
            workers=0,
        )

    with pytest.raises(OutputAmongInputsError, match="is the input"):
        train_clip(config(tmp_path / "data"))
    out = tmp_path / "clip"
    out.mkdir()
    Unwritable(monkeypatch, out, errno.EROFS)
    with pytest.raises(OutputWriteError, match=f"cannot write to {out}.*read-only") as caught:
        train_clip(config(out))
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2


def test_a_users_tmp_file_or_dotfolder_is_never_adopted_nor_removed(captioned, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "draft.tmp").write_text("precious")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    for folder in (keep, tmp_path / "repo"):
        one_error_line(
            recap("filter", captioned / "captions", "--where", "true", "-o", folder),
            "holds files recaption did not write",
        )
    assert (keep / "draft.tmp").read_text() == "precious" and sorted(p.name for p in keep.iterdir()) == [
        "draft.tmp"
    ]


def test_odd_outputs_are_one_line_not_a_traceback(captioned, tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_error_line(
        recap("filter", captioned / "captions", "--where", "true", "-o", tmp_path / "dangling"),
        "is a link to nothing",
    )
    long_name = tmp_path / ("x" * 300)
    one_error_line(recap("shapes", "-o", long_name, "--images", 1), "name is too long")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc on this system")
def test_an_output_where_the_file_system_makes_nothing_is_one_line(captioned):
    """/proc: the folder is missing and can never be made; said once, for the path the user gave."""
    caption_output = captioned / "captions"
    for args in (["shapes", "-o", "/proc/recap-out", "--images", 1],
                 ["filter", caption_output, "--where", "true", "-o", "/proc/recap-out"],
                 ["export", caption_output, "-o", "/proc/recap-out"],
                 ["report", caption_output, "-o", "/proc/recap-report.html"]):
        line = one_error_line(recap(*args), "makes no files or folders there", "choose another output")
        assert f"cannot write to /proc/recap-{'report.html' if args[0] == 'report' else 'out'}:" in line


def test_errors_elsewhere_are_not_blamed_on_the_output(tmp_path):
    from recaption.spine.contract import _about_output

    out = tmp_path / "out"
    out.mkdir()
    assert not _about_output(OSError(errno.ENOSPC, "No space left on device"), str(out))  # this disk has room
    assert not _about_output(PermissionError(errno.EACCES, "denied", str(tmp_path)), str(out))
    assert _about_output(PermissionError(errno.EACCES, "denied", str(out / "a.parquet")), str(out))
    missing = tmp_path / "ro" / "new"
    assert _about_output(PermissionError(errno.EACCES, "denied", str(missing)), str(missing))


def test_an_older_filter_output_is_not_taken_for_caption_output(captioned, tmp_path):
    import shutil

    filtered = tmp_path / "filtered"
    assert recap("filter", captioned / "captions", "--where", "true", "-o", filtered).exit_code == 0
    (filtered / STAMP_NAME).unlink()  # as versions before stamps left it
    one_error_line(
        recap("caption", captioned / "images", "-o", filtered, "--model", "tiny"),
        "another recaption step, not of `recap caption`",
    )
    assert not (filtered / STAMP_NAME).exists()
    assert recap("filter", captioned / "captions", "--where", "true", "-o", filtered).exit_code == 0
    shutil.rmtree(filtered)


def test_the_demo_never_writes_over_a_shard_it_did_not_make(tmp_path):
    (tmp_path / "demo" / "shards").mkdir(parents=True)
    (tmp_path / "demo" / "shards" / "00000.tar").write_text("my precious shard")
    one_error_line(recap("demo", "-o", tmp_path / "demo"), "shards holds files recaption did not write")
    assert (tmp_path / "demo" / "shards" / "00000.tar").read_text() == "my precious shard"


def copied(captioned, tmp_path, name="captions"):
    import shutil

    shutil.copytree(captioned / "captions", tmp_path / name)
    return tmp_path / name


def test_a_report_or_stats_file_never_replaces_a_shard_or_another_kind_of_file(captioned, tmp_path):
    out = copied(captioned, tmp_path)
    before = (out / "00000.parquet").read_bytes()
    one_error_line(recap("report", out, "-o", out / "00000.parquet"), "written to a .html or .htm file")
    one_error_line(recap("stats", out, "-o", out / "00000_stats.json"), "choose another file")
    (tmp_path / "notes.txt").write_text("mine")
    one_error_line(recap("report", out, "-o", tmp_path / "notes.txt"), "choose another file name")
    assert (out / "00000.parquet").read_bytes() == before and (tmp_path / "notes.txt").read_text() == "mine"
    import recaption

    assert recaption.report(out) == f"{out}/report.html"  # beside the shards: still a caption folder
    again = recap("caption", captioned / "images", "-o", out, "--model", "tiny")
    assert again.exit_code == 0, again.output


def test_run_and_demo_folders_hold_nothing_else(captioned, tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "urls.txt").write_text("ftp://example.org/a.jpg\n")
    one_error_line(
        recap("run", tmp_path / "meta" / "urls.txt", "-o", tmp_path / "meta"), "contains the input"
    )
    out = copied(captioned, tmp_path)
    one_error_line(
        recap("run", tmp_path / "meta" / "urls.txt", "-o", out), "holds the output of `recap caption`"
    )
    one_error_line(recap("demo", "-o", out), "holds the output of `recap caption`")
    assert not (out / "images").exists() and not (out / "shards").exists()


def test_a_broken_shard_fails_alone_in_filter_and_score_and_is_one_line_in_stats(captioned, tmp_path):
    out = copied(captioned, tmp_path)
    (out / "00001.parquet").write_bytes(b"not parquet")
    result = recap("filter", out, "--where", "true", "-o", tmp_path / "kept")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "FAILED 00001: nothing filtered" in result.output
    assert (tmp_path / "kept" / "00000.done").exists() and not (tmp_path / "kept" / "00001.done").exists()
    (out / "00001.parquet").unlink()
    scored = recap("score", out, "--clip-model", "tiny-clip")
    assert scored.exit_code == 1 and "00001" in scored.output and "cannot write" not in scored.output, (
        scored.output
    )
    one_error_line(recap("stats", out), "shard 00001 is marked finished but its parquet cannot be read")
    # another valid parquet put in its place: the same, for every command, never a KeyError
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"foo": [1, 2], "bar": ["a", "b"]}), out / "00001.parquet")
    for args in (("stats", out), ("stats", out, "--json"), ("report", out, "-o", tmp_path / "r.html")):
        one_error_line(recap(*args), "shard 00001 is marked finished but its parquet cannot be read",
                       "no key or status column")
    scored = recap("score", out, "--clip-model", "tiny-clip")
    assert scored.exit_code == 1 and "no key or status column" in scored.output, scored.output
    refiltered = recap("filter", out, "--where", "status = 'ok'", "-o", tmp_path / "kept2")
    assert refiltered.exit_code == 1, refiltered.output
    assert "FAILED 00001: nothing filtered" in refiltered.output, refiltered.output


def test_a_folder_of_another_command_is_no_caption_output(captioned, tmp_path):
    out = copied(captioned, tmp_path)
    assert recap("export", out, "-o", tmp_path / "wds").exit_code == 0
    for args in (
        ("export", tmp_path / "wds", "-o", tmp_path / "again"),
        ("stats", tmp_path / "wds"),
        ("filter", tmp_path / "wds", "--where", "true", "-o", tmp_path / "f"),
    ):
        one_error_line(recap(*args), "holds the output of `recap export`, not caption output")


def test_an_older_unfinished_folder_beside_other_files_is_never_written_over(captioned, tmp_path):
    """A lock left by an older version's run that never finished, beside files anyone may own
    (an img2dataset folder's metadata parquet): refused, not adopted."""
    folder = tmp_path / "img2dataset"
    folder.mkdir()
    (folder / ".recap.lock").write_text("")
    (folder / "00000.parquet").write_bytes(b"their metadata")
    one_error_line(
        recap("filter", captioned / "captions", "--where", "true", "-o", folder), "another recaption step"
    )
    assert (folder / "00000.parquet").read_bytes() == b"their metadata"


def test_a_fifo_is_no_report_file_and_an_unwritable_folder_is_said_before_any_work(
    captioned, tmp_path, monkeypatch
):
    os.mkfifo(tmp_path / "pipe.html")
    one_error_line(
        recap("report", captioned / "captions", "-o", tmp_path / "pipe.html"), "not a regular file"
    )
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if str(path) == str(tmp_path) else real_access(path, mode)
    )
    one_error_line(recap("shapes", "-o", tmp_path / "new", "--images", 1), f"{tmp_path} is not writable")
    assert not (tmp_path / "new").exists()


def test_json_nested_past_what_python_parses_is_an_unreadable_file_not_a_crash(captioned, tmp_path):
    import shutil

    from recaption.quality.outputs import recorded_stats, shard_stats
    from recaption.spine.errors import RecaptionError
    from recaption.spine.ledger import OutputDir

    out = tmp_path / "captions"
    shutil.copytree(captioned / "captions", out)
    (out / "00000.done").write_text("[" * 100_000 + "]" * 100_000)
    (out / "00001_stats.json").write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    folder = OutputDir(str(out))
    assert folder.done_provenance("00000") is None and shard_stats(folder, "00001") == {}
    with pytest.raises(RecaptionError, match="00001's stats file cannot be read"):
        recorded_stats(folder, "00001")
    assert recap("stats", out).exit_code == 0
