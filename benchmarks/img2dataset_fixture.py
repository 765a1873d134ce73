"""Make tests/data/img2dataset/: a real img2dataset shard (6 bundled photos, 64 px), so the tests
check that `recap caption` reads img2dataset's own output, not our idea of it.

    python benchmarks/img2dataset_fixture.py --img2dataset-python /tmp/i2d/bin/python
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from download_vs_img2dataset import Server, make_images

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "img2dataset"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--img2dataset-python", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Server(make_images(6), 0.0) as server:
        urls = [f"{server.url}/{i}.jpg" for i in range(6)] + [f"{server.url}/99.jpg"]  # the last is a 404
        pq.write_table(
            pa.table({"url": urls, "caption": [f"bundled photo {i}" for i in range(7)]}),
            f"{tmp}/urls.parquet",
        )
        code = (
            "from img2dataset import download; "
            f"download(url_list='{tmp}/urls.parquet', input_format='parquet', url_col='url', "
            f"caption_col='caption', output_format='webdataset', output_folder='{tmp}/out', "
            "processes_count=1, thread_count=4, image_size=64, resize_mode='keep_ratio', "
            "distributor='multiprocessing', enable_wandb=False)"
        )
        subprocess.run([args.img2dataset_python, "-c", code], check=True, cwd="/")
        FIXTURE.mkdir(parents=True, exist_ok=True)
        for name in ("00000.tar", "00000.parquet", "00000_stats.json"):
            shutil.copy(f"{tmp}/out/{name}", FIXTURE / name)
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
