"""Checkpoints shared by the trainers: a model folder (safetensors, tokenizer, processor) plus
trainer_state.pt (optimizer, scheduler, step, RNG), written under a temporary name and renamed,
so a checkpoint is there whole or not at all; `latest` finds the one to resume from."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(folder: Path, parts: list, optimizer, scheduler, step: int, rng, **extra) -> None:
    """`parts` are objects with save_pretrained (model, tokenizer, processor)."""
    tmp = folder.with_name(folder.name + ".tmp")
    for part in parts:
        part.save_pretrained(tmp)
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "rng": rng,
        **extra,
    }
    torch.save(state, tmp / "trainer_state.pt")
    os.replace(tmp, folder)


def load_state(folder: str | Path) -> dict:
    return torch.load(Path(folder) / "trainer_state.pt", weights_only=False)


def latest_checkpoint(output: Path, prefix: str = "checkpoint-") -> str | None:
    found = sorted(p for p in output.glob(f"{prefix}*[0-9]") if p.is_dir()) if output.exists() else []
    return str(found[-1]) if found else None
