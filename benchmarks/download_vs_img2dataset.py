"""`recap download` vs img2dataset on the same metadata, against the same loopback server, in one run.

A local aiohttp server serves N URLs of distinct JPEGs (--source-px: 640x480, or 1600x1200 as
people post photos; re-encoded bundled photos, quality 85) with a fixed per-request latency
standing in for the network. Both tools resize to 256 px (keep_ratio; --resize none: no resizing)
and store JPEG quality 95, write webdataset tars of 1000 samples, with 64 connections/threads
(img2dataset: processes = cores x 64 threads). `recap download` runs with its default filter
(auto: a plain JPEG shrunk under 2.2x through OpenCV's INTER_AREA, lanczos after a reduced
JPEG decode, hamming otherwise) and with --resample lanczos; the
mean PSNR of each one's stored images against Pillow's full-size Lanczos resize is printed. Without
resizing img2dataset runs with skip_reencode=True, as recap stores an unchanged JPEG as sent.
Runs alternate (each tool goes first in turn).
Printed per run: images/s and the peak RSS of the whole process tree (polled from /proc); then
the medians and ratios; then that `recap caption`'s reader takes img2dataset's shards; then
ours' peak RSS on inputs of growing size (rows that fail fast with 404, so only metadata flows).
`recap download --executor ray` runs too: a local Ray started by the command (2 CPUs here), its
start-up (about 5 s) inside the timing, and the Ray processes inside the peak RSS.

img2dataset pins webdataset<0.3 and pandas<3, so it lives in its own virtual environment:
    python3 -m venv /tmp/i2d && /tmp/i2d/bin/pip install img2dataset
    python benchmarks/download_vs_img2dataset.py --img2dataset-python /tmp/i2d/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from PIL import Image

from recaption.readers import discover_shards
from recaption.samples.shards import bundled_samples


def make_images(n: int, width: int) -> list[bytes]:
    size = (width, width * 3 // 4)
    photos = [Image.open(io.BytesIO(r.image)).convert("RGB").resize(size) for r in bundled_samples()]
    images = []
    distinct = min(n, 600)  # 600 distinct photos at most (1600 px ones take a while to make)
    for i in range(distinct):
        img = photos[i % len(photos)].rotate((i // len(photos)) % 360)  # distinct bytes per URL
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        images.append(buf.getvalue())
    return [images[i % distinct] for i in range(n)]


class Server:
    def __init__(self, images: list[bytes], latency: float):
        self.images, self.latency = images, latency
        self.stamps: list[float] = []  # when each request came (perf_counter, this process's clock)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def image(self, request: web.Request) -> web.Response:
        self.stamps.append(time.perf_counter())
        await asyncio.sleep(self.latency)
        index = int(request.match_info["i"])
        if index >= len(self.images):
            return web.Response(status=404)
        return web.Response(body=self.images[index], content_type="image/jpeg")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{i}.jpg", self.image)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    def __enter__(self) -> Server:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self.loop).result()
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


def tree_rss(root: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak process-tree RSS of a command (polled every 50 ms)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, peak


def ours_command(meta: str, out: str, concurrency: int, executor: str = "local", resize: str = "keep_ratio",
                 resample: str = "auto") -> list[str]:
    return [
        sys.executable,
        "-m",
        "recaption.cli",
        "download",
        meta,
        "-o",
        out,
        "--allow-private-network",
        "--caption-col",
        "caption",
        "--image-size",
        "256",
        "--resize",
        resize,
        "--resample",
        resample,
        "--shard-size",
        "1000",
        "--concurrency",
        str(concurrency),
        "--per-host-concurrency",
        str(concurrency),
        "--retries",
        "0",
        "--executor",
        executor,
    ]


def img2dataset_command(python: str, meta: str, out: str, threads: int,
                        resize: str = "keep_ratio") -> list[str]:
    mode = "no" if resize == "none" else resize
    code = (
        "from img2dataset import download; "
        f"download(url_list={meta!r}, input_format='parquet', url_col='url', caption_col='caption', "
        f"output_format='webdataset', output_folder={out!r}, processes_count={os.cpu_count()}, "
        f"thread_count={threads}, image_size=256, resize_mode={mode!r}, number_sample_per_shard=1000, "
        f"encode_quality=95, skip_reencode={resize == 'none'}, "
        "distributor='multiprocessing', "
        "enable_wandb=False, timeout=10, retries=0)"
    )
    return [python, "-c", code]


def psnr_vs_lanczos(folder: str, images: list[bytes], server_url: str) -> float:
    """Mean PSNR of the stored images against Pillow's full-size Lanczos resize of the photo their
    URL served (the quality reference), over the first 200 samples read back."""
    import numpy as np

    from recaption.downloads.process import target_size

    values = []
    for shard in discover_shards([folder]):
        for sample in shard:
            if not sample.ok or len(values) >= 200:
                continue
            index = int(sample.url.rsplit("/", 1)[-1].split(".")[0])
            source = Image.open(io.BytesIO(images[index])).convert("RGB")
            reference = source.resize(target_size("keep_ratio", 256, *source.size), Image.Resampling.LANCZOS,
                                      reducing_gap=3.0)
            stored = Image.open(io.BytesIO(sample.image_bytes)).convert("RGB")
            if stored.size != reference.size:
                continue  # a rounding difference of a pixel: not comparable pixel by pixel
            err = np.mean((np.asarray(stored, float) - np.asarray(reference, float)) ** 2)
            values.append(10 * np.log10(255**2 / max(err, 1e-9)))
    return float(np.mean(values)) if values else float("nan")


def count_tar_samples(folder: str) -> int:
    return sum(1 for shard in discover_shards([folder]) for sample in shard if sample.ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--img2dataset-python", required=True, help="a python with img2dataset installed")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source-px", type=int, default=640, help="width of the served photos (4:3)")
    parser.add_argument("--resize", default="keep_ratio", choices=["keep_ratio", "none"])
    parser.add_argument("--ray", action="store_true", help="also run recap download --executor ray")
    parser.add_argument(
        "--memory-rows", default="20000,100000", help="input sizes for the RSS-vs-input check"
    )
    args = parser.parse_args()

    print(
        f"download_vs_img2dataset  {date.today()}  {platform.processor() or platform.machine()}  "
        f"{os.cpu_count()} cores  {args.images} images of {args.source_px} px  resize {args.resize}  "
        f"{args.latency_ms:g} ms latency per request"
    )
    images = make_images(args.images, args.source_px)
    with (
        tempfile.TemporaryDirectory() as tmp,
        Server(images, args.latency_ms / 1000) as server,
    ):
        meta = f"{tmp}/urls.parquet"
        pq.write_table(
            pa.table(
                {
                    "url": [f"{server.url}/{i}.jpg" for i in range(args.images)],
                    "caption": [f"photo {i}" for i in range(args.images)],
                }
            ),
            meta,
        )
        names = ["recap download", "img2dataset"]
        if args.resize != "none":
            names.insert(1, "recap download --resample lanczos")
        if args.ray:
            names.append("recap download --executor ray")
        runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            turn = round_ % len(names)
            for name in names[turn:] + names[:turn]:  # each goes first in turn
                out = f"{tmp}/{name.replace(' ', '_')}-{round_}"
                if name == "img2dataset":
                    command = img2dataset_command(args.img2dataset_python, meta, out, args.concurrency,
                                                  args.resize)
                else:
                    executor = "ray" if "ray" in name else "local"
                    resample = "lanczos" if "lanczos" in name else "auto"
                    command = ours_command(meta, out, args.concurrency, executor, args.resize, resample)
                server.stamps.clear()
                started = time.perf_counter()
                seconds, peak = timed(command)
                got = count_tar_samples(out)
                # start-up (first request) and the rate between first and last request: how much
                # of a whole run's rate is start-up, which a longer run would spread thinner
                stamps = server.stamps or [math.nan]
                first, last = stamps[0] - started, stamps[-1] - started
                steady = (len(stamps) - 1) / (last - first) if last > first else math.nan
                runs[name].append((args.images / seconds, peak, steady))
                print(
                    f"round {round_}  {name:30s} {args.images / seconds:8.1f} images/s  "
                    f"peak RSS {peak / 2**20:7.1f} MiB  ({got} samples read back by recap's reader)  "
                    f"first request at {first:.1f} s, {steady:.0f} requests/s from first to last"
                )
                if round_ < args.rounds - 1:
                    shutil.rmtree(out)
                elif args.resize != "none":
                    quality = psnr_vs_lanczos(out, images, server.url)
                    print(f"         {name:30s} mean PSNR vs full-size Lanczos: {quality:.1f} dB "
                          "(200 images)")
        rate = {k: statistics.median(r for r, _, _ in v) for k, v in runs.items()}
        rss = {k: statistics.median(m for _, m, _ in v) for k, v in runs.items()}
        steady = {k: statistics.median(s for _, _, s in v) for k, v in runs.items()}
        base = "img2dataset"
        for name in names:
            print(
                f"median {name:30s} {rate[name]:8.1f} images/s ({rate[name] / rate[base]:.2f}x img2dataset)  "
                f"peak RSS {rss[name] / 2**20:6.0f} MiB ({rss[name] / rss[base]:.2f}x)  "
                f"first to last request {steady[name]:.0f}/s ({steady[name] / steady[base]:.2f}x)"
            )

        for rows in (int(x) for x in args.memory_rows.split(",") if x):
            meta_big = f"{tmp}/urls-{rows}.parquet"
            missing = args.images  # past the last image: the server answers 404 at once
            pq.write_table(
                pa.table(
                    {
                        "url": [f"{server.url}/{missing + i}.jpg" for i in range(rows)],
                        "caption": [f"row {i}" for i in range(rows)],
                    }
                ),
                meta_big,
                row_group_size=10_000,
            )
            seconds, peak = timed(ours_command(meta_big, f"{tmp}/mem-{rows}", args.concurrency))
            print(f"input of {rows:7d} rows: peak RSS {peak / 2**20:7.1f} MiB ({rows / seconds:.0f} rows/s)")


if __name__ == "__main__":
    main()
