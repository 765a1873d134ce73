"""torchrun support shared by the trainers: one process per GPU (or CPU rank with gloo)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch


@dataclass
class Ranks:
    distributed: bool
    rank: int
    device: str
    world_size: int = 1

    def wrap(self, model, **ddp_options):
        """DDP around the model under torchrun (gradients averaged across ranks), else the model."""
        return torch.nn.parallel.DistributedDataParallel(model, **ddp_options) if self.distributed else model

    def gather(self, tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Every rank's `tensors` (same keys and shapes on each), in rank order, on every rank
        (a collective: all ranks call it). Used for each rank's RNG state in checkpoints."""
        if not self.distributed:
            return [tensors]
        device = self.device if torch.distributed.get_backend() == "nccl" else "cpu"
        gathered: list[dict[str, torch.Tensor]] = [{} for _ in range(self.world_size)]
        for key in sorted(tensors):
            local = tensors[key].to(device)
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            held = [local, *parts]
            baseline = _references(held)
            torch.distributed.all_gather(parts, local)
            _wait_released(held, baseline)
            for rank, part in enumerate(parts):
                gathered[rank][key] = part.cpu()
        return gathered

    def finish(self) -> None:
        if self.distributed:
            torch.distributed.destroy_process_group()


def _references(tensors: list[torch.Tensor]) -> list[int]:
    return [sys.getrefcount(t) for t in tensors]


def _wait_released(tensors: list[torch.Tensor], baseline: list[int], timeout: float = 10.0) -> None:
    """Wait until the process group's threads have let go of `tensors` (reference counts back to
    `baseline`): gloo frees a finished collective a moment later, needing the GIL; a teardown
    first would hang the process at exit (about one run in five without this wait)."""
    deadline = time.monotonic() + timeout
    while any(now > then for now, then in zip(_references(tensors), baseline, strict=True)):
        if time.monotonic() > deadline:
            return
        time.sleep(0.001)


def start(requested_device: str) -> Ranks:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this rank's device."""
    from .inputs import check_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world_size > 1
    if distributed and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    else:
        device = check_device(requested_device)
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(distributed, int(os.environ.get("RANK", "0")), device, world_size)
