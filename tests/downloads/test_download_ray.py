"""`recap download --executor ray`: the local download's output exactly, and a worker killed
with kill -9 mid-shard loses nothing and duplicates nothing."""

from __future__ import annotations

import json
import tarfile

import pyarrow.parquet as pq
import pytest

from recaption.downloads import download
from recaption.spine.results import DONE, SKIPPED

from ..image_server import IMAGES, ImageServer
from ..ray_processes import KillOnce
from .test_download import config, write_metadata

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def metadata(tmp_path, server, rows: int, prefix: str = "/img/"):
    names = sorted(n for n in IMAGES if n.endswith(".jpg"))
    listed = [{"url": f"{server.url}{prefix}{names[i % len(names)]}", "text": f"photo {i}",
               "license": f"L{i}", "sha256": None} for i in range(rows)]
    listed[3]["url"] = server.url + "/404"  # a failure among them
    return write_metadata(tmp_path / "urls.parquet", listed)


def shard_contents(out, name: str) -> tuple[list[dict], dict[str, bytes]]:
    rows = pq.read_table(out / f"{name}.parquet").to_pylist()
    with tarfile.open(out / f"{name}.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    return rows, members


def assert_same_download(ours, reference, names):
    for name in names:
        assert shard_contents(ours, name) == shard_contents(reference, name), name
        stats = json.loads((ours / f"{name}_stats.json").read_text())
        assert stats["count"] == len(shard_contents(ours, name)[0])
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_ray_download_matches_local_and_resumes(tmp_path, local_ray):
    with ImageServer() as server:
        urls = metadata(tmp_path, server, rows=23)
        local = download([urls], config(tmp_path / "local", shard_size=5))
        ours = download([urls], config(tmp_path / "ray", shard_size=5), executor="ray")
        names = [f"{i:05d}" for i in range(5)]
        assert [r.name for r in ours.results] == [r.name for r in local.results] == names
        assert {r.outcome for r in ours.results} == {DONE}
        assert_same_download(tmp_path / "ray", tmp_path / "local", [f"{i:05d}" for i in range(5)])
        # Resume: complete shards are skipped; a shard whose marker is gone is done again.
        (tmp_path / "ray" / "00002.done").unlink()
        again = download([urls], config(tmp_path / "ray", shard_size=5), executor="ray")
        assert [r.outcome for r in again.results] == [SKIPPED, SKIPPED, DONE, SKIPPED, SKIPPED]
        assert_same_download(tmp_path / "ray", tmp_path / "local", [f"{i:05d}" for i in range(5)])


def test_a_download_worker_killed_mid_shard_loses_and_duplicates_nothing(tmp_path, local_ray):
    with ImageServer() as server:
        # /delay/ answers after 0.15 s: with 2 connections a shard of 12 takes about a second.
        urls = metadata(tmp_path, server, rows=24, prefix="/delay/")
        options = dict(shard_size=12, concurrency=2)
        local = download([urls], config(tmp_path / "local", **options))
        assert {r.outcome for r in local.results} == {DONE}
        out = tmp_path / "ray"
        written = lambda: any(out.glob("*.tmp")) or any(out.glob("**/*.tmp"))  # noqa: E731 mid-shard
        killer = KillOnce("ray::_download_one", when=written)
        killer.start()
        summary = download([urls], config(out, **options), executor="ray")
        killer.join(timeout=1)
        assert killer.killed is not None, "no download worker was caught mid-shard"
        assert [r.outcome for r in summary.results] == [DONE, DONE]  # Ray ran the task again
        assert_same_download(out, tmp_path / "local", ["00000", "00001"])
        again = download([urls], config(out, **options), executor="ray")
        assert [r.outcome for r in again.results] == [SKIPPED, SKIPPED]
        assert_same_download(out, tmp_path / "local", ["00000", "00001"])
