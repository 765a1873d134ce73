"""Parquet shards with an image column: raw bytes or the HF `datasets` Image struct {bytes, path}."""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from ..sample import Sample
from .base import ColumnConfig, Shard, ShardError, sha256_hex

BATCH_ROWS = 256  # rows decoded from parquet at a time: bounds memory on huge files


def _pick(names: list[str], wanted: str | None, candidates: tuple[str, ...]) -> str | None:
    if wanted:
        return wanted if wanted in names else None
    return next((c for c in candidates if c in names), None)


def _image_bytes(value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):  # datasets.Image struct
        return value.get("bytes")
    return value


class ParquetShard(Shard):
    def __init__(self, source: str, name: str, columns: ColumnConfig = ColumnConfig()):
        self.source = source
        self.name = name
        self.columns = columns

    def __iter__(self) -> Iterator[Sample]:
        try:
            with fsspec.open(self.source, "rb") as raw:
                try:
                    pf = pq.ParquetFile(raw)
                except (pa.ArrowInvalid, OSError) as exc:
                    raise ShardError(self.source, f"not a readable parquet file: {exc}") from exc
                names = pf.schema_arrow.names
                image_col = _pick(names, self.columns.image, ColumnConfig.IMAGE_CANDIDATES)
                if image_col is None:
                    wanted = self.columns.image or " or ".join(ColumnConfig.IMAGE_CANDIDATES)
                    raise ShardError(
                        self.source,
                        f"no image column {wanted!r} (columns: {', '.join(names)}); "
                        "name it with --image-col",
                    )
                caption_col = _pick(names, self.columns.caption, ColumnConfig.CAPTION_CANDIDATES)
                if self.columns.caption and caption_col is None:
                    raise ShardError(self.source, f"no caption column {self.columns.caption!r}")
                optional = [self.columns.url, self.columns.key, self.columns.sha256, *self.columns.extra]
                wanted_cols = [image_col] + [c for c in [caption_col, *optional] if c and c in names]
                row_index = 0
                try:
                    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted_cols):
                        for row in batch.to_pylist():
                            yield self._sample(row, row_index, image_col, caption_col)
                            row_index += 1
                except (pa.ArrowException, OSError) as exc:
                    raise ShardError(self.source, f"corrupt parquet data: {exc}") from exc
        except FileNotFoundError as exc:
            raise ShardError(self.source, f"file not found: {exc}") from exc

    def _sample(self, row: dict, index: int, image_col: str, caption_col: str | None) -> Sample:
        image = _image_bytes(row.get(image_col))
        key = row.get(self.columns.key)
        caption = row.get(caption_col) if caption_col else None
        return Sample(
            key=str(key) if key is not None else f"{self.name}_{index:09d}",
            url=row.get(self.columns.url),
            org_caption=None if caption is None else str(caption),
            sha256=row.get(self.columns.sha256) or sha256_hex(image),
            image_bytes=image,
            extra={c: row.get(c) for c in self.columns.extra},
        )
