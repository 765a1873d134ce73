"""`recap lookup`: samples found by key, id or URL through the parquet and the tar index, never a
scan of the tars; the index is left beside the shards by the download."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

import recaption
from recaption.cli import app
from recaption.downloads import download
from recaption.readers import discover_shards
from recaption.samples.tar_index import index_file, scan
from recaption.spine.contract import INDEX_NAME

from ..image_server import ImageServer
from .test_download import config, write_metadata


def downloaded(tmp_path, **options):
    out = tmp_path / "out"
    with ImageServer() as server:
        rows = [{"url": f"{server.url}/img/{i}.jpg", "text": f"photo {i}", "license": None, "sha256": None,
                 "uid": f"uid-{i:03d}"} for i in range(6)]
        gone = {"url": f"{server.url}/404", "text": "gone", "license": None, "sha256": None,
                "uid": "uid-gone"}
        rows.append(gone)
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        download([meta], config(out, shard_size=3, extra_cols=["license", "uid"], **options))
    return out


def index_as_stored(out, name: str) -> list[dict]:
    """The index the download left for shard `name`, as rows (what `scan` gives, reading the tar)."""
    tar = str(out / f"{name}.tar")
    stored = pq.read_table(index_file(str(out / INDEX_NAME), tar))
    return stored.replace_schema_metadata(None).to_pylist()


def test_the_index_the_download_leaves_is_the_one_a_scan_of_the_tar_gives(tmp_path):
    out = downloaded(tmp_path)
    for name in ("00000", "00001", "00002"):
        assert index_as_stored(out, name) == scan(str(out / f"{name}.tar")).to_pylist()


def test_lookup_by_id_finds_the_sample_in_its_shard_and_reads_its_bytes(tmp_path):
    out = downloaded(tmp_path)
    assert sorted(p.name for p in (out / ".recap-index").iterdir())  # left by the download

    found, missing = recaption.lookup(out, ["uid-004", "uid-gone", "uid-nope"], by="uid")

    assert missing == ["uid-nope"]
    by_value = {f.value: f for f in found}
    hit = by_value["uid-004"]
    assert hit.shard == "00001" and hit.row["caption"] == "photo 4"
    exts = {m.ext: m for m in hit.members}
    assert set(exts) == {"jpg", "json", "txt"}
    assert exts["txt"].read() == b"photo 4"
    assert json.loads(exts["json"].read())["uid"] == "uid-004"
    (sample,) = [s for shard in discover_shards([str(out)]) for s in shard if s.key == hit.row["key"]]
    assert exts["jpg"].read() == sample.image_bytes  # the very bytes the tar reader gives
    assert by_value["uid-gone"].row["outcome"] == "http_error" and by_value["uid-gone"].members == []


def test_lookup_by_key_and_url_on_the_command_line(tmp_path):
    out = downloaded(tmp_path, key_format="url")
    found, _ = recaption.lookup(out, ["uid-001"], by="uid")
    key, url = found[0].row["key"], found[0].row["url"]

    result = CliRunner().invoke(app, ["lookup", str(out), key, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)["found"]
    assert row["row"]["url"] == url
    assert {m["name"].rsplit(".", 1)[1] for m in row["members"]} == {"jpg", "json", "txt"}

    table = CliRunner().invoke(app, ["lookup", str(out), url, "nowhere", "--by", "url"])
    assert table.exit_code == 1 and "1 found, 1 missing" in table.output
    assert "not found: nowhere" in table.output


def test_lookup_names_what_is_wrong_in_one_line(tmp_path):
    out = downloaded(tmp_path)
    result = CliRunner().invoke(app, ["lookup", str(out), "x", "--by", "nope"])
    assert result.exit_code == 2 and "no shard has a column 'nope'" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["lookup", str(empty), "x"])
    assert result.exit_code == 2 and "no shards" in result.output and "Traceback" not in result.output


def test_the_index_beside_the_shards_is_not_taken_for_input(tmp_path):
    out = downloaded(tmp_path)
    assert (out / ".recap-index").is_dir()
    shards = discover_shards([str(out)])
    assert sorted(s.name for s in shards) == ["00000", "00001", "00002"]


def test_captioning_a_download_folder_reads_no_index_file(tmp_path, caplog):
    out = downloaded(tmp_path)
    with caplog.at_level("WARNING"):
        shards = discover_shards([str(out)])
    assert [s.name for s in shards] == ["00000", "00001", "00002"]
    assert ".recap-index" not in caplog.text


def test_lookup_by_a_number_column_and_by_a_signed_url(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.table({"key": ["a", "b"], "score": [2.0, 3.5],
                             "url": ["http://x.example/a.jpg?sig=***", "http://x.example/b.jpg"]}),
                   folder / "00000.parquet")
    found, missing = recaption.lookup(folder, ["3.5"], by="score")
    assert [f.row["key"] for f in found] == ["b"] and missing == []
    found, _ = recaption.lookup(folder, ["http://x.example/a.jpg?sig=secret123"], by="url")
    assert [f.row["key"] for f in found] == ["a"]


def test_a_fifo_named_like_a_shard_is_one_line_not_a_hang(tmp_path):
    import os

    folder = tmp_path / "shards"
    folder.mkdir()
    os.mkfifo(folder / "00000.parquet")
    result = CliRunner().invoke(app, ["lookup", str(folder), "x"])
    assert result.exit_code == 2 and "not a file" in result.output and "Traceback" not in result.output


def test_an_unreadable_shard_is_skipped_with_a_warning_naming_it_and_the_others_answer(tmp_path, caplog):
    out = downloaded(tmp_path)
    (out / "00009.parquet").write_text("not parquet")
    (out / "00009.tar").write_bytes(b"")
    (out / "00001.tar").write_bytes((out / "00001.tar").read_bytes()[:700])  # cut short

    found, missing = recaption.lookup(out, ["uid-001", "uid-004"], by="uid")

    assert missing == [] and {f.value for f in found} == {"uid-001", "uid-004"}
    assert [m.ext for m in next(f for f in found if f.value == "uid-001").members]  # shard 00000: fine
    assert next(f for f in found if f.value == "uid-004").members is None  # its tar cannot be read
    assert "00009.parquet" in caplog.text and "truncated or corrupt tar" in caplog.text
    result = CliRunner().invoke(app, ["lookup", str(out), "uid-004", "--by", "uid"])
    assert result.exit_code == 0 and "its tar cannot be read" in result.output
    (out / "00002.tar").unlink()  # no tar at all: no members, and nothing to warn about
    (gone,), _ = recaption.lookup(out, ["uid-gone"], by="uid")
    assert gone.members == []
    result = CliRunner().invoke(app, ["lookup", str(out), "uid-gone", "--by", "uid"])
    assert "none (not downloaded)" in " ".join(result.output.split())


def test_lookup_writes_nothing_into_a_download_it_did_not_make(tmp_path):
    """img2dataset's folder is someone else's: its index lives in memory, the folder is untouched."""
    import shutil
    from pathlib import Path

    folder = tmp_path / "i2d"
    shutil.copytree(Path(__file__).parent.parent / "data" / "img2dataset", folder)
    before = sorted(p.name for p in folder.iterdir())
    found, missing = recaption.lookup(folder, ["000000001"])
    assert missing == [] and found[0].members and found[0].members[0].read()
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_tampered_or_special_index_file_is_never_believed_nor_waited_on(tmp_path):
    import os

    import pyarrow as pa

    out = downloaded(tmp_path)
    tar = str(out / "00001.tar")
    path = index_file(str(out / INDEX_NAME), tar)
    true = recaption.lookup(out, ["uid-004"], by="uid")[0][0].members
    stored = pq.read_table(path)
    bent = stored.set_column(3, "offset", pa.array([-7] * stored.num_rows, pa.int64()))
    pq.write_table(bent.replace_schema_metadata(stored.schema.metadata), path)  # same stamp, wrong places
    assert recaption.lookup(out, ["uid-004"], by="uid")[0][0].members == true  # rebuilt from the tar
    os.remove(path)
    os.mkfifo(path)
    result = CliRunner().invoke(app, ["lookup", str(out), "uid-004", "--by", "uid"])  # hangs if opened
    assert result.exit_code == 0 and "uid-004" in result.output
