"""torchrun support shared by the trainers: one process per GPU (or CPU rank with gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Ranks:
    distributed: bool
    rank: int
    device: str

    def wrap(self, model, **ddp_options):
        """DDP around the model under torchrun (gradients averaged across ranks), else the model."""
        return torch.nn.parallel.DistributedDataParallel(model, **ddp_options) if self.distributed else model

    def finish(self) -> None:
        if self.distributed:
            torch.distributed.destroy_process_group()


def start(requested_device: str) -> Ranks:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this rank's device."""
    from ..engines.transformers_engine import pick_device

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if distributed and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    else:
        device = pick_device(requested_device)
    return Ranks(distributed, int(os.environ.get("RANK", "0")), device)
