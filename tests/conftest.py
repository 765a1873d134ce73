"""Shared fixtures: a per-session cache for the tiny model, and image/shard builders."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

# Build the tiny model once per test session, away from the user's cache.
os.environ.setdefault("RECAPTION_CACHE", tempfile.mkdtemp(prefix="recap-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from recaption.samples.shards import ShardRecord, write_webdataset_shard  # noqa: E402


def image_bytes(width=48, height=32, mode="RGB", fmt="JPEG", seed=0, **save) -> bytes:
    """Random-noise image bytes of the given size, mode (RGB or L) and format."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def make_records(n: int, seed: int = 0, shard_id: int = 0) -> list[ShardRecord]:
    return [
        ShardRecord(
            image=image_bytes(40 + 4 * i, 30 + 3 * i, seed=seed * 1000 + i),
            caption=f"alt text number {i} of shard {shard_id}",
            url=f"https://example.org/{shard_id}/{i}.jpg",
        )
        for i in range(n)
    ]


def write_shards(folder, n_shards: int, per_shard: int) -> list[str]:
    paths = []
    for s in range(n_shards):
        path = folder / f"{s:05d}.tar"
        write_webdataset_shard(path, make_records(per_shard, seed=s, shard_id=s), shard_id=s)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="session")
def tiny_model_dir():
    from recaption.models.tiny import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def captioner(tiny_model_dir):
    """One loaded tiny captioner shared by tests (loading costs ~1 s)."""
    from recaption.config import CaptionConfig
    from recaption.engines.transformers_engine import TransformersCaptioner

    c = TransformersCaptioner(CaptionConfig(model="tiny", max_new_tokens=24))
    c.setup()
    return c


def _vision_stack() -> str | None:
    """Why the vision tests cannot run here (None: they can): torchvision and open_clip."""
    try:
        import open_clip  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision's operator error beside torch 2.13
        return f"needs the vision test environment (README): {type(exc).__name__}: {exc}"
    return None


def pytest_collection_modifyitems(config, items):
    vision = [item for item in items if "vision" in item.keywords]
    reason = _vision_stack() if vision else None
    if reason:
        for item in vision:
            item.add_marker(pytest.mark.skip(reason=reason[:200]))
