"""Read -> decode -> preprocess, as a stream of model-ready batches built in DataLoader workers
(no GIL shared with generation), with markers where each shard starts and ends so the consumer
can commit or abort per shard."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..readers import Shard, ShardError
from ..samples.images import decode_sample
from ..samples.placeholders import listed_placeholder
from ..samples.sample import Sample
from .carry import carried_sample

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Up to batch_size samples to caption of one shard, with the failed ones between them (rows
    stay in input order); `inputs`: the model inputs of each pass, by pass name."""

    shard: str
    index: int
    samples: list[Sample]
    inputs: dict[str, Any] = field(default_factory=dict)
    score_inputs: Any = None  # CLIP pixel values when scoring in the same pass
    decode_seconds: float = 0.0  # reading, decoding and preparing this batch (in a loader worker)

    @property
    def ok_samples(self) -> list[Sample]:
        """The samples to caption: decodable, and not kept from an earlier output."""
        return [s for s in self.samples if s.to_caption]

    def pin_memory(self) -> Batch:
        """The DataLoader's pin_memory=True: page-locked memory copies to the GPU asynchronously."""
        for name, value in self.inputs.items():
            if hasattr(value, "items"):
                self.inputs[name] = type(value)({k: v.pin_memory() for k, v in value.items()})
        if self.score_inputs is not None:
            self.score_inputs = self.score_inputs.pin_memory()
        return self


@dataclass
class ShardStart:
    shard: Shard


@dataclass
class ShardEnd:
    shard: str
    error: str | None  # the ShardError message when the shard turned out broken


def group_batches(samples: Iterable[Sample], batch_size: int, shard: str = "") -> Iterator[Batch]:
    current: list[Sample] = []
    ok_count = 0
    index = 0
    for sample in samples:
        current.append(sample)
        ok_count += sample.to_caption
        if ok_count == batch_size:
            yield Batch(shard, index, current)
            index += 1
            current, ok_count = [], 0
    if current:
        yield Batch(shard, index, current)


class BatchStream(IterableDataset):
    """ShardStart, Batch..., ShardEnd for every shard; worker k of n takes shards k, k+n, ..."""

    def __init__(self, shards: list[Shard], preparer, batch_size: int, passes: list,
                 max_pixels: int, max_side: int | None, score_pixels=None, placeholders=frozenset()):
        self.shards = shards
        self.score_pixels = score_pixels  # images -> CLIP pixel values (picklable), or None
        self.preparer = preparer
        self.batch_size = batch_size
        self.passes = passes  # passes.CaptionPass, each prepared from the same decoded images
        # Prepared here: passes that read only the image and alt-text; the others once the outputs
        # they read exist (pipeline._caption_batch), from images kept for them.
        self.early = [p for p in passes if not p.reads and not p.text_only]
        self.keep_images = any(p.reads and not p.text_only for p in passes)
        # Rendered once: a pass without {caption} asks every image the same thing.
        self._fixed_prompts = {p.name: preparer.render(p.prompt) for p in self.early if p.fixed}
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.placeholders = placeholders  # sha256 digests of images never captioned (--placeholders)

    def my_shards(self) -> Iterator[Shard]:
        worker = get_worker_info()
        return iter(self.shards if worker is None else self.shards[worker.id :: worker.num_workers])

    def __iter__(self) -> Iterator[object]:
        for shard in self.my_shards():
            yield ShardStart(shard)
            try:
                yield from self._batches(shard)
            except ShardError as exc:
                yield ShardEnd(shard.name, exc.message)
            except Exception as exc:  # one shard's surprise fails that shard, not the run
                log.info("%s failed while reading", shard.source, exc_info=True)
                yield ShardEnd(shard.name, f"unexpected error while reading: {type(exc).__name__}: {exc}")
            else:
                yield ShardEnd(shard.name, None)

    def prompts(self, samples: list[Sample]) -> list[list[str]]:
        """Each early pass's prompts for these samples (one list per pass, in pass order)."""
        return [
            [self._fixed_prompts[p.name]] * len(samples) if p.name in self._fixed_prompts
            else [self.preparer.render(p.instruction(s.org_caption)) for s in samples]
            for p in self.early
        ]

    def _batches(self, shard: Shard) -> Iterator[Batch]:
        started = time.perf_counter()
        carry = getattr(shard, "carry", None)
        kept = carry.rows() if carry is not None else {}
        decoded = (s if carried_sample(s, kept) or listed_placeholder(s, self.placeholders)
                   else decode_sample(s, self.max_pixels, self.max_side) for s in shard)
        for batch in group_batches(decoded, self.batch_size, shard.name):
            ok = batch.ok_samples
            if ok:
                images = [s.image for s in ok]  # decoded once, for every pass
                prepared = self.preparer.prepare_passes(images, self.prompts(ok))
                batch.inputs = {p.name: inputs for p, inputs in zip(self.early, prepared, strict=True)}
                if self.score_pixels is not None:
                    batch.score_inputs = self.score_pixels(images)
            if not self.keep_images:
                for s in ok:
                    s.image = None  # the tensors hold what the model needs; do not ship pixels twice
            batch.decode_seconds = time.perf_counter() - started
            yield batch
            started = time.perf_counter()


class FedBatchStream(BatchStream):
    """A BatchStream whose shards arrive while it runs: each loader worker takes the next from
    `feed` (a queue) until a None, so a long-lived worker keeps one loader for life."""

    def __init__(self, feed, *args, **kwargs):
        super().__init__([], *args, **kwargs)
        self.feed = feed

    def my_shards(self) -> Iterator[Shard]:
        while (shard := self.feed.get()) is not None:
            yield shard


def _as_is(item):
    return item


def default_workers(device: str) -> int:
    """On a GPU, CPU workers keep it fed; on a CPU they only preempt the model's threads
    (docs/benchmarks.md)."""
    if not str(device).startswith("cuda"):
        return 0
    return min(4, max(1, (os.cpu_count() or 2) - 1))


def batch_loader(stream: BatchStream, workers: int, prefetch_batches: int, pin_memory: bool) -> DataLoader:
    fed = isinstance(stream, FedBatchStream)
    if not fed:
        workers = min(workers, len(stream.shards))
    return DataLoader(
        stream,
        batch_size=None,  # items are already batches (or shard markers)
        collate_fn=_as_is,
        num_workers=workers,
        prefetch_factor=max(1, prefetch_batches) if workers > 0 else None,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=False,
        # A fed worker waits on the queue between shards: take items from whichever worker has
        # them. Each worker's items still come in its order, so every shard's batches do.
        in_order=not fed,
    )
