"""`recap download` against a real HTTP server on 127.0.0.1 serving images and faulty endpoints."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from recaption.downloads import DownloadConfig, download
from recaption.downloads.fetch import address_blocked, robots_opt_out
from recaption.downloads.metadata import MetadataReader

from ..image_server import IMAGES, ImageServer


def write_metadata(path, rows: list[dict]):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def config(out, **options) -> DownloadConfig:
    defaults = dict(
        retries=1,
        retry_backoff=0.01,
        timeout=1.0,
        allow_private_network=True,
        shard_size=100,
        resize="keep_ratio",
        image_size=32,
        extra_cols=["license"],
        sha256_col="sha256",
        max_bytes=200_000,
    )
    return DownloadConfig(output=str(out), **{**defaults, **options})


def table(out, shard="00000") -> dict[str, dict]:
    return {r["url"]: r for r in pq.read_table(out / f"{shard}.parquet").to_pylist()}


def tar_members(path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(m.name for m in tar.getmembers())


FAULTS = {  # path -> (outcome, http_status)
    "/img/0.jpg": ("ok", 200),
    "/404": ("http_error", 404),
    "/flaky429/a": ("ok", 200),
    "/500": ("http_error", 500),
    "/slow": ("timeout", None),
    "/truncated": ("truncated", 200),
    "/html": ("decode_error", 200),
    "/loop": ("too_many_redirects", None),
    "/huge": ("too_large", 200),
    "/optout": ("opted_out", 200),
    "/optout-other": ("ok", 200),
    "/img/5.jpg": ("hash_mismatch", 200),
    "/img/6.jpg": ("ok", 200),
    "/redirect": ("ok", 200),
}


def test_every_fault_gets_its_exact_outcome(tmp_path):
    with ImageServer() as server:
        rows = [
            {
                "url": server.url + path,
                "text": f"caption of {path}",
                "license": f"L{i}",
                "sha256": (
                    "0" * 64
                    if path == "/img/5.jpg"
                    else hashlib.sha256(IMAGES["6.jpg"]).hexdigest()
                    if path == "/img/6.jpg"
                    else None
                ),
            }
            for i, path in enumerate(FAULTS)
        ]
        rows.append({"url": "ftp://example.org/x.jpg", "text": "ftp", "license": "L-ftp", "sha256": None})
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        started = time.perf_counter()
        summary = download([meta], config(tmp_path / "out"))
        elapsed = time.perf_counter() - started
        assert server.hits["/flaky429/a"] == 2 and server.hits["/500"] == 2  # retried once each
        assert server.hits["/404"] == 1  # a 404 is not retried
    assert elapsed < 8, "a slow body must time out within the bound, not hang the shard"
    assert len(summary.failed) == 0
    got = table(tmp_path / "out")
    for path, (outcome, http_status) in FAULTS.items():
        row = got[server.url + path]
        assert (row["outcome"], row["http_status"]) == (outcome, http_status), (path, row)
        assert row["status"] == (
            "success"
            if outcome == "ok"
            else "failed_to_resize"
            if outcome == "decode_error"
            else "failed_to_download"
        )
        assert (row["error_message"] is None) == (outcome == "ok"), row
    assert "Content-Type text/html" in got[server.url + "/html"]["error_message"]
    assert "no complete response within 1s" in got[server.url + "/slow"]["error_message"]
    assert got["ftp://example.org/x.jpg"]["outcome"] == "bad_url"
    ok = [r for r in got.values() if r["outcome"] == "ok"]
    members = tar_members(tmp_path / "out" / "00000.tar")
    assert members == sorted(f"{r['key']}.{ext}" for r in ok for ext in ("jpg", "json", "txt"))
    assert [r["key"] for r in pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()] == [
        f"00000{i:02d}" for i in range(len(rows))
    ]  # img2dataset keys, one row per input row, in order
    stats = json.loads((tmp_path / "out" / "00000_stats.json").read_text())
    assert stats["count"] == len(rows) and stats["successes"] == len(ok)
    assert stats["outcomes"]["ok"] == len(ok) and stats["outcomes"]["http_error"] == 2
    assert (tmp_path / "out" / "00000.done").exists()


def test_sample_json_and_resize(tmp_path):
    with ImageServer() as server:
        rows = [
            {"url": f"{server.url}/img/{i}.jpg", "text": f"photo {i}", "license": "CC0", "sha256": None}
            for i in range(3)
        ]
        download(
            [write_metadata(tmp_path / "urls.parquet", rows)], config(tmp_path / "out", resize="center_crop")
        )
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        meta = json.loads(tar.extractfile("0000001.json").read())
        image = Image.open(io.BytesIO(tar.extractfile("0000001.jpg").read()))
        caption = tar.extractfile("0000001.txt").read().decode()
    assert image.size == (32, 32) and caption == "photo 1"
    assert meta["width"] == meta["height"] == 32 and (meta["original_width"], meta["original_height"]) == (
        70,
        45,
    )
    assert meta["sha256"] == hashlib.sha256(IMAGES["1.jpg"]).hexdigest()
    assert meta["license"] == "CC0" and meta["key"] == "0000001" and meta["status"] == "success"


@pytest.mark.parametrize(
    "mode,size", [("keep_ratio", (96, 32)), ("border", (32, 32)), ("center_crop", (32, 32))]
)
def test_resize_modes(tmp_path, mode, size):
    with ImageServer() as server:
        rows = [{"url": f"{server.url}/img/big.png", "text": "wide", "license": None, "sha256": None}]
        download(
            [write_metadata(tmp_path / "urls.parquet", rows)],
            config(tmp_path / "out", resize=mode, max_bytes=4_000_000),
        )
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        assert Image.open(io.BytesIO(tar.extractfile("0000000.jpg").read())).size == size


def test_keep_format_stores_the_servers_bytes(tmp_path):
    with ImageServer() as server:
        rows = [{"url": f"{server.url}/img/big.png", "text": "wide", "license": None, "sha256": None}]
        download(
            [write_metadata(tmp_path / "urls.parquet", rows)],
            config(tmp_path / "out", resize="none", format="keep", max_bytes=4_000_000),
        )
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        assert tar.extractfile("0000000.png").read() == IMAGES["big.png"]


def test_private_addresses_are_refused_by_default(tmp_path):
    with ImageServer() as server:
        urls = [
            f"{server.url}/img/0.jpg",
            f"http://localhost:{server.port}/img/0.jpg",
            f"http://[::1]:{server.port}/img/0.jpg",
            "http://169.254.169.254/latest/meta-data/",
        ]
        rows = [{"url": u, "text": "x", "license": None, "sha256": None} for u in urls]
        download(
            [write_metadata(tmp_path / "urls.parquet", rows)],
            config(tmp_path / "out", allow_private_network=False),
        )
        assert sum(server.hits.values()) == 0, "no request may reach a private address"
    got = table(tmp_path / "out")
    assert {r["outcome"] for r in got.values()} == {"blocked_address"}, got


def test_address_and_robots_rules():
    assert (
        address_blocked("10.1.2.3") and address_blocked("::ffff:127.0.0.1") and address_blocked("224.0.0.1")
    )
    assert not address_blocked("93.184.216.34")
    disallowed = ("noai", "noimageai", "noindex", "none")
    assert robots_opt_out(["NoAI"], "recaption", disallowed) == "noai"
    assert robots_opt_out(["recaption: noimageai, nofollow"], "recaption", disallowed) == "noimageai"
    assert robots_opt_out(["otherbot: noai"], "recaption", disallowed) is None
    assert robots_opt_out(["nofollow", "noarchive"], "recaption", disallowed) is None


def test_retry_failed_merges_only_transient_failures(tmp_path):
    with ImageServer() as server:
        rows = [
            {"url": server.url + p, "text": p, "license": None, "sha256": None}
            for p in ["/img/0.jpg", "/maybe/1", "/404", "/maybe/2", "/img/1.jpg"]
        ]
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        download([meta], config(tmp_path / "out", retries=0))
        first = table(tmp_path / "out")
        assert first[server.url + "/maybe/1"]["http_status"] == 503
        server.down = False
        hits_before = server.hits.copy()
        download([meta], config(tmp_path / "out", retries=0, retry_failed=True))
        refetched = {p for p in server.hits if server.hits[p] > hits_before.get(p, 0)}
    assert refetched == {"/maybe/1", "/maybe/2"}, "only transient failures are fetched again"
    second = table(tmp_path / "out")
    assert [second[u]["outcome"] for u in first] == ["ok", "ok", "http_error", "ok", "ok"]
    assert second[server.url + "/img/0.jpg"] == first[server.url + "/img/0.jpg"]
    members = tar_members(tmp_path / "out" / "00000.tar")
    assert len(members) == len(set(members)) == 4 * 3  # no duplicates: 4 images x jpg/json/txt
    # A plain rerun skips the complete shard and fetches nothing.
    summary = download([meta], config(tmp_path / "out"))
    assert [r.outcome for r in summary.results] == ["skipped"]


def test_metadata_formats_read_the_same_rows(tmp_path):
    import gzip

    rows = [
        {"url": f"https://example.org/{i}.jpg", "text": f"cap, with comma {i}", "license": f"L{i}"}
        for i in range(5)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    lines = ["url,text,license"] + [f'{r["url"]},"{r["text"]}",{r["license"]}' for r in rows]
    with gzip.open(tmp_path / "a.csv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    (tmp_path / "a.tsv").write_text(
        "\n".join(["url\ttext\tlicense"] + [f"{r['url']}\t{r['text']}\t{r['license']}" for r in rows]) + "\n"
    )
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    reader = MetadataReader("url", "text", None, ["license"])
    expected = [(r["url"], r["text"], {"license": r["license"]}) for r in rows]
    for name in ("a.parquet", "a.csv.gz", "a.tsv", "a.jsonl"):
        got = [(r.url, r.caption, r.extra) for r in reader.rows([str(tmp_path / name)])]
        assert got == expected, name
    (tmp_path / "a.txt").write_text("\n".join(r["url"] for r in rows) + "\n")
    assert [r.url for r in reader.rows([str(tmp_path / "a.txt")])] == [r["url"] for r in rows]
    # as Windows Notepad saves them: a byte-order mark first, CRLF line ends
    (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(r["url"] for r in rows).encode() + b"\r\n")
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r) for r in rows).encode())
    assert [r.url for r in reader.rows([str(tmp_path / "b.txt")])] == [r["url"] for r in rows]
    assert [(r.url, r.caption, r.extra) for r in reader.rows([str(tmp_path / "b.jsonl")])] == expected


def test_missing_url_column_is_a_clear_error(tmp_path):
    from recaption.readers import InputError

    meta = write_metadata(tmp_path / "urls.parquet", [{"link": "https://example.org/a.jpg"}])
    with pytest.raises(InputError, match="no URL column 'url'.*--url-col"):
        download([meta], config(tmp_path / "out"))


def test_nothing_is_written_outside_the_output_folder(tmp_path):
    with ImageServer() as server:
        rows = [
            {
                "url": f"{server.url}/img/../../../0.jpg",
                "text": "../../escape",
                "license": "../x",
                "sha256": None,
            },
            {
                "url": f"{server.url}/img/%2e%2e%2f%2e%2e%2fpasswd",
                "text": "/etc/passwd",
                "license": None,
                "sha256": None,
            },
        ]
        (tmp_path / "in").mkdir()
        meta = write_metadata(tmp_path / "in" / "urls.parquet", rows)
        download([meta], config(tmp_path / "out"))
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(p.parts[0] in ("in", "out") for p in written), written
    assert {p.name for p in (tmp_path / "out").iterdir()} <= {
        ".recap.lock",  # the output folder's lock (atomic.output_lock)
        ".recap-output.json",  # which step made the folder (spine/contract.py)
        ".recap-index",  # where each sample lies in the tar (samples/tar_index.py, recap lookup)
        "00000.tar",
        "00000.parquet",
        "00000_stats.json",
        "00000.done",
    }


def test_download_output_feeds_webdataset_and_recap_caption(tmp_path, captioner):
    import webdataset as wds

    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import RunConfig
    from recaption.readers import discover_shards

    with ImageServer() as server:
        rows = [
            {"url": f"{server.url}/img/{i % 8}.jpg", "text": f"alt {i}", "license": None, "sha256": None}
            for i in range(10)
        ]
        rows[3]["url"] = server.url + "/404"
        download([write_metadata(tmp_path / "urls.parquet", rows)], config(tmp_path / "shards", shard_size=4))
    tars = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    assert [p.rsplit("/", 1)[1] for p in tars] == ["00000.tar", "00001.tar", "00002.tar"]
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(samples) == 9 and all(s["jpg"].size[1] == 32 for s in samples)
    assert sorted(s["txt"] for s in samples)[:3] == ["alt 0", "alt 1", "alt 2"]
    summary = CaptionPipeline(captioner.config, RunConfig(output=str(tmp_path / "captions")), captioner).run(
        discover_shards([str(tmp_path / "shards")])
    )
    assert summary.rows == 9 and not summary.failed
    captioned = sorted(
        pq.read_table(tmp_path / "captions" / "00000.parquet").to_pylist(), key=lambda r: r["key"]
    )
    assert [r["org_caption"] for r in captioned] == ["alt 0", "alt 1", "alt 2"]
    assert (
        captioned[0]["url"] == f"{server.url}/img/0.jpg"
        and captioned[0]["sha256"] == hashlib.sha256(IMAGES["0.jpg"]).hexdigest()
    )
    # the row that was never downloaded is accounted for: the caption command says so
    from recaption.readers.webdataset import rows_without_image

    assert rows_without_image(discover_shards([str(tmp_path / "shards")])) == {"http_error": 1}
    from typer.testing import CliRunner

    from recaption.cli import app

    said = CliRunner().invoke(app, ["caption", str(tmp_path / "shards"), "-o", str(tmp_path / "again")])
    assert said.exit_code == 0, said.output
    assert "also lists 1 row without an image (http_error 1)" in " ".join(said.output.split())


@pytest.mark.slow
def test_killed_at_crash_points_then_resumed(tmp_path):
    """A run that dies like kill -9 after N rows (RECAP_CRASH_AFTER_ROWS), twice, then reruns:
    the output equals an uninterrupted run's, nothing lost or duplicated."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RECAP_CRASH_AFTER_ROWS"}
    with ImageServer() as server:
        rows = [{"url": f"{server.url}/delay/{i % 8}.jpg", "text": f"alt {i}"} for i in range(48)]
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        command = [
            sys.executable,
            "-m",
            "recaption.cli",
            "download",
            meta,
            "--shard-size",
            "6",
            "--concurrency",
            "2",
            "--per-host-concurrency",
            "2",
            "--allow-private-network",
            "--image-size",
            "32",
        ]
        download([meta], config(tmp_path / "reference", shard_size=6, extra_cols=[], sha256_col=None))
        out = tmp_path / "out"
        for rows_before_crash in (15, 15):  # each run counts its own rows; finished shards are skipped
            crashed = subprocess.run(
                [*command, "-o", str(out)], env={**env, "RECAP_CRASH_AFTER_ROWS": str(rows_before_crash)},
                capture_output=True, text=True, timeout=120,
            )
            assert crashed.returncode == 137, crashed.stdout + crashed.stderr
            for marker in out.glob("*.done"):  # a finished shard is whole: tar, parquet, stats
                name = marker.stem
                assert tar_members(out / f"{name}.tar") == tar_members(tmp_path / "reference" / f"{name}.tar")
                assert pq.read_table(out / f"{name}.parquet").num_rows == 6
                assert (out / f"{name}_stats.json").exists()
            for tar in out.glob("*.tar"):  # whatever is visible is a whole, readable tar
                assert len(tar_members(tar)) % 3 == 0
        done_before = {p.name for p in out.glob("*.done")}
        assert 0 < len(done_before) < 8, "the crashes should land mid-run"
        final = subprocess.run([*command, "-o", str(out)], env=env, capture_output=True, text=True)
        assert final.returncode == 0, final.stdout + final.stderr
    assert not list(out.glob("*.tmp"))
    assert sorted(p.name for p in out.glob("*.done")) == [f"{i:05d}.done" for i in range(8)]
    for shard in range(8):
        name = f"{shard:05d}"
        ours = pq.read_table(out / f"{name}.parquet").select(["key", "url", "caption", "status", "width"])
        ref = pq.read_table(tmp_path / "reference" / f"{name}.parquet").select(ours.column_names)
        assert ours.equals(ref), name
        assert len(set(ours.column("key").to_pylist())) == 6  # nothing lost or duplicated
        assert tar_members(out / f"{name}.tar") == tar_members(tmp_path / "reference" / f"{name}.tar")


def test_the_downloader_loads_no_captioning_code():
    """`recap download` runs where torch and the engines are not installed (or would be slow to
    import): its modules reach the ledger and the tar writer, never the caption pipeline."""
    import subprocess
    import sys

    code = (
        "import recaption.downloads.downloader, sys; "
        "print([m for m in sys.modules if m.startswith(("
        "'recaption.captioning.pipeline', 'recaption.engines', 'recaption.captioning.batching', 'torch'))])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_recap_run_goes_from_urls_to_captions(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    with ImageServer() as server:
        rows = [{"url": f"{server.url}/img/{i}.jpg", "text": f"alt {i}"} for i in range(4)]
        rows.append({"url": server.url + "/404", "text": "gone"})
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        command = ["run", meta, "-o", str(tmp_path / "run"), "--allow-private-network",
                   "--max-new-tokens", "6", "--image-size", "64"]
        result = CliRunner().invoke(app, command)
        other = CliRunner().invoke(app, [*command[:-1], "48"])  # other settings: refused, naming the way out
        again = CliRunner().invoke(app, [*command[:-1], "48", "--overwrite", "--retry-failed"])
    assert result.exit_code == 0, result.output
    assert other.exit_code == 2 and "--overwrite" in other.output, other.output
    assert again.exit_code == 0, again.output
    stats = json.loads((tmp_path / "run" / "images" / "00000_stats.json").read_text())
    assert stats["image_size"] == 48, "--overwrite redid the download with the new settings"
    downloaded = pq.read_table(tmp_path / "run" / "images" / "00000.parquet").to_pylist()
    assert [r["outcome"] for r in downloaded] == ["ok"] * 4 + ["http_error"]
    captions = pq.read_table(tmp_path / "run" / "captions" / "00000.parquet").to_pylist()
    captions.sort(key=lambda r: r["key"])  # tar order is completion order, as img2dataset's
    assert [r["org_caption"] for r in captions] == [f"alt {i}" for i in range(4)]
    assert all(r["status"] == "ok" and r["re_caption"] for r in captions)


def test_recap_caption_reads_a_shard_made_by_img2dataset(tmp_path, captioner):
    """tests/data/img2dataset was written by img2dataset 1.47 itself (benchmarks/img2dataset_fixture.py)."""
    from pathlib import Path

    from recaption.captioning.pipeline import CaptionPipeline
    from recaption.config import RunConfig
    from recaption.readers import discover_shards

    fixture = Path(__file__).parent.parent / "data" / "img2dataset"
    made_by_img2dataset = {r["key"]: r for r in pq.read_table(fixture / "00000.parquet").to_pylist()}
    shards = discover_shards([str(fixture)])
    assert [s.name for s in shards] == ["00000"]  # the tar, not img2dataset's metadata parquet
    summary = CaptionPipeline(captioner.config, RunConfig(output=str(tmp_path / "out")), captioner).run(
        shards
    )
    assert summary.rows == 6 and not summary.failed
    for row in pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist():
        source = made_by_img2dataset[row["key"]]
        assert source["status"] == "success" and row["status"] == "ok" and row["re_caption"]
        assert (row["url"], row["org_caption"], row["sha256"]) == (
            source["url"],
            source["caption"],
            source["sha256"],
        )


def test_overwrite_redoes_complete_shards_and_other_settings_are_refused(tmp_path):
    from recaption.spine.results import ConfigMismatchError

    with ImageServer() as server:
        rows = [{"url": f"{server.url}/img/0.jpg", "text": "a", "license": None, "sha256": None}]
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        download([meta], config(tmp_path / "out"))
        with pytest.raises(ConfigMismatchError, match="image_size"):
            download([meta], config(tmp_path / "out", image_size=48))
        summary = download([meta], config(tmp_path / "out", image_size=48, overwrite=True))
        assert [r.outcome for r in summary.results] == ["done"] and server.hits["/img/0.jpg"] == 2
    assert table(tmp_path / "out")[f"{server.url}/img/0.jpg"]["height"] == 48


# -- from the command line: columns, refused rows, settings that change which rows succeed, the lock --


def recap(*args: str):
    from typer.testing import CliRunner

    from recaption.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_caption_column_is_found_like_recap_caption_finds_it(tmp_path):
    with ImageServer() as server:
        rows = [{"url": f"{server.url}/img/{i}.jpg", "caption": f"a photo {i}"} for i in range(2)]
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        result = recap("download", meta, "-o", tmp_path / "out", "--allow-private-network", "--shard-size=10")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("columns: url: 'url'; caption: 'caption' (found"), result.output
    assert [r["caption"] for r in table(tmp_path / "out").values()] == ["a photo 0", "a photo 1"]
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        assert tar.extractfile("000001.txt").read().decode() == "a photo 1"


def test_a_named_column_that_is_missing_is_a_one_line_error(tmp_path):
    meta = write_metadata(tmp_path / "urls.parquet", [{"url": "https://example.org/a.jpg", "caption": "x"}])
    for option, value, named in [
        ("--caption-col", "alt", "caption column 'alt'"),
        ("--sha256-col", "hash", "SHA-256 column 'hash'"),
    ]:
        result = recap("download", meta, "-o", tmp_path / "out", option, value)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
        assert named in result.output and "has: caption, url" in result.output and option in result.output
    assert not (tmp_path / "out").exists(), "nothing is started on bad input"
    # '' means no caption column: the run goes ahead without captions.
    result = recap("download", meta, "-o", tmp_path / "out", "--caption-col", "", "--timeout", "0.01")
    assert result.exit_code == 0 and "caption: none" in result.output, result.output


def test_spaces_around_a_url_are_no_part_of_it(tmp_path):
    with ImageServer() as server:
        rows = [{"url": f"  {server.url}/img/0.jpg \t", "text": "padded"}, {"url": " \n", "text": "blank"}]
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        result = recap("download", meta, "-o", tmp_path / "out", "--image-size", "16",
                       "--allow-private-network")
        assert result.exit_code == 0, result.output
        assert dict(server.hits) == {"/img/0.jpg": 1}
    got = table(tmp_path / "out")
    assert [r["outcome"] for r in got.values()] == ["ok", "bad_url"]
    assert [r["url"] for r in got.values()] == [row["url"] for row in rows]  # recorded as listed


def test_refused_rows_are_named_and_a_rerun_with_the_flag_fetches_only_them(tmp_path):
    with ImageServer() as server:
        rows = [{"url": f"{server.url}/img/{i}.jpg", "text": f"t{i}"} for i in range(3)]
        rows.append({"url": "ftp://example.org/x.jpg", "text": "not http"})
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        out = tmp_path / "out"
        first = recap("download", meta, "-o", out, "--image-size", "16")
        assert first.exit_code == 0 and sum(server.hits.values()) == 0
        assert "3 row(s) refused" in first.output and "--allow-private-network" in first.output, first.output

        again = recap("download", meta, "-o", out, "--image-size", "16", "--allow-private-network")
        assert again.exit_code == 0, again.output
        assert dict(server.hits) == {f"/img/{i}.jpg": 1 for i in range(3)}, "the refused rows, once each"
        assert [r["outcome"] for r in table(out).values()] == ["ok", "ok", "ok", "bad_url"]
        assert len(tar_members(out / "00000.tar")) == 3 * 3 and "refused" not in again.output

        third = recap("download", meta, "-o", out, "--image-size", "16", "--allow-private-network")
        assert "shards skipped (already complete) │ 1" in third.output and sum(server.hits.values()) == 3
    # Dropping the flag now would mix rows fetched under two policies: refused, with the way out.
    stricter = recap("download", meta, "-o", out, "--image-size", "16")
    error = stricter.output.strip().splitlines()[-1]
    assert stricter.exit_code == 2 and error.startswith("error:"), stricter.output
    assert "downloaded with --allow-private-network" in error and "--overwrite" in error, error


def test_retry_failed_fetches_refused_rows_again(tmp_path):
    with ImageServer() as server:
        meta = write_metadata(tmp_path / "urls.parquet", [{"url": f"{server.url}/img/0.jpg", "text": "a"}])
        recap("download", meta, "-o", tmp_path / "out", "--image-size", "16")
        result = recap("download", meta, "-o", tmp_path / "out", "--image-size", "16", "--retry-failed")
        assert sum(server.hits.values()) == 0, "still refused: the flag was not given"
    assert "shards done                       │ 1" in result.output, result.output
    stats = json.loads((tmp_path / "out" / "00000_stats.json").read_text())
    assert stats["retried_rows"] == 1 and stats["outcomes"] == {"blocked_address": 1}


@pytest.mark.parametrize(
    "path,before,after,outcome",
    [
        ("/optout", [], ["--no-respect-opt-out"], "ok"),
        ("/huge", ["--max-bytes", "100000"], ["--max-bytes", "1000000"], "decode_error"),
    ],
)
def test_a_loosened_setting_fetches_the_rows_it_refused(tmp_path, path, before, after, outcome):
    with ImageServer() as server:
        rows = [{"url": server.url + path, "text": "x"}, {"url": f"{server.url}/img/0.jpg", "text": "y"}]
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        common = ["download", meta, "-o", tmp_path / "out", "--allow-private-network", "--image-size", "16"]
        assert recap(*common, *before).exit_code == 0
        result = recap(*common, *after)
        assert result.exit_code == 0, result.output
        assert server.hits[path] == 2 and server.hits["/img/0.jpg"] == 1, dict(server.hits)
    assert [r["outcome"] for r in table(tmp_path / "out").values()] == [outcome, "ok"]


def test_download_holds_the_output_folders_lock_and_clears_crashed_temporaries(tmp_path):
    from recaption.spine.atomic import output_lock

    out = tmp_path / "out"
    meta = write_metadata(tmp_path / "urls.parquet", [{"url": "ftp://example.org/a.jpg", "text": "a"}])
    with output_lock(str(out), "recap caption"):
        result = recap("download", meta, "-o", out)
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("error: another run is writing to") and "recap caption" in error, result.output
    assert not list(out.glob("0000*")), "nothing written while another run holds the folder"
    stale = [out / "00000.tar.4242-deadbeef.tmp", out / "00000.parquet.4243-0badf00d.tmp"]  # kill -9 left
    for path in stale:
        path.write_bytes(b"half a file")
    assert recap("download", meta, "-o", out).exit_code == 0
    assert not [p for p in stale if p.exists()]
    assert {p.name for p in out.iterdir()} == {
        ".recap.lock",
        ".recap-output.json",
        ".recap-index",
        "00000.tar",
        "00000.parquet",
        "00000_stats.json",
        "00000.done",
    }


def test_a_folder_made_by_the_previous_version_resumes(tmp_path):
    """Its markers hold neither the fetch policy nor a found caption column ("text" was the
    default): url-only metadata is still skipped, and --allow-private-network fetches the rows
    that version refused."""
    with ImageServer() as server:
        meta = write_metadata(tmp_path / "urls.parquet", [{"url": f"{server.url}/img/0.jpg"}])
        out = tmp_path / "out"
        assert recap("download", meta, "-o", out, "--image-size", "16").exit_code == 0
        marker = json.loads((out / "00000.done").read_text())
        marker.pop("fetch_policy", None)
        (out / "00000.done").write_text(json.dumps({**marker, "caption_col": "text"}))
        plain = recap("download", meta, "-o", out, "--image-size", "16")
        assert plain.exit_code == 0 and "shards skipped (already complete) │ 1" in plain.output, plain.output
        allowed = recap("download", meta, "-o", out, "--image-size", "16", "--allow-private-network")
        assert allowed.exit_code == 0 and server.hits["/img/0.jpg"] == 1, allowed.output
    assert [r["outcome"] for r in table(out).values()] == ["ok"]


def test_an_image_the_encoder_refuses_is_that_rows_failure():
    """A banner too wide for JPEG once resized must not escape as an exception (it sank the shard)."""
    import io

    from PIL import Image

    from recaption.downloads.outcomes import status_of
    from recaption.downloads.process import ProcessError, process_image

    buf = io.BytesIO()
    Image.new("RGB", (70000, 1)).save(buf, "PNG")
    with pytest.raises(ProcessError) as caught:
        process_image(buf.getvalue(), None, DownloadConfig(output="unused", image_size=1), "image/png")
    assert caught.value.outcome == "encode_error" and "encode as jpg" in str(caught.value)
    assert status_of(caught.value.outcome) == "failed_to_resize"
    with pytest.raises(ValueError, match="--image-size"):
        DownloadConfig(output="unused", image_size=0)


def test_the_address_policy_refuses_every_non_public_form():
    from .address_cases import ALLOWED, REFUSED

    wrongly_allowed = [name for name, address in REFUSED.items() if not address_blocked(address)]
    wrongly_refused = [name for name, address in ALLOWED.items() if address_blocked(address)]
    assert wrongly_allowed == [] and wrongly_refused == []


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_is_judged_the_same_in_every_ipv6_wrapping(v4):
    import ipaddress

    n = int(v4)
    wrapped = {
        "mapped": ipaddress.IPv6Address((0xFFFF << 32) | n),
        "translated": ipaddress.IPv6Address((0xFFFF << 48) | n),
        "nat64": ipaddress.IPv6Address((0x64FF9B << 96) | n),
    }
    for form, address in wrapped.items():
        assert address_blocked(address) == address_blocked(v4), (form, address)
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1)
    if address_blocked(v4):
        assert address_blocked(sixtofour), sixtofour


@given(st.ip_addresses(v=6))
def test_only_global_unicast_ipv6_passes(address):
    import ipaddress

    reaches_ipv4 = address.ipv4_mapped is not None or any(
        address in ipaddress.ip_network(net) for net in ("::ffff:0:0:0/96", "64:ff9b::/96"))
    if not reaches_ipv4 and not address_blocked(address):
        anycast = any(address in ipaddress.ip_network(n)
                      for n in ("2001:1::/126", "2001:3::/32", "2001:4:112::/48"))
        assert address in ipaddress.ip_network("2000::/3") and (address.is_global or anycast), address


def test_url_secrets_are_fetched_with_but_never_stored(tmp_path):
    """Userinfo and signed-query values reach the server but not the parquet or the .json;
    --keep-url-secrets stores them as given. A binary url column is read as UTF-8 text."""
    with ImageServer() as server:
        secret_url = server.url.replace("http://", "http://bob:s3cr3tpw@")
        secret_url += "/img/0.jpg?token=t0k3n&sig=S1G&w=5"
        table = pa.table({
            "url": pa.array([secret_url.encode(), f"{server.url}/img/1.jpg".encode()], pa.binary()),
            "caption": ["a", "b"],
        })
        pq.write_table(table, tmp_path / "urls.parquet")
        stripped = download([str(tmp_path / "urls.parquet")],
                            config(tmp_path / "out", extra_cols=[], sha256_col=None))
        kept = download([str(tmp_path / "urls.parquet")],
                        config(tmp_path / "kept", extra_cols=[], sha256_col=None, keep_url_secrets=True))
    assert stripped.status_counts == kept.status_counts == {"ok": 2}
    stored = pq.read_table(tmp_path / "out" / "00000.parquet").column("url").to_pylist()
    assert stored == [f"{server.url}/img/0.jpg?token=***&sig=***&w=5", f"{server.url}/img/1.jpg"]
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        everything = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".json"))
    everything += (tmp_path / "out" / "00000_stats.json").read_bytes()
    for secret in (b"s3cr3tpw", b"t0k3n", b"S1G", b"bob"):
        assert secret not in everything
    assert pq.read_table(tmp_path / "kept" / "00000.parquet").column("url").to_pylist()[0] == secret_url


@pytest.mark.parametrize("key_format", ["id", "url"])
def test_keys_that_survive_resharding_join_two_downloads_back(tmp_path, key_format):
    """The same metadata downloaded with two shard sizes: img2dataset keys differ, id and url keys
    are the same sample for sample; the id column is kept in every row."""
    with ImageServer() as server:
        rows = [{"url": f"{server.url}/img/{i % 8}.jpg?n={i}", "text": f"photo {i}", "uid": f"u{i:03d}"}
                for i in range(10)]
        rows[4]["uid"] = None  # a row without an id: keyed by its position, saying so
        meta = write_metadata(tmp_path / "urls.parquet", rows)
        for size in (3, 7):
            download([meta], config(tmp_path / f"s{size}", shard_size=size, extra_cols=[], sha256_col=None,
                                    key_format=key_format))

    def by_key(folder) -> dict[str, str]:
        found = {}
        for parquet in sorted(folder.glob("*.parquet")):
            for r in pq.read_table(parquet).to_pylist():
                found[r["key"]] = r["caption"]
        return found

    three, seven = by_key(tmp_path / "s3"), by_key(tmp_path / "s7")
    stable = {k: v for k, v in three.items() if not k.startswith("row-")}
    assert len(stable) == (9 if key_format == "id" else 10)
    assert all(seven.get(k) == v for k, v in stable.items())
    if key_format == "id":
        kept = pq.read_table(tmp_path / "s3" / "00000.parquet").column("uid").to_pylist()
        assert "u000" in three and kept[0] == "u000"


def test_the_pixel_limit_is_a_download_option_and_its_rows_name_it(tmp_path):
    from typer.testing import CliRunner

    from recaption.cli import app

    with ImageServer() as server:
        meta = write_metadata(tmp_path / "urls.parquet", [{"url": f"{server.url}/img/0.jpg"}])
        args = ["download", meta, "-o", str(tmp_path / "out"), "--allow-private-network", "--resize", "none"]
        result = CliRunner().invoke(app, [*args, "--max-pixels", "100"])
    assert result.exit_code == 0, result.output
    row = next(iter(table(tmp_path / "out").values()))
    assert row["outcome"] == "too_many_pixels" and "raise it with --max-pixels" in row["error_message"]
    refused = CliRunner().invoke(app, [*args, "--max-pixels", "0"])
    assert refused.exit_code == 2 and "--max-pixels must be at least 1" in refused.output


def test_the_download_loop_is_uvloops_where_installed_and_asyncios_otherwise(monkeypatch):
    import asyncio
    import sys

    from recaption.downloads.downloader import run_event_loop

    async def loop_kind() -> str:
        return type(asyncio.get_running_loop()).__module__

    pytest.importorskip("uvloop")
    assert run_event_loop(loop_kind()).startswith("uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # (not installed: Windows)
    assert run_event_loop(loop_kind()).startswith("asyncio")
