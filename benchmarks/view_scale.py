"""`recap view` on a synthetic 1,000,000-row caption output: is it fast enough to browse?

Builds (once, in --folder) an output folder of --shards parquet files holding --rows rows in all
(the published columns: captions of 8-40 words, both CLIP scores, lengths, the four flags, a few
failed rows), each with its `.done` marker and stats naming its input tar, and small tars holding
the images of the first --images-per-shard keys of each shard (64x64 JPEGs). Then starts
`recap view` as its own process (so its memory is its own) and asks it, over HTTP on loopback:

  first page      /api/rows with no filter, right after the server listens (and again, warm)
  filter change   each of: a word search, a status, a flag, a score range, the sort by
                  re_clip_score - org_clip_score, a SQL condition, all together; and histograms
  thumbnail       the first one of a shard (its tar index built then), then distinct keys
                  (decoded and resized each time), then cached ones
  memory          the server's resident memory (VmRSS) and its peak (VmHWM) after all that

Targets (issue 26): first page and any filter change < 1 s, thumbnail < 50 ms, server < 500 MiB.

    python benchmarks/view_scale.py                       # 1,000,000 rows in /tmp/recap-view-1m
    python benchmarks/view_scale.py --rows 100000 --shards 4
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

WORDS = ("a large small red blue green yellow orange purple circle square triangle diamond in the top bottom "
         "left right center of image photo with and on near two three stock high quality background picture "
         "dog cat house tree car person street sky water flower table").split()


def build(folder: Path, rows: int, shards: int, images_per_shard: int, seed: int = 0) -> None:
    import fsspec

    from recaption.samples.tars import TarShardWriter

    fs = fsspec.filesystem("file")

    out, tars = folder / "captions", folder / "shards"
    out.mkdir(parents=True, exist_ok=True)
    tars.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    per = rows // shards
    for s in range(shards):
        name = f"{s:05d}"
        if (out / f"{name}.done").exists():
            continue
        keys = [f"{s:05d}{i:06d}" for i in range(per)]
        re_len = rng.integers(8, 41, per)
        org_len = rng.integers(1, 12, per)
        picks = rng.integers(0, len(words), (per, 40))
        re_caption = [" ".join(words[picks[i, : re_len[i]]]) for i in range(per)]
        org_caption = [" ".join(words[picks[i, 40 - org_len[i]:]]) for i in range(per)]
        status = np.where(rng.random(per) < 0.02, "decode_error", "ok")
        failed = status != "ok"
        re_clip = np.round(rng.normal(30, 3, per), 3)
        org_clip = np.round(rng.normal(27, 4, per), 3)
        rates = (("re_truncated", 0.03), ("re_repetition", 0.05), ("re_boilerplate", 0.02),
                 ("re_degenerate", 0.01))
        flags = {f: rng.random(per) < p for f, p in rates}
        mask = failed
        table = pa.table({
            "url": [f"https://example.org/{s}/{i}.jpg" for i in range(per)],
            "re_caption": [None if f else c for f, c in zip(failed, re_caption, strict=True)],
            "org_caption": org_caption,
            "sha256": [None] * per,
            "key": keys,
            "re_clip_score": pa.array(re_clip, mask=mask),
            "org_clip_score": pa.array(org_clip, mask=mask),
            "re_length": pa.array(re_len, mask=mask),
            "org_length": pa.array(org_len),
            "re_gpt4v_score": pa.nulls(per, pa.int64()),
            "org_gpt4v_score": pa.nulls(per, pa.int64()),
            **{f: pa.array(v, mask=mask) for f, v in flags.items()},
            "re_clip_truncated": pa.array(np.zeros(per, bool), mask=mask),
            "org_clip_truncated": pa.array(np.zeros(per, bool)),
            "re_judge_status": pa.nulls(per, pa.string()),
            "org_judge_status": pa.nulls(per, pa.string()),
            "status": status,
            "error": [("OSError: image file is truncated" if f else None) for f in failed],
        })
        pq.write_table(table, out / f"{name}.parquet", row_group_size=50_000)
        tar = tars / f"{name}.tar"
        writer = TarShardWriter(fs, str(tar))
        for i in range(min(images_per_shard, per)):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            image = Image.new("RGB", (64, 64), colour)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
            meta = {"key": keys[i], "url": f"https://example.org/{s}/{i}.jpg", "caption": org_caption[i]}
            writer.add(keys[i], {"jpg": buffer.getvalue(), "json": json.dumps(meta).encode(),
                                 "txt": org_caption[i].encode()})
        writer.commit()
        images = writer.samples
        (out / f"{name}_stats.json").write_text(json.dumps({"source": str(tar), "rows": per, "shard": name}))
        (out / f"{name}.done").write_text(json.dumps({"model": "synthetic"}))
        print(f"  wrote shard {name}: {per:,} rows, {images:,} images", flush=True)
    (out / ".recap-output.json").write_text(json.dumps({"step": "caption"}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


class Client:
    """Keep-alive HTTP/1.1 with TCP_NODELAY, as browsers do (httpx's client waits out a delayed
    ACK, ~40 ms a request on loopback, which would be measured instead of the server)."""

    def __init__(self, port: int):
        self.port = port
        self.connection = None

    def get(self, path: str, params=None) -> tuple[int, bytes]:
        import http.client
        from urllib.parse import urlencode

        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.connection.connect()
            self.connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection.request("GET", path + ("?" + urlencode(params) if params else ""))
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def timed(client, path: str, params=None, repeat: int = 1) -> tuple[float, bytes]:
    best, body = float("inf"), b""
    for _ in range(repeat):
        start = time.perf_counter()
        status, body = client.get(path, params=params)
        best = min(best, time.perf_counter() - start)
        assert status == 200, (path, params, body[:300])
    return best, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="/tmp/recap-view-1m")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--images-per-shard", type=int, default=2_000)
    args = parser.parse_args()
    folder = Path(args.folder)
    start = time.perf_counter()
    build(folder, args.rows, args.shards, args.images_per_shard)
    out = folder / "captions"
    size = sum(p.stat().st_size for p in out.glob("*.parquet"))
    tar_size = sum(p.stat().st_size for p in (folder / "shards").glob("*.tar"))
    print(f"output: {args.rows:,} rows in {args.shards} parquet files ({size / 2**20:.0f} MiB), "
          f"tars {tar_size / 2**20:.0f} MiB; built or found in {time.perf_counter() - start:.1f} s")
    index = out / ".recap-index"
    if index.exists():  # time the index build as a first visit would
        for p in index.iterdir():
            p.unlink()

    port = free_port()
    launched = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "recaption.cli", "view", str(out), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = Client(port)
    try:
        while True:
            try:
                client.get("/api/meta")
                break
            except OSError:
                client.connection = None
                if server.poll() is not None:
                    raise SystemExit(server.stdout.read()) from None
                time.sleep(0.02)
        ready = time.perf_counter() - launched
        results = {"server ready (process start to first answer)": ready}
        first, answer = timed(client, "/api/rows")
        results["first page, cold"] = first
        results["first page, warm"] = timed(client, "/api/rows", repeat=3)[0]
        assert json.loads(answer)["matched"] == args.rows
        filters = {
            "search 'purple circle'": {"q": "purple circle"},
            "status decode_error": {"status": "decode_error"},
            "flag re_repetition set": {"flag": "re_repetition:1"},
            "score range 25..28": {"min.re_clip_score": "25", "max.re_clip_score": "28"},
            "sort by re_clip_score - org_clip_score": {"sort": "re_clip_score - org_clip_score"},
            "SQL re_length > 30 and org_length < 3": {"where": "re_length > 30 and org_length < 3"},
            "all together, page 3": {"q": "dog", "status": "ok", "flag": "re_degenerate:0",
                                     "min.re_clip_score": "28", "sort": "re_clip_score - org_clip_score",
                                     "page": "3"},
        }
        changes = {}
        for name, params in filters.items():
            changes[name] = timed(client, "/api/rows", params)[0]
        results.update({f"filter change: {k}": v for k, v in changes.items()})
        results["histograms, no filter"] = timed(client, "/api/histograms")[0]
        together = filters["all together, page 3"]
        results["histograms, all together"] = timed(client, "/api/histograms", together)[0]
        keys = [f"00003{i:06d}" for i in range(0, 400, 2)]
        results["thumbnail, first of a shard (tar index built)"] = timed(
            client, "/api/image", {"shard": "00003", "key": keys[0], "size": 256})[0]
        cold = [timed(client, "/api/image", {"shard": "00003", "key": k, "size": 256})[0] for k in keys[1:]]
        warm = [timed(client, "/api/image", {"shard": "00003", "key": k, "size": 256})[0] for k in keys[1:]]
        results["thumbnail, new key, median"] = statistics.median(cold)
        results["thumbnail, new key, p95"] = sorted(cold)[int(0.95 * len(cold))]
        results["thumbnail, cached, median"] = statistics.median(warm)
        other = timed(client, "/api/image", {"shard": "00007", "key": "00007000000", "size": 256})[0]
        results["thumbnail, first of another shard (index built)"] = other
        found = memory(server.pid)
        index_files = list(index.iterdir())
    finally:
        client.close()
        server.terminate()
        server.wait(10)
    print(f"recap view benchmark, {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    for name, seconds in results.items():
        print(f"  {name:<58} {seconds * 1000:9.1f} ms")
    print(f"  {'server memory now (VmRSS)':<58} {found['VmRSS']:9.0f} MiB")
    print(f"  {'server memory peak (VmHWM)':<58} {found['VmHWM']:9.0f} MiB")
    print(f"  tar indexes kept: {len(index_files)} in {index}")


if __name__ == "__main__":
    main()
