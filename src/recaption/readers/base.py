"""What every input shard offers the pipeline: a name for its outputs and a stream of samples."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..sample import Sample


class ShardError(Exception):
    """A whole shard cannot be read (truncated tar, missing columns, unreadable file)."""

    def __init__(self, shard: str, message: str):
        super().__init__(f"{shard}: {message}")
        self.shard = shard
        self.message = message


@dataclass(frozen=True)
class ColumnConfig:
    """Where readers find each field. `None` for image/caption means: try the usual names."""

    image: str | None = None
    caption: str | None = None
    url: str = "url"
    key: str = "key"
    sha256: str = "sha256"
    extra: tuple[str, ...] = field(default_factory=tuple)

    IMAGE_CANDIDATES = ("image", "jpg", "jpeg", "png", "webp", "img", "image_bytes")
    CAPTION_CANDIDATES = ("caption", "text", "org_caption", "txt", "alt_text", "TEXT")


class Shard:
    """An input shard. `name` is the stem its outputs are named after (00042.tar -> 00042)."""

    name: str
    source: str

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"


def sha256_hex(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data else None


def is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols


def full_url(fs, path: str) -> str:
    """Local paths stay plain paths; remote ones get their protocol back."""
    return path if is_local(fs) else fs.unstrip_protocol(path)
