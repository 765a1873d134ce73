"""What data and users' files may make the toolkit read or do: paths from data stay inside their
root, only regular files are opened (a FIFO never hangs a run), settings files cannot cost more
than their size, a mixed folder loses no shard, an export never pairs a caption with another
image, and numbers that would break the math are refused. Each probe ends in one line or a row
with a status."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tarfile
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import recaption
from recaption.cli import app
from recaption.readers import ColumnConfig, discover_shards, open_shard
from recaption.readers.base import inside
from recaption.samples.sample import READ_ERROR
from recaption.samples.tars import member_key
from recaption.spine.user_yaml import UserFileError, load_yaml

from ..conftest import image_bytes, write_shards
from ..quality.test_selection import row, write_output


@contextmanager
def no_hang(seconds: int = 60):
    """Fail (not hang) if the block blocks: the FIFO probes would wait forever on a plain open."""
    def expired(*_):
        raise AssertionError(f"blocked for {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *expected: str) -> str:
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert out.startswith("error:") and len(out.splitlines()) == 1, out
    for text in expected:
        assert text in out, out
    return out


# -- paths from data ------------------------------------------------------------------------------

@pytest.fixture
def planted(tmp_path):
    """A data folder whose parquet names files: one beside it, and several outside it."""
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.png").write_bytes(image_bytes(8, 8, fmt="PNG", seed=7))
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    (data / "img" / "ok.png").write_bytes(image_bytes(8, 8, fmt="PNG", seed=1))
    os.symlink(outside / "secret.png", data / "img" / "link.png")
    paths = {
        "inside": "img/ok.png",
        "absolute": str(outside / "secret.png"),
        "dotdot": "../private/secret.png",
        "sneaky-dotdot": "img/../../private/secret.png",
        "file-url": f"file://{outside / 'secret.png'}",
        "symlink-out": "img/link.png",
    }
    table = pa.table({"key": list(paths), "image": list(paths.values())})
    pq.write_table(table, data / "rows.parquet")
    struct = pa.table({"key": list(paths), "image": pa.array(
        [{"bytes": None, "path": p} for p in paths.values()],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    pq.write_table(struct, data / "struct.parquet")
    return tmp_path


@pytest.mark.parametrize("name", ["rows", "struct"])
def test_a_parquet_path_outside_its_folder_is_a_read_error_not_a_read(planted, name):
    samples = {s.key: s for s in open_shard(str(planted / "data" / f"{name}.parquet"))}
    assert samples["inside"].ok and samples["inside"].image_bytes
    secret = (planted / "private" / "secret.png").read_bytes()
    for key in ("absolute", "dotdot", "sneaky-dotdot", "file-url", "symlink-out"):
        sample = samples[key]
        assert sample.status == READ_ERROR and sample.image_bytes is None, key
        assert "--image-root" in sample.error and "--any-image-path" in sample.error, sample.error
        assert sample.sha256 != hashlib.sha256(secret).hexdigest()


def test_image_root_and_any_image_path_lift_the_refusal_as_they_say(planted):
    parquet = str(planted / "data" / "rows.parquet")
    rooted = {s.key: s for s in open_shard(parquet, ColumnConfig(image_root=str(planted)))}
    assert rooted["absolute"].ok and rooted["file-url"].ok, "absolute paths under the named root are read"
    assert rooted["inside"].status == "missing_image", "relative paths resolve from the named root"
    assert rooted["dotdot"].status == READ_ERROR, "and may not leave it"
    anywhere = {s.key: s for s in open_shard(parquet, ColumnConfig(any_image_path=True))}
    assert all(s.ok for s in anywhere.values())


def test_caption_refuses_paths_outside_the_root_row_by_row(planted, tmp_path):
    result = invoke("caption", planted / "data" / "rows.parquet", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "rows.parquet").to_pylist()}
    assert rows["inside"]["status"] == "ok"
    assert {k: r["status"] for k, r in rows.items() if k != "inside"} == dict.fromkeys(
        ["absolute", "dotdot", "sneaky-dotdot", "file-url", "symlink-out"], READ_ERROR)


@given(st.lists(st.sampled_from(["a", "b", "..", ".", ""]), max_size=8))
def test_inside_agrees_with_the_normalised_path(parts):
    import posixpath

    path = "/root/data/" + "/".join(parts)
    normal = posixpath.normpath(path)
    under = normal == "/root/data" or normal.startswith("/root/data/")
    assert inside("/root/data", path, local=False) == under


# -- special files --------------------------------------------------------------------------------

def test_a_fifo_among_images_or_named_by_a_path_is_a_row_never_a_hang(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(image_bytes(8, 8))
    os.mkfifo(folder / "f.jpg")
    paths = pa.table({"key": ["fifo", "cat"], "image": ["f.jpg", "cat.jpg"]})
    pq.write_table(paths, folder / "paths.parquet")
    with no_hang():
        by_folder = {s.key: s for shard in discover_shards([str(folder)]) for s in shard}
        by_path = {s.key: s for s in open_shard(str(folder / "paths.parquet"))}
    for samples in (by_folder, by_path):
        fifo = samples.get("f") or samples["fifo"]
        assert fifo.status == READ_ERROR and "FIFO" in fifo.error, fifo.error
        assert samples["cat"].ok


def test_a_fifo_named_as_a_shard_metadata_or_passes_file_is_one_line(tmp_path):
    write_shards(tmp_path / "in", n_shards=1, per_shard=1)
    os.mkfifo(tmp_path / "in" / "00001.tar")
    os.mkfifo(tmp_path / "urls.parquet")
    os.mkfifo(tmp_path / "passes.yaml")
    with no_hang():
        shard = invoke("caption", tmp_path / "in" / "00001.tar", "-o", tmp_path / "o1", "--model", "tiny")
        metadata = invoke("download", tmp_path / "urls.parquet", "-o", tmp_path / "o2")
        passes = invoke("caption", tmp_path / "in" / "00000.tar", "-o", tmp_path / "o3",
                        "--passes", tmp_path / "passes.yaml")
    assert shard.exit_code != 0 and "FIFO" in shard.output and "Traceback" not in shard.output, shard.output
    one_line_error(metadata, "FIFO")
    one_line_error(passes, "--passes", "FIFO")


# -- YAML and JSON from users ---------------------------------------------------------------------

BILLION_LAUGHS = """
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
passes: [*e]
"""


@pytest.mark.parametrize("text, says", [
    (BILLION_LAUGHS, "aliases"),
    ("[" * 50_000 + "]" * 50_000, "nested deeper than"),
    ("- " * 40 + "x", "nested deeper than"),
    ("- {name: a, prompt: x, max_new_tokens: 'abc'}", "pass 1: max_new_tokens 'abc' is not a whole number"),
    ("- {name: a, prompt: x, top_k: true}", "top_k True is not a whole number"),
    ("- {name: a, prompt: [1, 2]}", "prompt must be text"),
    ("- {name: a, prompt: x}\n- {name: a_length, prompt: y}", "both write re_caption_a_length"),
    ("- just a string", "pass 1: give name and prompt"),
    ("{passes: 3}", "expected a list of passes"),
    ("key: [unclosed", "not YAML"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_a_hostile_passes_file_is_one_line_before_any_model_loads(tmp_path, text, says):
    path = tmp_path / "passes.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    write_shards(tmp_path / "in", n_shards=1, per_shard=1)
    # A model that does not exist: reaching the model would be another error than the one expected.
    result = invoke("caption", tmp_path / "in", "-o", tmp_path / "out", "--model", str(tmp_path / "no-model"),
                    "--passes", path)
    one_line_error(result, says)
    assert len(result.output) < 400
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.parquet"))


@given(st.text(max_size=200))
def test_the_bounded_loader_only_ever_returns_data_or_a_user_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "f.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_yaml(path, "--passes")
    except UserFileError as exc:
        assert str(exc).startswith(f"--passes {path}") and "\n" not in str(exc)


# -- a folder of tars and parquet files -----------------------------------------------------------

def test_a_folder_of_tars_and_parquet_files_captions_every_shard_and_names_the_rest(tmp_path, caplog):
    folder = tmp_path / "mixed"
    write_shards(folder, n_shards=1, per_shard=2)  # 00000.tar
    pq.write_table(pa.table({"url": ["u1", "u2"]}), folder / "00000.parquet")  # its img2dataset metadata
    pq.write_table(pa.table({"key": ["p"], "image": [image_bytes(8, 8)]}), folder / "photos.parquet")
    pq.write_table(pa.table({"note": ["x"]}), folder / "notes.parquet")  # no images at all
    shards = discover_shards([str(folder)])
    assert sorted(s.name for s in shards) == ["00000", "photos"]
    assert "notes.parquet has no image column" in caplog.text
    globbed = discover_shards([str(folder / "*")])
    assert sorted(s.name for s in globbed) == ["00000", "photos"]


# -- export: the image is the one captioned; keys a tar cannot hold -------------------------------

def _image_parquet(path, keys: list[str], seed: int) -> list[bytes]:
    images = [image_bytes(8, 8, fmt="PNG", seed=seed + i) for i in range(len(keys))]
    pq.write_table(pa.table({"key": keys, "image": images}), path)
    return images


def test_export_never_pairs_a_caption_with_another_image_and_keys_are_made_safe(tmp_path):
    keys = ["plain", "nul\x00key", "new\nline"]
    (tmp_path / "s1").mkdir()
    (tmp_path / "s2").mkdir()
    originals = _image_parquet(tmp_path / "s1" / "images.parquet", keys, seed=0)
    _image_parquet(tmp_path / "s2" / "images.parquet", keys, seed=50)  # same keys, other images
    out = tmp_path / "out"
    rows = [row(k, sha256=hashlib.sha256(b).hexdigest()) for k, b in zip(keys, originals, strict=True)]
    write_output(out, "images", rows)

    wrong = recaption.export(out, tmp_path / "wrong", images=[str(tmp_path / "s2")])
    assert wrong.status_counts.get("exported", 0) == 0
    assert wrong.status_counts["image_mismatch"] == 3
    with tarfile.open(tmp_path / "wrong" / "images.tar") as tar:
        assert tar.getnames() == []

    right = recaption.export(out, tmp_path / "right", images=[str(tmp_path / "s1")])
    assert right.status_counts["exported"] == 3
    with tarfile.open(tmp_path / "right" / "images.tar") as tar:
        names = tar.getnames()
        metas = [json.loads(tar.extractfile(n).read()) for n in names if n.endswith(".json")]
    assert names == [f"{member_key(k)}.{ext}" for k in keys for ext in ("jpg", "txt", "json")]
    assert all("\x00" not in n and "\n" not in n for n in names)
    assert [m["key"] for m in metas] == keys


@given(st.text(max_size=40))
def test_member_keys_hold_nothing_a_tar_name_cannot(key):
    safe = member_key(key)
    assert safe and member_key(safe) == safe
    assert not any(c in safe for c in "./\\\x00\n\r\t") and all(ord(c) >= 0x20 for c in safe)


# -- numbers that break the math ------------------------------------------------------------------

@pytest.mark.parametrize("guidance", ["1e39", "inf", "nan", "-1", "101"])
def test_guidance_that_float32_cannot_survive_is_refused(tmp_path, guidance):
    from recaption.dit.generate import check_guidance
    from recaption.training.inputs import TrainingInputError

    with pytest.raises(TrainingInputError, match="give a number from 0 to 100"):
        check_guidance(float(guidance))


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_prompt_file_nested_too_deeply_is_one_line(tmp_path, suffix):
    from recaption.dit.prompt_files import load_prompts
    from recaption.training.inputs import TrainingInputError

    path = tmp_path / f"prompts{suffix}"
    path.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(TrainingInputError, match="nested too deeply"):
        load_prompts(str(path))


# -- neighbours found on the way ------------------------------------------------------------------

def test_a_row_naming_another_protocol_never_connects_and_fails_only_itself(tmp_path):
    """A path with a protocol is judged by its text before any filesystem is built (building an
    ftp or chained http filesystem connects): each is that row's read_error; the good row is
    captioned; a listener on loopback sees no connection."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    os.mkfifo(tmp_path / "fifo.zip")
    (tmp_path / "gone.zip").symlink_to(tmp_path / "nowhere.zip")
    hostile = [f"ftp://127.0.0.1:{port}/x.png", f"zip://x::http://127.0.0.1:{port}/a.zip",
               f"zip://x::file://{tmp_path}/fifo.zip", f"zip://x::file://{tmp_path}/gone.zip",
               f"HTTP://127.0.0.1:{port}/a.png", "foo://bar",
               "reference://", "s3://some-bucket/x.png", f"simplecache::http://127.0.0.1:{port}/a.png"]
    (tmp_path / "ok.png").write_bytes(image_bytes(8, 8, fmt="PNG"))
    pq.write_table(pa.table({"image": ["ok.png", *hostile]}), tmp_path / "rows.parquet")
    for columns in (ColumnConfig(), ColumnConfig(any_image_path=True)):
        with no_hang():
            samples = list(open_shard(str(tmp_path / "rows.parquet"), columns))
        assert samples[0].ok
        assert [s.status for s in samples[1:]] != [] and all(not s.ok for s in samples[1:])
        # no_hang's alarm, caught as a row's error, would pass unseen: no row may have waited for it
        assert not any("blocked for" in (s.error or "") for s in samples), [s.error for s in samples]
        if columns.any_image_path:  # the chains' inner files are judged before any filesystem is built
            assert "fifo.zip is a FIFO (named pipe), not a file" in samples[3].error
            assert "gone.zip is a link to nothing, not a file" in samples[4].error
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever connected
    listener.close()


def test_a_socket_named_as_metadata_or_passes_is_one_line(tmp_path):
    import socket

    for name in ("urls.txt", "passes.yaml"):
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(tmp_path / name))
    download = invoke("download", tmp_path / "urls.txt", "-o", tmp_path / "o")
    errors = [line for line in download.output.splitlines() if line.startswith("error:")]
    assert download.exit_code == 2 and len(errors) == 1 and "is a socket" in errors[0], download.output
    assert "Traceback" not in download.output
    write_shards(tmp_path / "in", n_shards=1, per_shard=1)
    passes = invoke("caption", tmp_path / "in", "-o", tmp_path / "c", "--passes", tmp_path / "passes.yaml")
    one_line_error(passes, "is a socket")


def test_export_under_images_checks_the_bytes_not_the_stated_sha256(tmp_path):
    """An image set with the right keys and a sha256 column copied from the captioned one is
    still other images: judged by their bytes. The right images with a wrong stated sha256 are
    exported."""
    keys = ["a", "b"]
    (tmp_path / "s1").mkdir()
    originals = _image_parquet(tmp_path / "s1" / "images.parquet", keys, seed=0)
    hashes = [hashlib.sha256(b).hexdigest() for b in originals]
    others = [image_bytes(8, 8, fmt="PNG", seed=90 + i) for i in range(2)]
    (tmp_path / "forged").mkdir()
    pq.write_table(pa.table({"key": keys, "image": others, "sha256": hashes}),
                   tmp_path / "forged" / "images.parquet")
    (tmp_path / "right").mkdir()
    pq.write_table(pa.table({"key": keys, "image": originals, "sha256": ["0" * 64] * 2}),
                   tmp_path / "right" / "images.parquet")
    out = tmp_path / "out"
    write_output(out, "images", [row(k, sha256=h) for k, h in zip(keys, hashes, strict=True)])
    forged = recaption.export(out, tmp_path / "e1", images=[str(tmp_path / "forged")])
    assert forged.status_counts["image_mismatch"] == 2 and not forged.status_counts.get("exported")
    right = recaption.export(out, tmp_path / "e2", images=[str(tmp_path / "right")])
    assert right.status_counts["exported"] == 2


@pytest.mark.parametrize("url, secrets", [
    ("https://h/x?a=1;token=SEMITOK", ["SEMITOK"]),
    ("https://h/x?secret_key=S1&x-api-key=S2&subscription-key=S3&access_key=S4&private_key=S5",
     ["S1", "S2", "S3", "S4", "S5"]),
    ("https://h/x?aws_secret_access_key=S6&pass=S7&sessionid=S8&%74oken=S9", ["S6", "S7", "S8", "S9"]),
    ("//bob:relpw@h/x?token=RELTOK", ["relpw", "bob", "RELTOK"]),
    ("h/x?token=BARETOK", ["BARETOK"]),
])
def test_url_secrets_in_every_spelling_are_masked_and_the_rest_kept_as_written(url, secrets):
    from recaption.redact import strip_url_secrets

    stored = strip_url_secrets(url)
    assert not any(s in stored for s in secrets), stored
    kept = strip_url_secrets("https://h/x?q=a%20b&flag&%E4=1&token=T")
    assert kept == "https://h/x?q=a%20b&flag&%E4=1&token=***", "other parameters byte for byte"


def test_a_lone_surrogate_in_a_tar_json_is_a_row_not_the_end_of_the_run(tmp_path):
    import io

    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for key, meta in (("a", '{"key": "\\ud800", "caption": "x\\udfff"}'), ("b", '{"caption": "fine"}')):
            for ext, data in (("jpg", image_bytes(8, 8)), ("json", meta.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    result = invoke("caption", tmp_path / "s.tar", "-o", tmp_path / "out", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "out" / "s.parquet").to_pylist()
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize("text, says", [
    ("- {name: a, name: b, prompt: x}", "'name' is given twice"),
    ("- {name: a, prompt: x, " + ", ".join(f"k{i}: 1" for i in range(5000)) + "}", "and 4995 more"),
    ("- {name: a, prompt: x, max_new_tokens: 99999999999999999999999}", "max_new_tokens 1 to 8192"),
])
def test_more_hostile_passes_files(tmp_path, text, says):
    path = tmp_path / "passes.yaml"
    path.write_text(text)
    write_shards(tmp_path / "in", n_shards=1, per_shard=1)
    result = invoke("caption", tmp_path / "in", "-o", tmp_path / "out", "--passes", path)
    assert len(one_line_error(result, says)) < 400


def test_member_keys_hide_nothing():
    assert member_key("cat\u202egpj.exe\u200b") == "cat_gpj_exe_"


def test_a_shard_file_replaced_since_it_was_captioned_is_captioned_again(tmp_path):
    """recap run's trap: a download rerun (with --allow-private-network) rewrites 00000.tar with
    the rows it now fetched; the caption half must not skip it as done."""
    from recaption.samples.shards import ShardRecord, write_webdataset_shard

    shard = tmp_path / "in" / "00000.tar"
    write_webdataset_shard(shard, [ShardRecord(image_bytes(8, 8), "one", "u1", "jpg")])
    first = invoke("caption", shard, "-o", tmp_path / "out", "--max-new-tokens", "4")
    assert first.exit_code == 0, first.output
    bigger = [ShardRecord(image_bytes(8, 8, seed=i), f"r{i}", f"u{i}", "jpg") for i in range(3)]
    write_webdataset_shard(shard, bigger)
    os.utime(shard, (1, 1))  # a different mtime, whatever the clock's resolution
    again = invoke("caption", shard, "-o", tmp_path / "out", "--max-new-tokens", "4")
    assert again.exit_code == 0, again.output
    assert len(pq.read_table(tmp_path / "out" / "00000.parquet")) == 3
    assert "00000.tar changed since it was captioned" in " ".join(again.output.split())
    unchanged = invoke("caption", shard, "-o", tmp_path / "out", "--max-new-tokens", "4")
    assert "shards skipped (already complete) │ 1" in unchanged.output, unchanged.output
