"""Placeholder images (a host's "image unavailable" picture) are caught, not stored or captioned."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recaption.cli import app
from recaption.downloads import download
from recaption.samples.placeholders import PlaceholderListError, read_placeholder_list, repeated_placeholders
from recaption.samples.tar_index import scan

from ..image_server import IMAGES, ImageServer
from .test_download import config, table, tar_members, write_metadata
from .test_lookup import index_as_stored


def urls(server, placeholders: int = 5) -> list[dict]:
    rows = [{"url": f"{server.url}/maybe/{i}", "text": f"gone {i}", "license": None, "sha256": None}
            for i in range(placeholders)]
    return rows + [{"url": f"{server.url}/img/{i}.jpg", "text": f"photo {i}", "license": None, "sha256": None}
                   for i in range(3)]


def test_the_same_bytes_from_many_urls_of_one_host_are_a_placeholder_and_not_stored(tmp_path):
    out = tmp_path / "out"
    with ImageServer() as server:
        server.down = False  # /maybe/N: the same picture for every N
        meta = write_metadata(tmp_path / "urls.parquet", urls(server))
        download([meta], config(out))
        rows = table(out)
        placeholders = [r for u, r in rows.items() if "/maybe/" in u]
        assert len(placeholders) == 5
        for row in placeholders:
            assert row["outcome"] == "placeholder" and row["status"] == "failed_to_download"
            assert "came from 5 paths on 127.0.0.1: a placeholder" in row["error_message"]
            assert row["sha256"] == hashlib.sha256(IMAGES["5.jpg"]).hexdigest()
        photos = sorted(r["key"] for u, r in rows.items() if "/img/" in u)
        assert all(rows[u]["outcome"] == "ok" for u in rows if "/img/" in u)
        members = sorted(f"{k}.{x}" for k in photos for x in ("jpg", "json", "txt"))
        assert tar_members(out / "00000.tar") == members
        stats = json.loads((out / "00000_stats.json").read_text())
        assert stats["successes"] == 3
        assert index_as_stored(out, "00000") == scan(str(out / "00000.tar")).to_pylist()  # (rewritten tar)

        # 0 turns the rule off: a loosened setting, so the rerun fetches those rows again
        download([meta], config(out, placeholder_min_urls=0))
        assert all(r["outcome"] == "ok" for r in table(out).values())
        assert len(tar_members(out / "00000.tar")) == 8 * 3
        assert index_as_stored(out, "00000") == scan(str(out / "00000.tar")).to_pylist()  # (retried in place)


def test_fewer_urls_than_the_threshold_are_kept(tmp_path):
    with ImageServer() as server:
        server.down = False
        meta = write_metadata(tmp_path / "urls.parquet", urls(server, placeholders=4))
        download([meta], config(tmp_path / "out"))
    assert all(r["outcome"] == "ok" for r in table(tmp_path / "out").values())


def test_a_listed_sha256_is_a_placeholder_in_download_and_in_caption(tmp_path):
    listed = hashlib.sha256(IMAGES["1.jpg"]).hexdigest()
    known = tmp_path / "placeholders.txt"
    known.write_text(f"# host placeholders\n{listed.upper()}  # the grey one\n\n")
    with ImageServer() as server:
        meta = write_metadata(tmp_path / "urls.parquet", urls(server, placeholders=0))
        download([meta], config(tmp_path / "plain"))
        download([meta], config(tmp_path / "out", placeholders=str(known)))
    row = next(r for u, r in table(tmp_path / "out").items() if u.endswith("/img/1.jpg"))
    assert row["outcome"] == "placeholder" and listed in row["error_message"]

    # captioning shards someone else downloaded: the listed image is not captioned
    args = ["--max-new-tokens", "4", "--device", "cpu", "--placeholders", str(known)]
    result = CliRunner().invoke(app, ["caption", str(tmp_path / "plain"), "-o", str(tmp_path / "c"), *args])
    assert result.exit_code == 0, result.output
    rows = {r["sha256"]: r for r in pq.read_table(tmp_path / "c" / "00000.parquet").to_pylist()}
    assert rows[listed]["status"] == "placeholder" and rows[listed]["re_caption"] is None
    assert sum(r["status"] == "ok" and r["re_caption"] is not None for r in rows.values()) == 2
    stats = CliRunner().invoke(app, ["stats", str(tmp_path / "c"), "--json"])
    assert json.loads(stats.output)["status_counts"]["placeholder"] == 1


def test_a_bad_placeholder_list_is_one_line_naming_the_line(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("0" * 64 + "\nnot-a-digest\n")
    with pytest.raises(PlaceholderListError, match="line 2: 'not-a-digest' is not a sha256"):
        read_placeholder_list(str(bad))
    args = ["caption", str(tmp_path), "-o", str(tmp_path / "o"), "--placeholders", str(bad)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "line 2" in result.output and "Traceback" not in result.output


def test_a_reposted_photo_on_many_hosts_is_not_a_placeholder():
    rows = [{"key": str(i), "url": f"http://host{i}.example/a.jpg", "sha256": "ab" * 32, "outcome": "ok"}
            for i in range(10)]
    assert repeated_placeholders(rows, 5) == {}
    same_host = [{**r, "url": f"http://one.example/{i}.jpg"} for i, r in enumerate(rows)]
    assert set(repeated_placeholders(same_host, 5)) == {str(i) for i in range(10)}
    assert repeated_placeholders(same_host, 0) == {}


def test_rows_judged_placeholders_before_count_on_a_retry():
    """A --retry-failed rerun keeps the rows it judged placeholders: the ones fetched again with
    the same bytes join them, not start a new count."""
    old = [{"key": f"p{i}", "url": f"http://h.example/{i}", "sha256": "cd" * 32, "outcome": "placeholder"}
           for i in range(5)]
    new = [{"key": f"n{i}", "url": f"http://h.example/n{i}", "sha256": "cd" * 32, "outcome": "ok"}
           for i in range(3)]
    assert set(repeated_placeholders(old + new, 5)) == {"n0", "n1", "n2"}


def test_one_photo_in_query_variants_is_not_a_placeholder():
    rows = [{"key": str(i), "url": f"http://cdn.example/p.jpg?w={i}", "sha256": "ef" * 32, "outcome": "ok"}
            for i in range(6)]
    assert repeated_placeholders(rows, 5) == {}


def test_a_bad_list_makes_no_download_folder(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("nope\n")
    meta = write_metadata(tmp_path / "urls.parquet", [{"url": "http://127.0.0.1:9/a.jpg", "text": "a",
                                                        "license": None, "sha256": None}])
    with pytest.raises(PlaceholderListError):
        download([meta], config(tmp_path / "out", placeholders=str(bad)))
    assert not (tmp_path / "out").exists()
