"""`recap view` over real HTTP requests (Starlette's TestClient, and uvicorn on loopback): what it
shows matches the files, its filters are `recap filter`'s, hostile text stays text, and nothing
but reads of the folders it was given is answered."""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from recaption.cli import app as cli
from recaption.viewer.app import make_app

from .conftest import HOSTILE

runner = CliRunner()


@pytest.fixture(scope="module")
def client(captioned):
    out, _ = captioned
    with TestClient(make_app(str(out)), base_url="http://127.0.0.1") as c:
        yield c


def all_rows(out) -> list[dict]:
    """Every row of the output, as pyarrow reads it, with its shard and row number."""
    rows = []
    for path in sorted(out.glob("*.parquet")):
        for n, row in enumerate(pq.read_table(path).to_pylist()):
            rows.append({**row, "__shard": path.stem, "__row": n})
    return rows


def fetch_all(client, params: dict) -> list[dict]:
    """Every page of /api/rows for these parameters."""
    rows, page = [], 0
    while True:
        answer = client.get("/api/rows", params={**params, "page": page, "per": 7})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        rows += body["rows"]
        if len(rows) >= body["matched"]:
            return rows
        page += 1


def places(rows) -> list[tuple[str, int]]:
    return [(r["__shard"], r["__row"]) for r in rows]


def gain(r):
    if r["re_clip_score"] is None or r["org_clip_score"] is None:
        return None
    return r["re_clip_score"] - r["org_clip_score"]


def by(value, descending=True):
    """A sort key: the value (nulls last), then shard and row."""
    def key(r):
        v = value(r)
        return (v is None, 0 if v is None else (-v if descending else v), r["__shard"], r["__row"])
    return key


# (parameters, the rows expected: a test over all rows, and the order)
CASES = {
    "everything": ({}, lambda r: True, None),
    "search, any case": ({"q": "PURPLE"}, lambda r: "purple" in (r["re_caption"] or "").lower()
                         or "purple" in (r["org_caption"] or "").lower(), None),
    "search a hostile text with a quote and ;": (
        {"q": "it's 100% <b>bold</b>; drop"},
        lambda r: "it's 100% <b>bold</b>; drop" in (r["re_caption"] or "").lower()
        or "it's 100% <b>bold</b>; drop" in (r["org_caption"] or "").lower(), None),
    "status": ({"status": "decode_error"}, lambda r: r["status"] == "decode_error", None),
    "flag set": ({"flag": "re_boilerplate:1"}, lambda r: r["re_boilerplate"] is True, None),
    "flag not set, ok only": ({"flag": "re_boilerplate:0", "status": "ok"},
                              lambda r: r["re_boilerplate"] is False and r["status"] == "ok", None),
    "score range": ({"min.re_clip_score": "24", "max.re_clip_score": "30"},
                    lambda r: r["re_clip_score"] is not None and 24 <= r["re_clip_score"] <= 30, None),
    "length range": ({"min.re_length": "10"},
                     lambda r: r["re_length"] is not None and r["re_length"] >= 10, None),
    "sql": ({"where": "org_length < 4 or re_caption like '%square%'"},
            lambda r: (r["org_length"] is not None and r["org_length"] < 4)
            or "square" in (r["re_caption"] or ""), None),
    "sort by a score": ({"sort": "re_clip_score"}, lambda r: True, by(lambda r: r["re_clip_score"])),
    "sort ascending": ({"sort": "org_clip_score", "order": "asc"}, lambda r: True,
                       by(lambda r: r["org_clip_score"], descending=False)),
    "sort by the clip gain, filtered": (
        {"sort": "re_clip_score - org_clip_score", "status": "ok"}, lambda r: r["status"] == "ok", by(gain)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_filters_sorts_and_search_select_what_pyarrow_selects(client, captioned, name):
    params, keep, order = CASES[name]
    rows = all_rows(captioned[0])
    expected = [r for r in rows if keep(r)]
    expected = sorted(expected, key=order) if order else expected
    shown = fetch_all(client, params)
    assert places(shown) == places(expected)
    assert [r["key"] for r in shown] == [r["key"] for r in expected]
    assert expected or name == "search a hostile text with a quote and ;"


@pytest.mark.parametrize("name", ["search a hostile text with a quote and ;", "flag not set, ok only",
                                  "score range", "sql", "search, any case"])
def test_the_shown_where_is_accepted_by_recap_filter_and_keeps_the_same_rows(client, captioned, tmp_path,
                                                                             name):
    out, _ = captioned
    params, _, _ = CASES[name]
    body = client.get("/api/rows", params=params).json()
    where = body["where"]
    assert "--where " in body["command"] and body["command"].startswith(f"recap filter {out} ")
    result = runner.invoke(cli, ["filter", str(out), "--where", where, "-o", str(tmp_path / "kept")])
    assert result.exit_code == 0, result.output
    kept = [(path.stem, key) for path in sorted((tmp_path / "kept").glob("*.parquet"))
            for key in pq.read_table(path).column("key").to_pylist()]
    assert kept == [(r["__shard"], r["key"]) for r in fetch_all(client, params)]


def test_the_shown_command_runs_as_shell_text(client, captioned, tmp_path):
    """The whole command, pasted into a shell, is the same filter (quotes, $, ; stay literal)."""
    import shlex

    body = client.get("/api/rows", params={"q": HOSTILE[2][:20]}).json()
    words = shlex.split(body["command"])
    assert words[:2] == ["recap", "filter"] and words[3] == "--where" and words[4] == body["where"]


def test_histograms_count_the_filtered_rows(client, captioned):
    rows = [r for r in all_rows(captioned[0]) if r["status"] == "ok"]
    found = client.get("/api/histograms", params={"status": "ok"}).json()["histograms"]
    scores = [r["re_clip_score"] for r in rows if r["re_clip_score"] is not None]
    h = found["re_clip_score"]
    assert (h["low"], h["high"], h["count"]) == (min(scores), max(scores), len(scores))
    assert sum(h["counts"]) == len(scores) and len(h["counts"]) == 20
    width = (h["high"] - h["low"]) / 20
    expected = [0] * 20
    for s in scores:
        expected[min(int((s - h["low"]) // width), 19)] += 1
    assert h["counts"] == expected
    assert "re_length" in found and "status" not in found


def test_detail_has_every_column_and_where_the_image_is(client, captioned):
    out, shards = captioned
    rows = all_rows(out)
    body = client.get("/api/row", params={"shard": "00001", "row": 2}).json()
    expected = next(r for r in rows if r["__shard"] == "00001" and r["__row"] == 2)
    assert {k: v for k, v in body["row"].items()} == expected
    source = body["source"]
    assert source["tar"] == str(shards / "00001.tar") and source["member"] == f"{expected['key']}.png"
    with open(source["tar"], "rb") as f:
        f.seek(source["offset"])
        Image.open(io.BytesIO(f.read(source["size"]))).verify()
    assert client.get("/api/row", params={"shard": "00001", "row": 99}).status_code == 404
    assert client.get("/api/row", params={"shard": "00001", "row": "x"}).status_code == 400


def test_thumbnails_are_small_jpegs_read_through_an_index_kept_beside_the_output(client, captioned):
    out, _ = captioned
    key = all_rows(out)[3]["key"]
    for size in (96, 256):
        answer = client.get("/api/image", params={"shard": "00000", "key": key, "size": size})
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(answer.content))
        assert image.format == "JPEG" and max(image.size) <= size
    full = Image.open(io.BytesIO(client.get("/api/image", params={"shard": "00000", "key": key}).content))
    assert full.size == (64, 64)  # its own size: never enlarged
    assert "00000" in {p.name.split("-")[0] for p in (out / ".recap-index").iterdir()}
    assert client.get("/api/image", params={"shard": "00000", "key": key, "size": 97}).status_code == 400


def test_a_row_whose_image_does_not_decode_has_no_image_not_an_error(client, captioned):
    bad = next(r for r in all_rows(captioned[0]) if r["status"] == "decode_error")
    answer = client.get("/api/image", params={"shard": bad["__shard"], "key": bad["key"], "size": 96})
    assert answer.status_code == 404 and answer.json() == {"error": "no image for this row"}


def test_hostile_captions_reach_the_page_only_as_json_text(client, captioned):
    page = client.get("/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assert "window.__pwned" not in page.text  # the page holds no data, only its own markup
    answer = client.get("/api/rows", params={"per": 200})
    assert answer.headers["content-type"] == "application/json"
    rows = answer.json()["rows"]
    assert [r["re_caption"] for r in rows[:3]] == HOSTILE and [r["org_caption"] for r in rows[:3]] == HOSTILE
    script = client.get("/static/app.js").text
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_anything_but_reads_is_refused(client, method):
    for path in ("/", "/api/rows", "/api/image?shard=00000&key=x", "/static/app.js", "/nowhere"):
        answer = client.request(method, path, content=b"x=1")
        assert answer.status_code == 405, (method, path)
        assert answer.headers["allow"] == "GET, HEAD"
    assert client.head("/api/meta").status_code == 200


@pytest.mark.parametrize("path", [
    "/static/../rows.py", "/static/%2e%2e/rows.py", "/static/..%2Fapp.py", "/static/app.py",
    "/static/%2Fetc%2Fpasswd", "/api/image?shard=..%2F..%2Fetc%2Fpasswd&key=x",
    "/api/image?shard=00000&key=..%2F..%2F..%2Fetc%2Fpasswd", "/api/image?shard=00000&key=%2Fetc%2Fpasswd",
    "/api/image?shard=00000.tar&key=000000000", "/api/row?shard=..%2F00000&row=0", "/..%2F..%2Fetc%2Fpasswd",
])
def test_paths_from_requests_never_reach_the_file_system(client, path):
    answer = client.get(path)
    assert answer.status_code in (400, 404), path
    assert b"root:" not in answer.content


def test_only_files_under_the_folders_given_are_read(captioned, tmp_path):
    """A tar in the --images folder that is a link to a file elsewhere is not read."""
    out, shards = captioned
    given = tmp_path / "given"
    given.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(shards / "00000.tar", elsewhere / "00000.tar")
    os.symlink(elsewhere / "00000.tar", given / "00000.tar")
    shutil.copy(shards / "00001.tar", given / "00001.tar")
    with TestClient(make_app(str(out), [str(given)], index_folder=str(tmp_path / "index")),
                    base_url="http://127.0.0.1") as c:
        keys = {r["__shard"]: r["key"] for r in reversed(all_rows(out))}  # each shard's first
        asked = {shard: c.get("/api/image", params={"shard": shard, "key": key, "size": 96}).status_code
                 for shard, key in keys.items()}
        assert asked == {"00001": 200, "00000": 404}


def test_requests_for_another_host_name_are_refused(client):
    """DNS rebinding: a page on another site whose name resolves here gets nothing."""
    assert client.get("/api/meta", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/api/meta", headers={"host": "localhost:8765"}).status_code == 200


def test_bad_parameters_are_one_line_400s(client):
    for params, says in [({"sort": "nope"}, "sort: no column 'nope'"), ({"flag": "re_degenerate:2"}, "flag="),
                         ({"min.re_length": "ten"}, "not a number"), ({"min.nope": "1"}, "range: no column"),
                         ({"where": "read_csv('/etc/passwd') is not null"}, ""),
                         ({"where": "true; select 1"}, "';' is not allowed"),
                         ({"order": "up"}, "asc or desc"), ({"min.org_length": "nan"}, "finite"),
                         ({"max.re_length": "1e400"}, "finite"), ({"in": 'key"'}, "search in: no column"),
                         ({"in": "re_clip_score", "q": "x"}, "search in: no column")]:
        answer = client.get("/api/rows", params=params)
        assert answer.status_code == 400, params
        assert says in answer.json()["error"] and "\n" not in answer.json()["error"]


def test_a_condition_is_one_expression_over_a_shards_rows_as_recap_filter_takes_it(client):
    for where in ["true) UNION ALL SELECT '00000', 0, 1 FROM rows WHERE (true",
                  "re_clip_score > (select avg(re_clip_score) from rows)",
                  "re_clip_score", "set_bit('0101', 1, 0)"]:  # (the last two: values, not conditions)
        answer = client.get("/api/rows", params={"where": where})
        assert answer.status_code == 400, (where, answer.text)
        assert "\n" not in answer.json()["error"]
    # a trailing comment ends at its line, as in recap filter: it cannot swallow the rest of the query
    commented = client.get("/api/rows", params={"where": "status = 'ok' -- the rest"})
    plain = client.get("/api/rows", params={"where": "status = 'ok'"})
    assert commented.status_code == 200 and commented.json()["matched"] == plain.json()["matched"] > 0


def test_requests_another_sites_page_makes_are_refused(client):
    """An <img> or fetch on any web page can point at 127.0.0.1 (its Host is ours): the browser
    marks it cross-site, or sends that page's Origin."""
    query = {"where": "status = 'ok'"}
    for headers in [{"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
                    {"origin": "http://evil.example"}, {"origin": "null"}]:
        answer = client.get("/api/rows", params=query, headers=headers)
        assert answer.status_code == 403 and "another site" in answer.json()["error"], headers
    for headers in [{}, {"sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"},
                    {"origin": "http://127.0.0.1"}]:
        assert client.get("/api/rows", params=query, headers=headers).status_code == 200, headers


def test_a_runaway_condition_is_interrupted_in_one_line(client, monkeypatch):
    import recaption.steps.filter as filter_step
    import recaption.viewer.rows as rows

    for where in ["(select count(*) from range(100000000000)) > 0", "len(range(0, 300000000)) > 0"]:
        answer = client.get("/api/rows", params={"where": where})  # refused before running at all
        assert answer.status_code == 400 and "is not taken in a condition" in answer.json()["error"]
    # a heavy condition the refusal would not know: the time bound stops it, checking included
    monkeypatch.setattr(filter_step, "_refused_parts", lambda where: None)
    monkeypatch.setattr(rows, "QUERY_SECONDS", 0.5)
    for where in ["(select count(*) from range(100000000000)) > 0",
                  "(select sum(range) from range(100000000000)) > 0"]:  # (scanned even to check it)
        started = time.monotonic()
        answer = client.get("/api/rows", params={"where": where})
        assert answer.status_code == 400 and "ran over 0.5 s and was stopped" in answer.json()["error"]
        assert time.monotonic() - started < 10, where


def test_a_page_past_any_output_is_an_empty_page(client):
    answer = client.get("/api/rows", params={"page": "99999999999999999999999"})
    assert answer.status_code == 200 and answer.json()["rows"] == []


def test_a_condition_cannot_read_files_beyond_the_output(client):
    for where in ["(select count(*) from read_csv('/etc/passwd')) > 0",
                  "(select count(*) from glob('/*')) > 0",
                  "(select count(*) from read_text('/etc/hostname')) > 0"]:
        answer = client.get("/api/rows", params={"where": where})
        assert answer.status_code == 400 and "root:" not in answer.text, where


# -- the command ------------------------------------------------------------------------------------


def test_a_folder_that_is_not_caption_output_is_one_line_exit_2(tmp_path, captioned):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli, ["view", str(tmp_path / "empty"), "--port", "0"])
    assert result.exit_code == 2 and "holds no finished shards" in " ".join(result.output.split())
    result = runner.invoke(cli, ["view", str(captioned[1]), "--port", "0"])
    assert result.exit_code == 2 and "error:" in result.output


def test_a_port_in_use_is_one_line_exit_2(captioned):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        result = runner.invoke(cli, ["view", str(captioned[0]), "--port", str(port)])
    finally:
        busy.close()
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"port {port} on 127.0.0.1 is in use" in said and "--port" in said
    assert len(result.output.strip().splitlines()) <= 2


def test_another_host_than_loopback_warns(captioned, monkeypatch, caplog):
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.update(sockets=sockets))
    result = runner.invoke(cli, ["view", str(captioned[0]), "--port", "0", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    said = " ".join((result.output + caplog.text).split())
    assert "--host 0.0.0.0: the captions and images are served to anyone" in said
    assert "http://0.0.0.0:" in said and served["sockets"]


@pytest.mark.parametrize("host", ["127.0.0.2", "localhost", "::1", "10.1.2.3"])
def test_the_host_listened_on_is_a_host_name_answered(captioned, monkeypatch, host):
    from recaption.viewer import serve

    answered = {}

    def app(output, images, hosts):
        answered["hosts"] = hosts
        raise KeyboardInterrupt  # stop before any socket

    monkeypatch.setattr(serve, "make_app", app)
    with pytest.raises(KeyboardInterrupt):
        serve.serve(str(captioned[0]), host=host, port=0)
    assert host in answered["hosts"] and "127.0.0.1" in answered["hosts"]


def test_the_command_serves_over_real_http_on_loopback(captioned):
    """`recaption.view` on a free port, asked by a real HTTP client; stopped as Ctrl-C would."""
    import httpx
    import uvicorn

    import recaption

    ready, servers = threading.Event(), []
    original = uvicorn.Server.run

    def run(self, sockets=None):
        servers.append(self)
        self.config.install_signal_handlers = False
        return original(self, sockets=sockets)

    urls = []
    uvicorn.Server.run = run
    try:
        thread = threading.Thread(target=recaption.view, args=(captioned[0],),
                                  kwargs={"port": 0, "on_ready": lambda url: (urls.append(url), ready.set())},
                                  daemon=True)
        thread.start()
        assert ready.wait(30)
        url = urls[0]
        assert url.startswith("http://127.0.0.1:")
        for _ in range(100):
            try:
                meta = httpx.get(url + "api/meta", timeout=5).json()
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert meta["total"] == 20 and meta["shards"] == ["00000", "00001"]
        assert httpx.post(url + "api/rows", timeout=5).status_code == 405
    finally:
        uvicorn.Server.run = original
        for server in servers:
            server.should_exit = True
    thread.join(10)
    assert not thread.is_alive()


def test_sigterm_stops_the_server_with_143_and_a_line_that_fits_a_server(captioned):
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "recaption.cli", "view", str(captioned[0]), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "COLUMNS": "300"})
    try:
        first = server.stdout.readline()
        assert "http://127.0.0.1:" in first, first
        server.send_signal(signal.SIGTERM)
        rest = server.communicate(timeout=30)[0]
    finally:
        server.kill()
    said = " ".join(rest.split())
    assert server.returncode == 143, rest
    assert "recap view stopped (stopped by signal 15)" in said and "rerun" not in said


def test_pass_columns_are_captions_and_nan_scores_stay_out_of_the_histograms(captioned, tmp_path):
    """A named pass's column (re_caption_<name>) is shown, searched and filterable; a NaN score
    is no bin's."""
    import pyarrow as pa

    out = tmp_path / "out"
    shutil.copytree(captioned[0], out, ignore=shutil.ignore_patterns(".recap-index", ".recap.lock"))
    table = pq.read_table(out / "00001.parquet")
    short = [f"short pass {i}" for i in range(table.num_rows)]
    scores = table.column("re_clip_score").to_pylist()
    scores[0] = float("nan")
    table = table.set_column(table.schema.get_field_index("re_clip_score"), "re_clip_score",
                             pa.array(scores, pa.float64()))
    pq.write_table(table.append_column("re_caption_short", pa.array(short)), out / "00001.parquet")
    with TestClient(make_app(str(out), [str(captioned[1])]), base_url="http://127.0.0.1") as c:
        meta = c.get("/api/meta").json()
        assert meta["captions"] == ["re_caption", "org_caption", "re_caption_short"]
        found = c.get("/api/rows", params={"q": "SHORT pass 3"}).json()
        assert [r["re_caption_short"] for r in found["rows"]] == ["short pass 3"]
        assert "contains(lower(re_caption_short), 'short pass 3')" in found["where"]
        kept = c.get("/api/rows", params={"where": "re_caption_short like '%pass 1%'"}).json()
        assert kept["matched"] == 1 and kept["rows"][0]["__shard"] == "00001"
        h = c.get("/api/histograms").json()["histograms"]["re_clip_score"]
        finite = [s for r in all_rows(out) if (s := r["re_clip_score"]) is not None and s == s]
        assert h["count"] == len(finite) == sum(h["counts"]) and h["high"] == max(finite)
        assert c.get("/api/row", params={"shard": "00001", "row": 0}).json()["row"]["re_clip_score"] is None


def test_a_tar_replaced_while_the_view_runs_is_indexed_again(captioned, tmp_path):
    import tarfile

    out, shards = captioned
    copy_out, copy_shards = tmp_path / "out", tmp_path / "shards"
    shutil.copytree(out, copy_out, ignore=shutil.ignore_patterns(".recap-index"))
    shutil.copytree(shards, copy_shards)
    key = all_rows(copy_out)[3]["key"]
    with TestClient(make_app(str(copy_out), images=[str(copy_shards)]), base_url="http://127.0.0.1") as c:
        before = c.get("/api/image", params={"shard": "00000", "key": key}).content
        tar = copy_shards / "00000.tar"
        with tarfile.open(tar) as old:  # the same members, with one image swapped for another sample's
            members = [(m, old.extractfile(m).read()) for m in old.getmembers()]
        images = [m.name for m, _ in members if m.name.endswith((".jpg", ".png"))]
        mine = next(n for n in images if n.startswith(key + "."))
        other = next(data for m, data in members if m.name in images and m.name != mine)
        time.sleep(0.01)
        with tarfile.open(tar, "w") as new:
            for member, data in members:
                data = other if member.name == mine else data
                member.size = len(data)
                new.addfile(member, io.BytesIO(data))
        os.utime(tar, (time.time() + 5, time.time() + 5))
        after = c.get("/api/image", params={"shard": "00000", "key": key})
    assert after.status_code == 200 and after.content != before


def _distance(a, b) -> float:
    """Mean absolute pixel difference of two images of one size (a JPEG of a PNG: small)."""
    pairs = zip(a.convert("RGB").getdata(), b.convert("RGB").getdata(), strict=True)
    return sum(abs(x - y) for p, q in pairs for x, y in zip(p, q, strict=True)) / (3 * a.width * a.height)


def test_an_image_folders_rows_show_their_files_and_only_files_under_that_folder(tmp_path, tiny_model_dir):
    """A folder of images (the laptop's input) is viewed from the folder itself; a file since
    swapped for a link to elsewhere, or a FIFO, is not read."""
    import recaption
    from recaption.shapes import ShapesWorld

    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (photos / "sub dir").mkdir(parents=True)
    elsewhere.mkdir()
    world = ShapesWorld(0)
    for i, name in enumerate(["a.png", "b.png", "c.png", "sub dir/d.png"]):
        (photos / name).write_bytes(world.sample(i).image)
    (elsewhere / "secret.png").write_bytes(world.sample(9).image)
    out = tmp_path / "out"
    assert not recaption.caption(photos, out, model="tiny", max_new_tokens=4).failed
    os.remove(photos / "b.png")
    os.symlink(elsewhere / "secret.png", photos / "b.png")
    os.remove(photos / "c.png")
    os.mkfifo(photos / "c.png")
    shard, base = "photos-00000", "http://127.0.0.1"
    with TestClient(make_app(str(out), index_folder=str(tmp_path / "index")), base_url=base) as c:
        assert c.get("/api/meta").json()["images"] == {shard: True}
        asked = {key: c.get("/api/image", params={"shard": shard, "key": key, "size": 96}).status_code
                 for key in ("a", "b", "c", "sub dir/d", "nope")}
        assert asked == {"a": 200, "b": 404, "c": 404, "sub dir/d": 200, "nope": 404}
        for key, index in (("a", 0), ("sub dir/d", 3)):  # each row shows its own file
            shown = Image.open(io.BytesIO(c.get("/api/image", params={"shard": shard, "key": key}).content))
            distances = [_distance(shown, Image.open(io.BytesIO(world.sample(i).image))) for i in range(4)]
            assert min(range(4), key=distances.__getitem__) == index, distances
        rows = {r["key"]: r for r in all_rows(out)}
        row = rows["sub dir/d"]["__row"]
        source = c.get("/api/row", params={"shard": shard, "row": row}).json()["source"]
        assert source["file"] == str(photos / "sub dir" / "d.png") and source["tar"] is None
    shutil.rmtree(photos)  # gone since: said in the row's note, no image
    with TestClient(make_app(str(out), index_folder=str(tmp_path / "index")), base_url=base) as c:
        meta = c.get("/api/meta").json()
        assert meta["images"] == {shard: False}
        assert "not a local tar or image folder; `recap export`" in meta["image_notes"][shard]
