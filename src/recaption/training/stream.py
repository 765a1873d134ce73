"""The trainers' data: a resumable stream of batches, split over ranks and loader workers, whose
memory does not grow with the dataset. docs/scaling.md ("Training that streams") has the split,
the shuffle buffer, why every rank's epoch ends after the fewest batches any rank has, and how a
saved `Position` lets a resumed run see exactly the batches it would have seen.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..samples.images import ImageDecodeError, decode_image
from ..spine.contract import location
from .inputs import TrainingInputError
from .stream_sources import Record, StreamShard

log = logging.getLogger(__name__)


@dataclass
class Position:
    """Where a rank's stream is: the next batch is worker `pointer`'s (or the next worker's after it
    that has any), in `epoch`, `consumed[w]` batches of worker w taken."""

    epoch: int
    consumed: list[int]
    pointer: int = 0

    @classmethod
    def start(cls, workers: int, epoch: int = 0) -> Position:
        return cls(epoch, [0] * workers, 0)

    @property
    def steps(self) -> int:
        return sum(self.consumed)

    def advance(self, worker: int) -> None:
        self.consumed[worker] += 1
        self.pointer = (worker + 1) % len(self.consumed)

    def copy(self) -> Position:
        return Position(self.epoch, list(self.consumed), self.pointer)

    # as one int tensor, the same shape on every rank, for Ranks.gather
    def tensor(self) -> torch.Tensor:
        return torch.tensor([self.epoch, self.pointer, *self.consumed], dtype=torch.int64)

    @classmethod
    def from_list(cls, values: list[int]) -> Position:
        return cls(int(values[0]), [int(v) for v in values[2:]], int(values[1]))


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A bounded shuffle: hold `size` items, hand out a random one as each new one comes in."""
    if size <= 1:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def _seed(*parts) -> random.Random:
    # A string seed goes through SHA-512: the same in every process (no PYTHONHASHSEED).
    return random.Random("/".join(map(str, parts)))


@dataclass(eq=False)
class TrainingStream(IterableDataset):
    """Batches of one rank's share of the shards from `position` on: dicts of `worker` (that made
    it), `pixels` (`processor(images=[...], return_tensors="pt")`), `keys`, `org` and `re` (either
    may be None), `more`. An item with `error` is a TrainingInputError raised in the main process."""

    shards: list[StreamShard]
    batch_size: int
    processor: object
    _: KW_ONLY
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    workers: int = 1
    shuffle_buffer: int = 1000
    max_side: int = 512

    def __post_init__(self):
        if min(self.batch_size, self.workers, self.world_size) < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError("batch_size, workers and world_size must be positive, rank below world_size")
        if len(self.shards) < self.world_size:
            raise ValueError("fewer shards than ranks: spread them first (stream_sources.spread)")
        self.position = Position.start(self.workers)

    def settings(self) -> dict:
        """What must be the same for a checkpoint's position to mean the same batches."""
        return {"shards": [s.label for s in self.shards], "samples": [s.samples for s in self.shards],
                "batch_size": self.batch_size, "workers": self.workers, "shuffle_buffer": self.shuffle_buffer,
                "seed": self.seed}

    def shards_of(self, epoch: int, rank: int, worker: int) -> list[StreamShard]:
        order = list(range(len(self.shards)))
        _seed(self.seed, epoch).shuffle(order)
        return [self.shards[i] for i in order[rank :: self.world_size][worker :: self.workers]]

    def batches_of(self, epoch: int, rank: int) -> list[int]:
        """How many batches each worker of `rank` makes in `epoch`."""
        return [math.ceil(sum(s.samples for s in self.shards_of(epoch, rank, w)) / self.batch_size)
                for w in range(self.workers)]

    def steps_per_epoch(self, epoch: int) -> int:
        """The same on every rank: the fewest batches any rank makes in `epoch`."""
        return min(sum(self.batches_of(epoch, rank)) for rank in range(self.world_size))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical, processes = (info.id, info.num_workers) if info else (0, 1)
        if processes != self.workers:
            yield {"worker": 0, "error": f"a stream of {self.workers} workers run by {processes} processes"}
            return
        position = self.position
        worker = (physical + position.pointer) % self.workers
        yield from self.batches(position.epoch, worker, position.consumed[worker])

    def batches(self, epoch: int, worker: int, skip: int = 0) -> Iterator[dict]:
        """Worker `worker`'s batches of `epoch` on this rank, after its first `skip`."""
        try:
            shards = self.shards_of(epoch, self.rank, worker)
            records = itertools.chain.from_iterable(s.records() for s in shards)
            mixed = shuffled(records, self.shuffle_buffer, _seed(self.seed, epoch, self.rank, worker))
            # Skipped before decoding: a resumed worker only reads what it had already used.
            mixed = itertools.islice(mixed, skip * self.batch_size, None)
            while chunk := list(itertools.islice(mixed, self.batch_size)):
                yield self._prepare(chunk, worker)
        except TrainingInputError as exc:
            yield {"worker": worker, "error": str(exc)}

    def _prepare(self, chunk: list[Record], worker: int) -> dict:
        images, kept = [], []
        for record in chunk:
            try:
                images.append(decode_image(record.data, max_side=self.max_side))
                kept.append(record)
            except ImageDecodeError as exc:
                # Counted in its batch, left out of it: the batch is one smaller, the steps the same.
                log.warning("%s: sample %s not used: %s", record.where, record.key, exc)
        if not kept:  # a batch with nothing to train on: counted as taken, then passed over
            return {"worker": worker, "undecodable": len(chunk), "where": chunk[0].where, "key": chunk[0].key}
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"worker": worker, "pixels": pixels, "keys": [r.key for r in kept],
                "org": [r.org for r in kept], "re": [r.re for r in kept],
                "more": [r.more or {} for r in kept]}  # a caption mix's other columns (--mix)


def _as_is(item):
    return item


@dataclass
class StreamBatches:
    """The trainer's side: an endless iterator of batches, epoch after epoch, that knows its
    `position`. `loader_workers` processes run the stream (0: in this process, as one worker)."""

    stream: TrainingStream
    loader_workers: int
    position: Position | None = None
    prefetch: int = 2
    pin_memory: bool = False
    _batches: Iterator | None = field(default=None, repr=False)
    _steps: int = field(default=0, repr=False)

    def __post_init__(self):
        if max(1, self.loader_workers) != self.stream.workers:
            raise ValueError("loader_workers must match the stream's workers")
        self.position = (self.position or Position.start(self.stream.workers)).copy()
        steps = self.stream.steps_per_epoch(self.position.epoch)
        if len(self.position.consumed) != self.stream.workers or self.position.steps >= steps:
            raise TrainingInputError(f"the saved data position (epoch {self.position.epoch}, "
                                     f"{self.position.steps} steps in) does not fit this data ({steps} steps "
                                     "in that epoch); train into a new --output")

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        """The next batch with images. One none of whose images decodes is passed over (counted as
        taken, so a resumed run passes over the same one); a whole epoch of them is an error."""
        passed_over = 0
        while True:
            item = self._next_item()
            if "undecodable" not in item:
                return item
            passed_over += 1
            log.warning("%s: a batch of %d images none of which decodes (sample %s and others) "
                        "is passed over", item["where"], item["undecodable"], item["key"])
            if passed_over > max(self._steps or 0, 1):
                raise TrainingInputError(f"{item['where']}: no image of a whole epoch decodes")

    def _next_item(self) -> dict:
        if self._batches is None:
            self._open()
        try:
            item = next(self._batches)
        except StopIteration:
            self.close()
            raise TrainingInputError(f"rank {self.stream.rank} ran out of batches {self.position.steps} "
                                     f"steps into epoch {self.position.epoch}, which has {self._steps}: did "
                                     "the shards change while training?") from None
        if "error" in item:
            self.close()
            raise TrainingInputError(item["error"])
        self.position.advance(item["worker"])
        if self.position.steps == self._steps:  # this rank's epoch is over (every rank has as many steps)
            self.close()
            self.position = Position.start(self.stream.workers, self.position.epoch + 1)
        return item

    def _open(self) -> None:
        self._steps = self.stream.steps_per_epoch(self.position.epoch)
        self.stream.position = self.position.copy()  # what the workers start from (set before they start)
        if self.loader_workers == 0:
            self._batches = iter(self.stream)
            return
        # batch_size None: the workers make whole batches; in_order: round-robin over the workers
        # still active, as Position assumes; its own generator for the workers' base seed: drawn
        # from torch's global one, it would shift the DiT's noise after a resume.
        loader = DataLoader(self.stream, batch_size=None, collate_fn=_as_is, num_workers=self.loader_workers,
                            prefetch_factor=self.prefetch, persistent_workers=False, in_order=True,
                            pin_memory=self.pin_memory and torch.cuda.is_available(),
                            generator=torch.Generator().manual_seed(0))
        # The workers are forked here. Frozen, the objects they inherit are never visited by
        # their garbage collector, whose writes would copy each page it touches into the worker
        # (measured: ~60 MiB a worker after the shards were counted in this process).
        gc.collect()
        gc.freeze()
        try:
            self._batches = iter(loader)
        finally:
            gc.unfreeze()

    def close(self) -> None:
        """Stop the loader processes (the next batch starts them again)."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        elif hasattr(batches, "close"):
            batches.close()


def checkpoint_state(batches: StreamBatches, ranks) -> dict:
    """Every rank's position and the stream's settings, for a checkpoint (a collective)."""
    gathered = ranks.gather({"position": batches.position.tensor()})
    return {"settings": batches.stream.settings(), "positions": [g["position"].tolist() for g in gathered]}


def _located(label: str) -> str:
    """An older checkpoint's shard label as StreamShard.label writes it now (its place located)."""
    place, part, rest = label.partition(" (part ")
    return location(place) + part + rest


def _other_shards(then: list, now: list) -> str:
    """How the shards differ, naming the first one that does."""
    if len(then) != len(now):
        return f"{len(then)} shards then, {len(now)} now"
    first = next(i for i, (a, b) in enumerate(zip(then, now, strict=True)) if a != b)
    return f"shard {first + 1} was {then[first]}, is {now[first]}"


def resumed_position(saved: dict | None, stream: TrainingStream, rank: int) -> Position | None:
    """This rank's position from a checkpoint's `stream` state (None: from the start)."""
    if saved is None:
        log.warning("checkpoint without a data position (from before training streamed): data from the start")
        return None
    then, now = saved["settings"], stream.settings()
    if isinstance(then.get("shards"), list):  # older checkpoints: paths as typed (relative to here)
        then = {**then, "shards": [_located(str(label)) for label in then["shards"]]}
    changed = []
    for key in now:
        if then.get(key) == now[key]:
            continue
        if key == "shards":
            changed.append(_other_shards(then.get(key) or [], now[key]))
        elif key == "samples":
            changed.append("other shard sizes")
        else:
            changed.append(f"{key.replace('_', '-')}: {then.get(key)} then, {now[key]} now")
    if changed:
        raise TrainingInputError("the checkpoint was trained on other data or data settings "
                                 f"({'; '.join(changed)}): give the same to resume it exactly, or train into "
                                 "a new --output")
    return Position.from_list(saved["positions"][rank])
