"""Turn user inputs (files, folders, globs, brace patterns, fsspec URLs) into input shards."""

from __future__ import annotations

import posixpath

from braceexpand import braceexpand
from fsspec.core import url_to_fs

from .base import ColumnConfig, Shard, ShardError, full_url
from .folder import FOLDER_IMAGE_EXTENSIONS, FolderFile, FolderShard
from .parquet import ParquetShard
from .webdataset import TarShard

__all__ = ["ColumnConfig", "InputError", "Shard", "ShardError", "discover_shards", "open_shard"]

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
FOLDER_SHARD_SIZE = 10_000


class InputError(ValueError):
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
    raise InputError(f"{url}: not a .tar, .tar.gz or .parquet shard")


def _folder_shards(fs, root: str, infos: dict, folder_shard_size: int, columns: ColumnConfig) -> list[Shard]:
    """Slices of `folder_shard_size` images in path order. The listing's sizes and mtimes go
    with each slice: its fingerprint, and the size check before a file is read."""
    listing = [FolderFile.from_info(info) for info in infos.values()]
    images = sorted((f for f in listing if f.path.lower().endswith(FOLDER_IMAGE_EXTENSIONS)),
                    key=lambda f: f.path)
    sidecars = {f.path[: -len(".txt")]: f for f in listing if f.path.endswith(".txt")}
    prefix = posixpath.basename(root.rstrip("/")) or "images"
    return [
        FolderShard(fs, root, images[i : i + folder_shard_size], f"{prefix}-{i // folder_shard_size:05d}",
                    sidecars, columns.max_image_bytes)
        for i in range(0, len(images), folder_shard_size)
    ]


def _shard_files(paths: list[str]) -> list[str]:
    """Tars if there are any, else parquet files. img2dataset writes a metadata parquet with no
    images beside each tar (00000.tar + 00000.parquet): the tar is the shard."""
    tars = sorted(p for p in paths if p.endswith(TAR_SUFFIXES))
    return tars or sorted(p for p in paths if p.endswith(PARQUET_SUFFIXES))


def _expand_one(pattern: str, columns: ColumnConfig, folder_shard_size: int) -> list[Shard]:
    fs, path = url_to_fs(pattern)
    if any(ch in path for ch in "*?["):
        matches = _shard_files(fs.glob(path))
        if not matches:
            raise InputError(f"{pattern}: no .tar or .parquet files match")
        return [open_shard(full_url(fs, m), columns) for m in matches]
    if not fs.exists(path):
        raise InputError(f"{pattern}: no such file or directory")
    if not fs.isdir(path):
        return [open_shard(pattern, columns)]
    infos = fs.find(path, detail=True)
    shard_files = _shard_files(list(infos))
    if shard_files:
        return [open_shard(full_url(fs, m), columns) for m in shard_files]
    shards = _folder_shards(fs, path, infos, folder_shard_size, columns)
    if not shards:
        raise InputError(f"{pattern}: folder holds no shards (.tar, .parquet) and no images")
    return shards


def discover_shards(
    inputs: list[str],
    columns: ColumnConfig = ColumnConfig(),
    folder_shard_size: int = FOLDER_SHARD_SIZE,
) -> list[Shard]:
    """Expand inputs into shards in a stable order; output names must not collide."""
    shards: list[Shard] = []
    for item in inputs:
        for pattern in braceexpand(item):
            shards.extend(_expand_one(pattern, columns, folder_shard_size))
    seen: dict[str, str] = {}
    for shard in shards:
        if shard.name in seen:
            raise InputError(
                f"two inputs would write the same output {shard.name}.parquet: "
                f"{seen[shard.name]} and {shard.source}; caption them into separate output folders"
            )
        seen[shard.name] = shard.source
    if not shards:
        raise InputError("no input shards found")
    return shards

