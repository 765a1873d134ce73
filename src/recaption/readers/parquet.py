"""Parquet shards with an image column: raw bytes, the HF `datasets` Image struct {bytes, path},
or file paths. A path stays inside its root (the parquet's folder, or --image-root) unless
--any-image-path; a row whose image cannot be read is a row with that status (docs/security.md)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from ..samples.sample import MISSING_IMAGE, READ_ERROR, Sample, as_text
from ..spine.files import kind_of, local_path, open_input
from .base import (
    ColumnConfig,
    FileShard,
    ShardError,
    UniqueKeys,
    UnreadableImage,
    failed_sample,
    full_url,
    inside,
    is_local,
    protocols,
    read_bounded,
    sha256_hex,
)

BATCH_ROWS = 256  # rows decoded from parquet at a time: bounds memory on huge files
_WEB = ("http://", "https://")


# Where a user names each identity column; a named one the file lacks fails the shard.
_IDENTITY_FLAGS = {"key": "--key-col", "url": "--url-col", "sha256": "sha256_col"}


def _pick(names: list[str], wanted: str | None, candidates: tuple[str, ...]) -> str | None:
    """A named column exactly as named; else the first candidate the file has, exact names
    first, then ignoring case (`Caption`, `IMAGE`)."""
    if wanted:
        return wanted if wanted in names else None
    exact = next((c for c in candidates if c in names), None)
    if exact is not None:
        return exact
    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.lower(), name)
    return next((by_lower[c.lower()] for c in candidates if c.lower() in by_lower), None)


def _image_kind(column: str, arrow_type: pa.DataType, source: str) -> str:
    """"bytes", "struct" or "path"; any other type cannot be an image: the shard is refused."""
    types = pa.types
    if any(is_(arrow_type) for is_ in (types.is_binary, types.is_large_binary, types.is_binary_view,
                                       types.is_fixed_size_binary)):
        return "bytes"
    if any(is_(arrow_type) for is_ in (types.is_string, types.is_large_string, types.is_string_view)):
        return "path"
    if pa.types.is_struct(arrow_type) and {"bytes", "path"} & {f.name for f in arrow_type}:
        return "struct"
    raise ShardError(source, f"column {column!r} holds {arrow_type}, not images (binary bytes, a "
                             "{bytes, path} struct or file paths); name the image column with --image-col")


class ParquetShard(FileShard):
    def column_names(self) -> list[str] | None:
        """The file's columns, from its footer; None if it cannot be read."""
        try:
            with open_input(self.source) as raw:
                return pq.read_schema(raw).names
        except (pa.ArrowException, OSError):
            return None

    def image_column(self, names: list[str]) -> str | None:
        return _pick(names, self.columns.image, ColumnConfig.IMAGE_CANDIDATES)

    def _identity_column(self, names: list[str], field: str) -> str | None:
        """The key / url / sha256 column: the default name is optional (matched ignoring case), a
        name the user chose that the file lacks fails the shard."""
        wanted = getattr(self.columns, field)
        default = getattr(ColumnConfig, field)
        if not wanted:
            return None
        if wanted == default:
            return _pick(names, None, (default,))
        if wanted in names:
            return wanted
        raise self._no_column(field, wanted, names, _IDENTITY_FLAGS[field])

    def _no_column(self, field: str, wanted: str, names: list[str], flag: str, hint: str = "") -> ShardError:
        return ShardError(self.source, f"no {field} column {wanted!r} (columns: {', '.join(names)}); "
                          f"name it with {flag}{hint}")

    def _read_file(self, raw) -> Iterator[Sample]:
        try:
            pf = pq.ParquetFile(raw)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardError(self.source, f"not a readable parquet file: {exc}") from exc
        yield from self._rows(pf)

    def _rows(self, pf: pq.ParquetFile) -> Iterator[Sample]:
        schema = pf.schema_arrow
        names = schema.names
        image_col = self.image_column(names)
        if image_col is None:
            wanted = self.columns.image or " or ".join(ColumnConfig.IMAGE_CANDIDATES)
            url_list = "url" in {n.lower() for n in names}  # the images are not here yet
            raise self._no_column("image", wanted, names, "--image-col",
                                  "; or, if it lists image URLs, fetch them first with `recap download` "
                                  "(or `recap run`: download, then caption)" if url_list else "")
        kind = _image_kind(image_col, schema.field(image_col).type, self.source)
        caption_col = _pick(names, self.columns.caption, ColumnConfig.CAPTION_CANDIDATES)
        if self.columns.caption and caption_col is None:
            raise self._no_column("caption", self.columns.caption, names, "--caption-col")
        cols = {"image": image_col, "caption": caption_col,
                **{f: self._identity_column(names, f) for f in _IDENTITY_FLAGS}}
        optional = [cols["caption"], cols["url"], cols["key"], cols["sha256"], *self.columns.extra]
        wanted_cols = list(dict.fromkeys([image_col] + [c for c in optional if c and c in names]))
        try:
            unique = UniqueKeys(self._given_keys(pf, cols["key"]) if cols["key"] else ())
            row_index = 0
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted_cols):
                for row in batch.to_pylist():
                    yield self._sample(row, row_index, kind, cols, unique)
                    row_index += 1
        except pa.ArrowException as exc:
            raise ShardError(self.source, f"corrupt parquet data: {exc}") from exc

    @staticmethod
    def _given_keys(pf: pq.ParquetFile, key_col: str) -> set[str]:
        """The key column alone (cheap), so a suffix for a repeated key never takes a later key."""
        return {str(k) for k in pf.read(columns=[key_col]).column(0).to_pylist() if k is not None}

    def _sample(self, row: dict, index: int, kind: str, cols: dict[str, str | None],
                unique: UniqueKeys) -> Sample:
        def value(field: str):
            return row.get(cols[field]) if cols[field] else None

        given_key = value("key")
        key = unique(str(given_key) if given_key not in (None, "") else f"{self.name}_{index:09d}")
        caption = as_text(value("caption"))
        url = as_text(value("url"))
        try:
            image = self._image(value("image"), kind)
        except UnreadableImage as problem:
            return failed_sample(key, url, caption, problem)
        return Sample(
            key=key,
            url=url,
            org_caption=caption,
            sha256=as_text(value("sha256")) or sha256_hex(image),
            image_bytes=image,
            extra={c: row.get(c) for c in self.columns.extra},
        )

    def _image(self, value, kind: str) -> bytes | None:
        if value is None:
            return None
        if kind == "bytes":
            return value
        if kind == "struct":
            if value.get("bytes") is not None or not value.get("path"):
                return value.get("bytes")
            value = value["path"]  # datasets' path-only image: the file is beside the parquet
        return self._read_path(value) if value else None

    def _read_path(self, path: str) -> bytes:
        if path.lower().startswith(_WEB):
            raise UnreadableImage(MISSING_IMAGE,
                                  f"image is a web URL ({path}); fetch URLs with `recap download` first")
        if any(p in _NETWORK_PROTOCOLS for p in protocols_of(path)):
            raise UnreadableImage(READ_ERROR, f"image path {path} names a network location; fetch URLs with "
                                              "`recap download`")
        try:
            fs, resolved = self._resolve(path)
        except UnreadableImage:
            raise
        except Exception as exc:  # an unknown protocol, a filesystem library not installed: this row
            raise UnreadableImage(READ_ERROR, f"image path {path}: {type(exc).__name__}: {exc}") from exc
        return read_bounded(fs, resolved, self.columns.max_image_bytes)

    def _resolve(self, path: str):
        """(filesystem, path) of a row's image path under the image root; one that leaves it is
        that row's read_error, unless --any-image-path."""
        if "\x00" in path:
            raise UnreadableImage(READ_ERROR, f"image path {path!r} holds a NUL byte")
        if self.columns.any_image_path:
            # A chain's inner file is opened as its filesystem is built (zip://x::file:///f.zip):
            # only a regular one (a FIFO there blocked the whole shard).
            for part in path.split("::")[1:]:
                local = local_path(part)
                if local is not None and os.path.lexists(local) and not os.path.isfile(local):
                    what = kind_of(os.stat(local).st_mode) if os.path.exists(local) else "a link to nothing"
                    raise UnreadableImage(READ_ERROR, f"image path {path}: {local} is {what}, not a file")
            if "://" in path:
                return url_to_fs(path)
            fs, parquet_path = url_to_fs(self.source)  # fsspec caches filesystem instances: cheap
            return fs, posixpath.join(posixpath.dirname(parquet_path), path)
        root_fs, root = url_to_fs(self.columns.image_root or self.source)
        root = root if self.columns.image_root else posixpath.dirname(root)
        # A path with a protocol is judged by its text before any filesystem is built for it
        # (building one may connect): only the root's own protocol, never a chain (zip://x::...).
        named = protocols_of(path)
        if "::" in path or (named and named[0] not in protocols(root_fs)):
            fs, resolved = None, path  # refused below
        else:
            fs, resolved = url_to_fs(path) if named else (root_fs, posixpath.join(root, path))
        if fs is None or type(fs) is not type(root_fs) or not inside(root, resolved, local=is_local(fs)):
            raise UnreadableImage(
                READ_ERROR,
                f"image path {path} is outside {full_url(root_fs, root)}, the folder image paths are read "
                "from; name that folder with --image-root, or pass --any-image-path to read paths anywhere",
            )
        return fs, resolved


# Protocols that reach over the network (fsspec's and its plugins'): never taken from a row.
_NETWORK_PROTOCOLS = {"http", "https", "ftp", "sftp", "ssh", "smb", "webdav", "webhdfs", "hdfs", "git",
                      "github", "dask", "dbfs", "oci", "ocilake", "box", "dropbox", "wandb", "hf"}


def protocols_of(path: str) -> list[str]:
    """Every protocol a path names, chained ones too (`zip://x::http://h/a.zip` -> zip, http)."""
    return [part.split("://", 1)[0].lower() for part in path.split("::") if "://" in part]
