"""A folder someone sent: its links never read a file from elsewhere, a name that is not UTF-8 is
one row like any other, and a sidecar in another encoding is read right or not used, said."""

from __future__ import annotations

import logging
import os

import pyarrow.parquet as pq
from typer.testing import CliRunner

from recaption.cli import app
from recaption.readers import discover_shards
from recaption.samples.sample import MAX_CAPTION_CHARS

from ..conftest import image_bytes


def samples_of(folder) -> dict:
    return {s.key: s for shard in discover_shards([str(folder)]) for s in shard}


def test_links_out_of_the_folder_are_not_read(tmp_path, caplog):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (photos / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash")
    (elsewhere / "photo.jpg").write_bytes(image_bytes(seed=3))
    (photos / "a.jpg").write_bytes(image_bytes(seed=1))
    os.symlink(elsewhere / "secret.txt", photos / "a.txt")  # a caption leading out
    os.symlink(elsewhere / "photo.jpg", photos / "b.jpg")  # an image leading out
    (photos / "sub" / "c.jpg").write_bytes(image_bytes(seed=2))
    os.symlink("sub/c.jpg", photos / "d.jpg")  # a link that stays inside: read
    with caplog.at_level(logging.WARNING):
        got = samples_of(photos)
    assert got["a"].ok and got["a"].org_caption is None and "root:" not in caplog.text
    assert "a.txt links to a file outside" in caplog.text
    assert got["b"].status == "read_error" and "links to a file outside" in got["b"].error
    assert got["b"].image_bytes is None and got["b"].sha256 is None  # not even hashed
    assert got["d"].image_bytes == (photos / "sub" / "c.jpg").read_bytes()


def test_a_link_to_a_folder_is_not_followed_and_said_so(tmp_path, caplog):
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photos.mkdir()
    elsewhere.mkdir()
    (photos / "a.jpg").write_bytes(image_bytes(seed=1))
    (elsewhere / "b.jpg").write_bytes(image_bytes(seed=2))
    os.symlink(elsewhere, photos / "more")
    with caplog.at_level(logging.WARNING):
        got = samples_of(photos)
    assert set(got) == {"a"}
    assert "1 link to a folder not followed (more)" in caplog.text and "as an input of its own" in caplog.text
    assert "not an image" not in caplog.text  # not counted as a file without an extension


def test_a_name_that_is_not_utf8_is_one_row_and_the_others_are_captioned(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(image_bytes(seed=1))
    with open(os.path.join(os.fsencode(photos), b"bad\xffname.jpg"), "wb") as f:
        f.write(image_bytes(seed=2))
    result = CliRunner().invoke(app, ["caption", str(photos), "-o", str(tmp_path / "out"),
                                      "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "photos-00000.parquet").to_pylist()}
    assert set(rows) == {"a", "bad\ufffdname"} and all(r["status"] == "ok" for r in rows.values())


def test_sidecars_in_other_encodings_are_read_right_or_not_used_with_a_warning(tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    captions = {"bom": "\ufeffa cat".encode(), "utf16": "a dog on a sofa".encode("utf-16"),
                "latin1": "café naïve".encode("latin-1"), "binary": b"\x00\x01\x02abc",
                "long": ("word " * 5000).encode()}
    for stem, data in captions.items():
        (photos / f"{stem}.jpg").write_bytes(image_bytes(seed=len(stem)))
        (photos / f"{stem}.txt").write_bytes(data)
    with caplog.at_level(logging.WARNING):
        got = {k: s.org_caption for k, s in samples_of(photos).items()}
    assert got["bom"] == "a cat" and got["utf16"] == "a dog on a sofa"
    assert got["latin1"] is None and "caption of" in caplog.text and "not UTF-8 text" in caplog.text
    assert got["binary"] is None and "NUL characters" in caplog.text
    assert len(got["long"]) == MAX_CAPTION_CHARS and f"first {MAX_CAPTION_CHARS} of" in caplog.text


def test_a_tars_txt_caption_is_read_by_the_same_rule_as_a_sidecar(tmp_path, caplog):
    import io
    import tarfile

    tar = tmp_path / "00000.tar"
    with tarfile.open(tar, "w") as archive:
        for key, text in (("a", "\ufeffa cat\n".encode()), ("b", "café".encode("latin-1"))):
            for ext, data in (("jpg", image_bytes(seed=len(key))), ("txt", text)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    with caplog.at_level(logging.WARNING):
        got = {s.key: s.org_caption for shard in discover_shards([str(tar)]) for s in shard}
    assert got == {"a": "a cat", "b": None} and "b.txt not used: not UTF-8 text" in caplog.text
