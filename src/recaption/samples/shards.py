"""Write image-text shards in img2dataset's WebDataset layout ({key}.jpg, .txt, .json)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .tars import TarShardWriter


@dataclass
class ShardRecord:
    image: bytes
    caption: str | None = None
    url: str | None = None
    extension: str = "jpg"
    extra: dict = field(default_factory=dict)


def img2dataset_key(shard_id: int, index: int, shard_digits: int = 5, index_digits: int = 4) -> str:
    """img2dataset's key: shard id then index within the shard, zero-padded (000420007)."""
    return f"{shard_id:0{shard_digits}d}{index:0{index_digits}d}"


def write_webdataset_shard(path: str | Path, records: list[ShardRecord], shard_id: int = 0) -> list[str]:
    """Write records as one tar shard, atomically; returns the keys. Members per sample, sorted by
    extension as webdataset's TarWriter does: the image, `.json` (url, key, status, caption,
    sha256, extra), `.txt` (the caption, when there is one)."""
    from fsspec.implementations.local import LocalFileSystem

    writer = TarShardWriter(LocalFileSystem(), str(Path(path).absolute()))
    keys = []
    try:
        for index, record in enumerate(records):
            key = img2dataset_key(shard_id, index)
            meta = {"url": record.url, "key": key, "status": "success", "caption": record.caption,
                    "sha256": hashlib.sha256(record.image).hexdigest(), **record.extra}
            members = {record.extension: record.image, "json": json.dumps(meta).encode()}
            if record.caption is not None:
                members["txt"] = record.caption.encode()
            writer.add(key, dict(sorted(members.items())))
            keys.append(key)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return keys


def bundled_samples() -> list[ShardRecord]:
    """The sample photos shipped with the package (public domain / CC0, see samples.json)."""
    folder = resources.files("recaption") / "data" / "samples"
    meta = json.loads((folder / "samples.json").read_text())
    return [ShardRecord(image=(folder / m["file"]).read_bytes(), caption=m["caption"],
                        url=f"https://example.org/samples/{m['file']}", extra={"license": m["license"]})
            for m in meta]
