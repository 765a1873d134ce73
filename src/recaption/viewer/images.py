"""The images beside the rows: each shard's input tar (`--images`, or what its stats record), read
one member at a time through its tar index, or its input image folder, read one file at a time
(the row's recorded path, only under that folder); re-encoded as JPEG, kept in an LRU cache. A
request names a shard and a key, never a path."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import pyarrow.parquet as pq

from ..quality.outputs import recorded_source
from ..readers.base import image_extensions, inside
from ..samples.images import ImageDecodeError, decode_image
from ..samples.tar_index import Member, TarIndex, fingerprint
from ..spine.contract import INDEX_NAME
from ..spine.files import local_path, open_input
from ..spine.ledger import OutputDir
from ..steps.filter import one_line
from .rows import ViewError

log = logging.getLogger(__name__)

THUMBNAIL_SIDES = (96, 160, 256, 384)  # the sizes a thumbnail may be asked for
FULL_SIDE = 2048
CACHE_BYTES = 64 << 20  # encoded images kept, all sizes together
# Memory for decoding: a member over MAX_MEMBER_BYTES is not read, an image over MAX_PIXELS is not
# decoded, and at most DECODERS decode at once (the server answers from a pool of ~40 threads, and
# any page a browser opens can ask for images).
MAX_MEMBER_BYTES = 64 << 20
MAX_PIXELS = 50_000_000
DECODERS = threading.BoundedSemaphore(2)


class LRUBytes:
    """Encoded images by key, the least recently used dropped past `limit` bytes; thread-safe."""

    def __init__(self, limit: int = CACHE_BYTES):
        self.limit, self.size = limit, 0
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple, data: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self.size += len(data)
            while self.size > self.limit and self._items:
                _, dropped = self._items.popitem(last=False)
                self.size -= len(dropped)


class Images:
    """Where each shard's images are, and the images themselves as JPEG bytes."""

    def __init__(self, out: OutputDir, names: list[str], images: list[str] | None = None,
                 index_folder: str | None = None, files: dict[str, str] | None = None):
        self.out = out
        self.files = files or {}  # shard -> its parquet file: a folder row's image path is its url
        self.folders: dict[str, str] = {}  # shard -> the image folder it was captioned from
        self._urls: dict[str, tuple[tuple, dict[str, str]]] = {}  # shard -> (parquet stamp, key -> url)
        self.index_folder = index_folder if index_folder is not None else out.path(INDEX_NAME)
        self.cache = LRUBytes()
        self._indexes: OrderedDict[str, TarIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self.notes: dict[str, str] = {}  # shard -> why it has no images
        if images:
            found = _tars_in(images)
            self.roots = [os.path.realpath(p) for p in images]
            self.tars = {name: found[name] for name in names if name in found}
            self.notes.update({name: f"no {name}.tar among --images" for name in names if name not in found})
        else:
            self.tars, self.roots = {}, []
            for name in names:
                source = recorded_source(out, name)
                if source and source.endswith(".tar") and local_path(source) and os.path.isfile(source):
                    self.tars[name] = source
                    self.roots.append(os.path.realpath(source))  # that file, nothing beside it
                elif source and "://" not in source and os.path.isdir(source) and name in self.files:
                    self.folders[name] = os.path.realpath(source)  # files under it, nothing beside
                else:
                    said = f"its input {source} is not a local tar or image folder" if source else \
                        "its stats record no input"
                    self.notes[name] = (f"{said}; `recap export` writes its images as tars, then give "
                                        "those with --images")

    def allowed(self, tar: str) -> bool:
        """Whether `tar` lies under a folder given (or is a file given)."""
        real = os.path.realpath(tar)
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots)

    def index(self, shard: str) -> TarIndex | None:
        """The shard's tar index (built on first use, then kept: the last 64 in memory), built
        again when the tar changed since (its size and time, one stat per use)."""
        tar = self.tars.get(shard)
        if tar is None or not self.allowed(tar):
            return None
        try:
            stamp = tuple(fingerprint(tar).values())
        except OSError:
            return None
        with self._lock:
            index = self._indexes.get(shard)
            if index is not None and index.stamp == stamp:
                self._indexes.move_to_end(shard)
                return index
            building = self._building.setdefault(shard, threading.Lock())
        with building:  # one build per shard, however many thumbnails ask at once
            with self._lock:
                if shard in self._indexes and self._indexes[shard].stamp == stamp:
                    return self._indexes[shard]
            try:
                index = TarIndex.load(tar, self.index_folder)
            except Exception as exc:  # noqa: BLE001 - an unindexable tar: that shard shows no images
                self.notes[shard] = one_line(exc)
                log.warning("%s: %s", shard, self.notes[shard])
                return None
            index.stamp = stamp
            with self._lock:
                self._indexes[shard] = index
                while len(self._indexes) > 64:
                    self._indexes.popitem(last=False)
        return index

    def member(self, shard: str, key: str) -> Member | None:
        """The image member of the row `key` in `shard` (the first image of its sample)."""
        index = self.index(shard)
        if index is None:
            return None
        readable = image_extensions()
        return next((m for m in index.members(key) if m.ext.rpartition(".")[2] in readable), None)

    def has_images(self, shard: str) -> bool:
        return shard in self.tars or shard in self.folders

    def folder_file(self, shard: str, key: str) -> str | None:
        """The image file of the row `key` of a folder shard: the path its row records, links
        resolved, only if that lies under the shard's folder."""
        root = self.folders.get(shard)
        url = self._folder_urls(shard).get(key) if root is not None else None
        path = local_path(url) if url else None
        if not path:
            return None
        real = os.path.realpath(path)
        return real if inside(root, real, local=True) else None

    def _folder_urls(self, shard: str) -> dict[str, str]:
        """key -> url of a folder shard's rows, read again when its parquet file changes (a
        shard captioned again must not show the old rows' files)."""
        try:
            info = os.stat(self.files[shard])
            stamp = (info.st_size, info.st_mtime_ns, info.st_ino)
        except OSError as exc:
            self.notes[shard] = one_line(exc)
            return {}
        with self._lock:
            known = self._urls.get(shard)
            if known is not None and known[0] == stamp:
                return known[1]
            try:
                with open_input(self.files[shard]) as f:
                    table = pq.read_table(f, columns=["key", "url"])
                keys, urls = (table.column(c).to_pylist() for c in ("key", "url"))
            except Exception as exc:  # noqa: BLE001 - a parquet file replaced since: no images for now
                self.notes[shard] = one_line(exc)
                return {}
            self._urls[shard] = (stamp, dict(zip(keys, urls, strict=True)))
            return self._urls[shard][1]

    def _source(self, shard: str, key: str) -> tuple[object, tuple] | None:
        """Where the row's image is (a folder file's path, or a tar member) and a stamp of its
        version, found without reading it (None: no such image)."""
        path = self.folder_file(shard, key)
        if path is not None:
            try:
                info = os.stat(path)
            except OSError:
                return None
            return path, (path, info.st_size, info.st_mtime_ns, info.st_ino)
        member = self.member(shard, key)
        return (member, getattr(self.index(shard), "stamp", None)) if member is not None else None

    @staticmethod
    def _read(source) -> bytes | None:
        """The encoded image, at most MAX_MEMBER_BYTES (None: larger, or unreadable)."""
        if isinstance(source, str):
            with open_input(source) as f:  # regular files only, never blocking on a FIFO
                data = f.read(MAX_MEMBER_BYTES + 1)
            return data if len(data) <= MAX_MEMBER_BYTES else None
        return source.read() if source.size <= MAX_MEMBER_BYTES else None

    def jpeg(self, shard: str, key: str, side: int) -> bytes | None:
        """The image at most `side` pixels on its longest edge, as JPEG (None: no such image, or
        it does not decode)."""
        found = self._source(shard, key)
        if found is None:
            return None
        source, stamp = found
        cached = self.cache.get((shard, key, side, stamp))  # an image since replaced: not shown
        if cached is not None:
            return cached
        try:
            with DECODERS:  # reads too: at most DECODERS images in memory at once
                data = self._read(source)
                if data is None:
                    return None
                image = decode_image(data, max_pixels=MAX_PIXELS, max_side=side)
        except (ImageDecodeError, OSError):
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=82 if side <= 384 else 90)
        data = buffer.getvalue()
        self.cache.put((shard, key, side, stamp), data)
        return data


def _tars_in(images: list[str]) -> dict[str, str]:
    """Shard name -> tar, from tar files and folders of them."""
    found: dict[str, str] = {}
    for item in images:
        path = Path(item)
        if path.is_dir():
            tars = sorted(path.glob("*.tar"))
        elif path.is_file() and path.suffix == ".tar":
            tars = [path]
        else:
            raise ViewError(f"--images {item}: not a .tar file or a folder of them")
        for tar in tars:
            found.setdefault(tar.stem, str(tar))
    return found

