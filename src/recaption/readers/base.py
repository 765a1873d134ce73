"""What every input shard offers the pipeline: a name for its outputs and a stream of samples."""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..samples.sample import MISSING_IMAGE, READ_ERROR, TOO_LARGE, Sample
from ..spine.files import NotRegularFile, is_local, open_input, open_regular

MiB = 1 << 20
# Largest file a reader loads into memory (one claiming more is refused from its header or listing).
DEFAULT_MAX_IMAGE_BYTES = 64 * MiB


class ShardError(Exception):
    """A whole shard cannot be read (truncated tar, missing columns, unreadable file)."""

    def __init__(self, shard: str, message: str):
        super().__init__(f"{shard}: {message}")
        self.shard = shard
        self.message = message


@dataclass(frozen=True)
class ColumnConfig:
    """Where readers find each field, and how much of one file they read (None: the usual names)."""

    image: str | None = None
    caption: str | None = None
    url: str = "url"
    key: str = "key"
    sha256: str = "sha256"
    extra: tuple[str, ...] = field(default_factory=tuple)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    # Parquet image paths resolve under this folder (default: the parquet's); any_image_path: anywhere.
    image_root: str | None = None
    any_image_path: bool = False

    IMAGE_CANDIDATES = ("image", "jpg", "jpeg", "png", "webp", "img", "image_bytes")
    # Tried in order, exact names first, then ignoring case (`Caption`, `IMAGE`).
    CAPTION_CANDIDATES = ("caption", "text", "org_caption", "txt", "alt_text", "alt", "TEXT")

    def __post_init__(self):
        if self.max_image_bytes < 1:
            raise ValueError("max_image_bytes must be positive")


# Listing fields that change when a file is rewritten: local mtime, then what object stores give.
VERSION_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag", "md5Hash")


def listed_version(info: dict) -> str | None:
    """A file's version as its listing gives it (mtime, or an object store's equivalent)."""
    version = next((info[f] for f in VERSION_FIELDS if info.get(f) is not None), None)
    return None if version is None else str(version)


def file_fingerprint(source: str) -> dict | None:
    """A tar or parquet shard's size and version, for its marker (a replaced file is captioned
    again); None when the file cannot be listed."""
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(source)
        info = fs.info(path)
    except (OSError, ValueError):
        return None
    return {"file": posixpath.basename(path), "size": info.get("size"), "version": listed_version(info)}


class Shard:
    """An input shard. `name`: the stem its outputs are named after (00042.tar -> 00042).
    `scanned_root`: the input folder a recursive scan found it in (an output inside is refused)."""

    name: str
    source: str
    scanned_root: str | None = None

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def fingerprint(self) -> dict | None:
        """What this shard covered when listed, for its `.done` marker: a rerun whose fingerprint
        differs captions it again. None: the input is taken as immutable."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"


class FileShard(Shard):
    """A tar or parquet file: read whole, or a ShardError saying why not."""

    def __init__(self, source: str, name: str, columns: ColumnConfig = ColumnConfig()):
        self.source = source
        self.name = name
        self.columns = columns
        self._fingerprint: dict | None = None

    def fingerprint(self) -> dict | None:
        """The file's size and version when first asked (file_fingerprint)."""
        if self._fingerprint is None:
            self._fingerprint = file_fingerprint(self.source)
        return self._fingerprint

    def __iter__(self) -> Iterator[Sample]:
        try:
            with open_input(self.source) as raw:
                yield from self._read_file(raw)
        except FileNotFoundError as exc:
            raise ShardError(self.source, f"file not found: {exc}") from exc
        except OSError as exc:  # a directory, no permission, an I/O error: the whole file is unreadable
            raise ShardError(self.source, f"cannot read the file: {exc}") from exc

    def _read_file(self, raw) -> Iterator[Sample]:
        raise NotImplementedError


# Image file types worth captioning, by extension; kept only where this Pillow reads them.
_IMAGE_TYPES = ("jpg", "jpeg", "jpe", "jfif", "png", "apng", "webp", "gif", "bmp", "dib", "tif", "tiff",
                "avif", "avifs", "heic", "heif", "jxl", "jp2", "j2k", "jpx", "jpf", "ppm", "pgm", "pbm",
                "pnm", "qoi", "tga")
# Formats Pillow registers an extension for even when built without the library that reads them.
_PILLOW_FEATURES = {"AVIF": "avif", "WEBP": "webp", "JPEG2000": "jpg_2000"}
SIDECAR_EXTENSIONS = ("txt", "json")


@functools.cache
def image_extensions() -> frozenset[str]:
    """Lower-case extensions of the image files readers take: those of `_IMAGE_TYPES` this Pillow
    decodes."""
    from PIL import Image, features

    Image.init()
    readable = set()
    for ext, fmt in Image.registered_extensions().items():
        feature = _PILLOW_FEATURES.get(fmt)
        if fmt in Image.OPEN and (feature is None or features.check(feature)):
            readable.add(ext.lstrip(".").lower())
    return frozenset(e for e in _IMAGE_TYPES if e in readable)


def unreadable_types_note(extensions: Iterable[str]) -> str:
    """`; Pillow here cannot read heic: ...` for image types this Pillow does not decode, else ``."""
    readable = image_extensions()
    unreadable = sorted({e for e in extensions if e in _IMAGE_TYPES and e not in readable})
    if not unreadable:
        return ""
    return f"; Pillow here cannot read {', '.join(unreadable)}: convert those files to JPEG or PNG"


def extension(name: str) -> str:
    """The lower-case extension of a file name's last dot-part (`IMG_1.edited.JPG` -> `jpg`)."""
    base = posixpath.basename(name)
    return base.rpartition(".")[2].lower() if "." in base else ""


def is_hidden(name: str) -> bool:
    """Hidden files (`.DS_Store`) and macOS resource forks (`._cat.jpg`) are not samples."""
    return posixpath.basename(name).startswith(".")


class UniqueKeys:
    """Keys unique within a shard, the same on every read (`recap score` joins rows by key): a
    repeat gets the lowest suffix `_1`, `_2`, ... no earlier sample took and not `reserved` (the
    input's own keys, when known up front)."""

    def __init__(self, reserved: Iterable[str] = ()):
        self.reserved = set(reserved)
        self.used: set[str] = set()
        self.next_suffix: dict[str, int] = {}  # per base key: where to resume the search

    def __call__(self, key: str) -> str:
        if key in self.used:
            n = self.next_suffix.get(key, 1)
            while f"{key}_{n}" in self.used or f"{key}_{n}" in self.reserved:
                n += 1
            self.next_suffix[key] = n + 1
            key = f"{key}_{n}"
        self.used.add(key)
        return key


class UnreadableImage(Exception):
    """One sample's image cannot be read: the sample becomes a row with this status."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def too_large(what: str, size: int | None, limit: int) -> UnreadableImage:
    size_text = f"is {human_bytes(size)}" if size is not None else "is larger than that"
    return UnreadableImage(
        TOO_LARGE,
        f"{what} {size_text}, over the limit of {human_bytes(limit)} read per image "
        "(raise it with --max-image-bytes)",
    )


def read_bounded(fs, path: str, limit: int, size: int | None = None) -> bytes:
    """The bytes of one file, never more than `limit` (the listed size checked first, the read
    capped too). UnreadableImage: missing_image, too_large, or read_error."""
    try:
        if is_local(fs):  # only a regular file, opened without blocking (a FIFO never hangs a run)
            with open_regular(path) as f:
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise too_large(path, size, limit)
                data = f.read(limit + 1)
        else:
            if size is None:
                size = fs.size(path)
            if size is not None and size > limit:
                raise too_large(path, size, limit)
            data = fs.cat_file(path, start=0, end=limit + 1)
    except FileNotFoundError as exc:
        raise UnreadableImage(MISSING_IMAGE, f"cannot read {path}: no such file") from exc
    except NotRegularFile as exc:
        raise UnreadableImage(READ_ERROR, str(exc)) from exc
    except OSError as exc:
        raise UnreadableImage(READ_ERROR, f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise too_large(path, None, limit)
    return data


def failed_sample(key: str, url: str | None, caption: str | None, problem: UnreadableImage) -> Sample:
    sample = Sample(key=key, url=url, org_caption=caption)
    sample.fail(problem.status, str(problem))
    return sample


def sha256_hex(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data else None


def protocols(fs) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def full_url(fs, path: str) -> str:
    """Local paths stay plain paths; remote ones get their protocol back."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def inside(root: str, path: str, local: bool) -> bool:
    """Whether `path` (`..` and local symlinks resolved) is `root` or under it: the one rule for
    files an input names, so a link never reads a file from elsewhere."""
    root, path = posixpath.normpath(root), posixpath.normpath(path)
    if local:
        root, path = os.path.realpath(root), os.path.realpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")
