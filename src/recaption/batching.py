"""Group samples into model batches and prepare them ahead of the model in a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .sample import Sample


@dataclass
class Batch:
    """Up to batch_size decodable samples, plus any failed samples that came between them, so
    rows are written in input order. `inputs` are the processor's tensors for the ok samples."""

    index: int
    samples: list[Sample]
    inputs: Any = None
    conditional_inputs: Any = None

    @property
    def ok_samples(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]


def group_batches(samples: Iterable[Sample], batch_size: int) -> Iterator[Batch]:
    current: list[Sample] = []
    ok_count = 0
    index = 0
    for sample in samples:
        current.append(sample)
        ok_count += sample.ok
        if ok_count == batch_size:
            yield Batch(index, current)
            index += 1
            current, ok_count = [], 0
    if current:
        yield Batch(index, current)


_DONE = object()


class Prefetcher:
    """Runs `produce()` (read, decode, preprocess) in a thread, at most `depth` batches ahead,
    so the CPU work of batch n+1 overlaps generation of batch n. Exceptions from the producer
    are re-raised in the consumer; closing early stops the producer."""

    def __init__(self, produce: Callable[[], Iterator[Batch]], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, produce) -> None:
        try:
            for batch in produce():
                if not self._put(batch):
                    return
        except BaseException as exc:  # handed to the consumer, which decides
            self._put(exc)
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
