"""Joining Ray, for the executors that run on it (`recap caption` and `recap download` with
`--executor ray`). Ray is an optional dependency: it is imported here and in those executors
only, and a missing Ray is one line naming the extra to install."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from .spine.errors import RecaptionError


class RayMissingError(RecaptionError, RuntimeError):
    """--executor ray without Ray installed."""


@contextmanager
def connected(address: str | None) -> Iterator[object]:
    """Ray, joined for the length of the block: a cluster at `address` ("auto", ray://host:port),
    or a local Ray started here (None). A Ray the caller already joined is used as it is."""
    try:
        import ray
    except ImportError as exc:
        raise RayMissingError("--executor ray needs Ray: pip install 'recaption[ray]'") from exc
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                 include_dashboard=False)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
