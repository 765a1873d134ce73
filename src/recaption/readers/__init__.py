"""Turn user inputs (files, folders, globs, brace patterns, fsspec URLs) into input shards."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field

from braceexpand import braceexpand
from fsspec.core import url_to_fs

from ..spine.errors import RecaptionError
from .base import (
    SIDECAR_EXTENSIONS,
    ColumnConfig,
    Shard,
    ShardError,
    extension,
    full_url,
    image_extensions,
    is_hidden,
    unreadable_types_note,
)
from .folder import FolderFile, FolderShard
from .parquet import ParquetShard
from .webdataset import TarShard

__all__ = ["ColumnConfig", "InputError", "Shard", "ShardError", "discover_shards", "open_shard", "relisting"]

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
FOLDER_SHARD_SIZE = 10_000

log = logging.getLogger(__name__)
# Set while a folder captioned before is listed again (score, report, export): what its listing
# skips or leaves out was said when it was captioned, not again by every later step.
_RELISTING = contextvars.ContextVar("relisting", default=False)


def _said(message: str, *args) -> None:
    if not _RELISTING.get():
        log.warning(message, *args)


@contextlib.contextmanager
def relisting():
    """List inputs again quietly: what a listing finds is said once, when it is captioned."""
    token = _RELISTING.set(True)
    try:
        yield
    finally:
        _RELISTING.reset(token)


class InputError(RecaptionError, ValueError):
    """The inputs named on the command line cannot be turned into shards."""


def shard_name(path: str) -> str:
    base = posixpath.basename(path.rstrip("/"))
    for suffix in TAR_SUFFIXES + PARQUET_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def open_shard(url: str, columns: ColumnConfig = ColumnConfig()) -> Shard:
    """A shard for one tar or parquet file, keeping the fsspec protocol of the URL."""
    if url.endswith(TAR_SUFFIXES):
        return TarShard(url, shard_name(url), columns)
    if url.endswith(PARQUET_SUFFIXES):
        return ParquetShard(url, shard_name(url), columns)
    if extension(url) in image_extensions():
        raise InputError(f"{url}: one image, not a shard: give the folder it is in (a folder of images "
                         f"is captioned in shards of up to {FOLDER_SHARD_SIZE:,} images)")
    raise InputError(f"{url}: not a .tar, .tar.gz or .parquet shard")


@dataclass
class _FolderListing:
    """What a recursive scan of a folder found, hidden files and folders left out; `.txt` / `.json`
    files are sidecars, anything else not an image is `skipped`, by extension."""

    images: list[FolderFile] = field(default_factory=list)
    captions: dict[str, FolderFile] = field(default_factory=dict)  # stem -> its .txt (any case)
    tars: list[str] = field(default_factory=list)
    parquets: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    linked_folders: list[str] = field(default_factory=list)  # links to folders: not followed

    @classmethod
    def scan(cls, infos: dict, root: str) -> _FolderListing:
        found = cls()
        for path in sorted(infos):
            ext = extension(path)
            if any(is_hidden(part) for part in posixpath.relpath(path, root).split("/")):
                continue
            if infos[path].get("islink") and os.path.isdir(path):  # listed as one entry, unread
                found.linked_folders.append(posixpath.relpath(path, root))
            elif path.endswith(TAR_SUFFIXES):
                found.tars.append(path)
            elif path.endswith(PARQUET_SUFFIXES):
                found.parquets.append(path)
            elif ext in image_extensions():
                found.images.append(FolderFile.from_info(infos[path]))
            elif ext == "txt":
                found.captions.setdefault(path[: -len(".txt")], FolderFile.from_info(infos[path]))
            elif ext not in SIDECAR_EXTENSIONS:
                found.skipped[f".{ext}" if ext else "(no extension)"] += 1
        return found

    def skipped_text(self) -> tuple[str, str]:
        """`.pdf x2, .mov x1`: the most common first; then what Pillow here cannot read."""
        by_count = sorted(self.skipped.items(), key=lambda e: (-e[1], e[0]))
        note = unreadable_types_note(ext.lstrip(".") for ext in self.skipped)
        return ", ".join(f"{ext} x{n}" for ext, n in by_count), note


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _folder_shards(fs, root: str, found: _FolderListing, folder_shard_size: int,
                   columns: ColumnConfig) -> list[Shard]:
    """Slices of `folder_shard_size` images in path order. The listing's sizes and mtimes go
    with each slice: its fingerprint, and the size check before a file is read."""
    images = sorted(found.images, key=lambda f: f.path)
    prefix = posixpath.basename(root.rstrip("/")) or "images"
    return [
        FolderShard(fs, root, images[i : i + folder_shard_size], f"{prefix}-{i // folder_shard_size:05d}",
                    found.captions, columns.max_image_bytes)
        for i in range(0, len(images), folder_shard_size)
    ]


def _shard_files(paths: list[str]) -> list[str]:
    """Tars, and the parquet files that are not a tar's metadata (img2dataset's 00000.parquet
    beside 00000.tar); any other parquet may hold images (`_holds_images`)."""
    tars = sorted(p for p in paths if p.endswith(TAR_SUFFIXES))
    tar_stems = {posixpath.join(posixpath.dirname(p), shard_name(p)) for p in tars}
    parquets = sorted(p for p in paths if p.endswith(PARQUET_SUFFIXES)
                      and posixpath.join(posixpath.dirname(p), shard_name(p)) not in tar_stems)
    return tars + parquets


def _holds_images(shard: Shard, pattern: str) -> bool:
    """A parquet file beside tars or loose images is a shard only if it has an image column;
    one without is metadata: said in one line and left out."""
    if not isinstance(shard, ParquetShard):
        return True
    names = shard.column_names()
    if names is None or shard.image_column(names) is not None:
        return True  # unreadable: reading it as a shard says why
    _said(
        "%s: %s has no image column (columns: %s): taken as metadata beside the images and not "
        "captioned (name its image column with --image-col to caption it)",
        pattern, shard.source, ", ".join(names),
    )
    return False


def _expand_folder(fs, pattern: str, path: str, columns: ColumnConfig, folder_shard_size: int) -> list[Shard]:
    """The shard files under a folder (tars if any, else parquet files) and its loose images
    (in slices); both when it holds both, saying so."""
    found = _FolderListing.scan(fs.find(path, detail=True), path)
    if found.linked_folders:
        _said("%s: %s not followed (%s): give the folder a link leads to as an input of its own",
              pattern, _plural(len(found.linked_folders), "link to a folder"),
              ", ".join(found.linked_folders[:5]) + (", ..." if len(found.linked_folders) > 5 else ""))
    shards = [open_shard(full_url(fs, m), columns) for m in _shard_files(found.tars + found.parquets)]
    if found.tars or found.images:  # a parquet beside them may be metadata: only one with images
        shards = [s for s in shards if _holds_images(s, pattern)]
    if found.images:
        if shards:
            _said(
                "%s: %s and %s; captioning both (name shard files or a subfolder to take only some)",
                pattern, _plural(len(shards), "shard file"), _plural(len(found.images), "image"),
            )
        skipped = sum(found.skipped.values())
        if skipped:
            what = "1 file that is not an image" if skipped == 1 else f"{skipped} files that are not images"
            _said("%s: skipped %s (%s)%s", pattern, what, *found.skipped_text())
        shards += _folder_shards(fs, path, found, folder_shard_size, columns)
    if not shards:
        text, note = found.skipped_text()
        has = f" (it has {text}){note}" if found.skipped else ""
        raise InputError(f"{pattern}: folder holds no shards (.tar, .parquet) and no images{has}")
    root = full_url(fs, path)
    for shard in shards:
        shard.scanned_root = root  # read recursively: an output folder inside it is refused
    return shards


def _expand_one(pattern: str, columns: ColumnConfig, folder_shard_size: int) -> list[Shard]:
    fs, path = url_to_fs(pattern)
    if any(ch in path for ch in "*?["):
        globbed = fs.glob(path)
        matches = _shard_files(globbed)
        if not matches:
            images = sum(extension(m) in image_extensions() for m in globbed)
            hint = f" ({_plural(images, 'image')} do: give their folder instead)" if images else ""
            raise InputError(f"{pattern}: no .tar or .parquet files match{hint}")
        shards = [open_shard(full_url(fs, m), columns) for m in matches]
        mixed = any(isinstance(s, TarShard) for s in shards)
        return [s for s in shards if not mixed or _holds_images(s, pattern)]
    if not fs.exists(path):
        raise InputError(f"{pattern}: no such file or directory")
    if not fs.isdir(path):
        # As an absolute path (or a URL with its protocol): the stats record it as the shard's
        # source, and score, export and view open it again from wherever they run.
        return [open_shard(full_url(fs, path), columns)]
    return _expand_folder(fs, pattern, path, columns, folder_shard_size)


def _location(source: str) -> str:
    """One spelling per shard: a local path made absolute and normalised (a/x.tar, ./a/x.tar and
    a/../a/x.tar are one file); other URLs as given."""
    if "://" in source and not source.startswith("file://"):
        return source
    path = source.removeprefix("file://")
    name, sep, part = path.partition(" [")  # a folder slice: "{folder} [{slice}]"
    return os.path.realpath(name) + sep + part


def discover_shards(inputs: list[str], columns: ColumnConfig = ColumnConfig(),
                    folder_shard_size: int = FOLDER_SHARD_SIZE, writes_by_name: bool = True) -> list[Shard]:
    """Expand inputs into shards in a stable order. With `writes_by_name` each shard's output is
    named after it, so names must not collide; without (training, evaluation) two folders of
    00000.tar may be read, but not one shard twice."""
    shards: list[Shard] = []
    for item in inputs:
        for pattern in braceexpand(item):
            shards.extend(_expand_one(pattern, columns, folder_shard_size))
    seen: dict[str, str] = {}  # output name -> source
    places: dict[str, str] = {}  # one spelling of each source -> as given
    for shard in shards:
        where = _location(shard.source)
        if where in places:
            raise InputError(f"{shard.source} is given twice (as {places[where]} too; its samples would "
                             "count double); name it once")
        places[where] = shard.source
        if writes_by_name and shard.name in seen:
            raise InputError(f"two inputs would write the same output {shard.name}.parquet: "
                             f"{seen[shard.name]} and {shard.source}; caption them into separate output "
                             "folders")
        seen[shard.name] = shard.source
    if not shards:
        raise InputError("no input shards found")
    return shards


def input_locations(shards: list[Shard]) -> list[str]:
    """What an output folder must keep out of (the output contract's inputs): each shard's file,
    or a folder slice's folder, and every folder scanned recursively for them."""
    places = [full_url(s.fs, s.root) if isinstance(s, FolderShard) else s.source for s in shards]
    places += [s.scanned_root for s in shards if s.scanned_root]
    return list(dict.fromkeys(places))


def pattern_places(patterns: list[str]) -> list[str]:
    """Where input patterns read, without reading them: `{a,b}` expanded, a glob cut to the
    folder before its first wildcard (`data/*.tar` -> `data`). For the output contract of steps
    that take patterns (the trainers)."""
    places = []
    for item in patterns:
        for pattern in braceexpand(str(item)):
            fixed = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
            places.append(pattern if fixed == pattern else (fixed.rsplit("/", 1)[0] or "/"))
    return list(dict.fromkeys(places))
