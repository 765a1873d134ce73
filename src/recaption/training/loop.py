"""What train-clip, train-captioner and train-dit share: their start, data stream, loop and end.

A trainer builds its model, stream and optimizer and hands `TrainLoop` a `step_loss` (a batch ->
its loss); the loop steps, logs and checkpoints alike for all three. A rerun into the same output
resumes from the newest checkpoint (training/checkpoints.py) exactly; the stream: training/stream.py.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fsspec.implementations.local import LocalFileSystem

from ..spine.atomic import write_json_atomic
from ..spine.contract import output_errors
from ..spine.errors import RecaptionError
from . import distributed
from .captions import CaptionMix
from .checkpoints import (
    MODEL_WEIGHTS,
    CheckpointError,
    check_checkpoint,
    latest_checkpoint,
    load_state,
    require_same_recipe,
    restore_optimizer,
    restore_rng,
    rng_tensors,
    save_checkpoint,
)
from .inputs import check_output
from .stream import StreamBatches, TrainingStream, checkpoint_state, resumed_position
from .stream_sources import require_fields, spread, stream_shards

log = logging.getLogger(__name__)


def train_into(command: str, config, body: Callable, weights: tuple[str, ...] = MODEL_WEIGHTS, *args):
    """The start every trainer shares: `config.output` through the output contract's checks, OS
    errors there as one line, the newest checkpoint checked, this rank's process group joined (under
    torchrun) and device picked; then `body(config, out, resume_from, ranks, *args)`."""
    out = check_output(config.output, command, config.data)
    with output_errors(config.output):
        resume_from = latest_checkpoint(out)
        if resume_from:
            check_checkpoint(resume_from, weights)
        return body(config, out, resume_from, distributed.start(config.device), *args)


def settings_of(config, names: tuple[str, ...]) -> dict:
    """The settings a resumed run must share with the run it continues (its checkpoint records them)."""
    return {name: getattr(config, name) for name in names}


@dataclass
class Resumed:
    """Where this rank starts: its step, RNG, batches (from the saved position) and the values saved."""

    step: int
    rng: random.Random
    batches: StreamBatches
    extra: dict


def resume(folder: str | None, ranks, config, optimizer, scheduler, stream: TrainingStream, settings: dict,
           weights: tuple[str, ...] = MODEL_WEIGHTS, added_later: dict | None = None) -> Resumed:
    """Checkpoint `folder`'s state for this rank (None: the start, its RNG seeded by config.seed),
    checked before use: its fields, its settings against `settings`, its optimizer state against
    this model; then the stream's batches from its data position."""
    state, rng, position = {}, random.Random(config.seed * 1000 + ranks.rank), None
    if folder is not None:
        state = load_state(folder, ranks.rank, ranks.world_size, weights)
        require_same_recipe(folder, state.get("settings"), settings, added_later)
        if optimizer is not None:
            restore_optimizer(folder, state, optimizer, scheduler)
        try:
            rng = restore_rng(state["rng"], ranks.device)
            position = resumed_position(state.get("stream"), stream, ranks.rank)
        except RecaptionError:  # other data or data settings: said by the stream, in one line
            raise
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(f"{folder}: its RNG or data position is unreadable ({type(exc).__name__}: "
                                  f"{exc}); the checkpoint was altered or is damaged: delete that checkpoint "
                                  "folder") from None
        log.info("resumed from %s at step %d", folder, state["step"])
    batches = StreamBatches(stream, config.workers, position, pin_memory=str(ranks.device).startswith("cuda"))
    return Resumed(state.get("step", 0), rng, batches, state)


def trainer_stream(config, processor, ranks, out: Path, fields: dict[str, str | None] | None = None,
                   checks: list[tuple[dict, str]] | None = None) -> TrainingStream:
    """DATA's shards with their counts (rank 0 remembers them in `out`), spread over the ranks.
    `fields`: {option: field} of the caption and the recaption (default: --caption-field,
    --recaption-field); `checks`: ({option: field}, note) pairs for require_fields (default: `fields`)."""
    fields = fields or {"--caption-field": config.caption_field, "--recaption-field": config.recaption_field}
    mix = getattr(config, "mix", None)  # --mix: its columns travel with each record
    columns = CaptionMix.parse(mix).columns if mix else ()
    shards = stream_shards(config.data, *fields.values(), out, save_counts=ranks.rank == 0, columns=columns)
    for checked, note in checks or [(fields, "")]:
        require_fields(shards, checked, note)
    return TrainingStream(spread(shards, ranks.world_size), config.batch_size, processor, seed=config.seed,
                          rank=ranks.rank, world_size=ranks.world_size, workers=max(1, config.workers),
                          shuffle_buffer=config.shuffle_buffer)


def finish_run(ranks, batches: StreamBatches, out: Path, save: Callable[[], None], summary: dict) -> None:
    """The loaders stopped; on rank 0 the final model saved and train_summary.json written."""
    batches.close()
    if ranks.rank == 0:
        save()
        write_json_atomic(LocalFileSystem(), str(out / "train_summary.json"), summary)
    ranks.finish()


@dataclass
class TrainLoop:
    """One optimizer's steps over a stream, with the logging and checkpoints every trainer shares.

    `parts(step)`: what a checkpoint saves beside the trainer state; `extra()`: the values the
    trainer resumes with; `after_step(step)`: the DiT's EMA; `progress(event)`: called on rank 0
    at each log line with {step, steps, loss, images_per_s, lr}."""

    ranks: object
    out: Path
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    steps: int
    log_every: int
    save_every: int
    parts: Callable[[int], list]
    extra: Callable[[], dict]
    rng: random.Random
    grad_clip: float | None = 1.0
    label: str = ""
    checkpoint_name: Callable[[int], str] = lambda step: f"checkpoint-{step:07d}"
    after_step: Callable[[int], None] | None = None
    progress: Callable[[dict], None] | None = None
    losses: list[float] = field(default_factory=list)
    images_per_s: float | None = None

    def run(self, batches: StreamBatches, step: int, step_loss: Callable[[dict], torch.Tensor]) -> int:
        """Train from `step` to `self.steps`; returns the step reached."""
        window_start, window_images = time.perf_counter(), 0
        while step < self.steps:
            batch = next(batches)
            loss = step_loss(batch)
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1
            if self.after_step:
                self.after_step(step)
            self.losses.append(loss.item())
            window_images += len(batch["keys"]) * self.ranks.world_size
            if step % self.log_every == 0 or step == self.steps:
                elapsed = time.perf_counter() - window_start
                self.images_per_s = window_images / elapsed if elapsed > 0 else None
                self._log(step)
                window_start, window_images = time.perf_counter(), 0
            if step % self.save_every == 0 or step == self.steps:
                self._save(batches, step)
        return step

    def _log(self, step: int) -> None:
        recent = self.losses[-self.log_every :]
        event = {"step": step, "steps": self.steps, "loss": sum(recent) / len(recent),
                 "images_per_s": self.images_per_s, "lr": self.scheduler.get_last_lr()[0]}
        if self.ranks.rank == 0:
            log.info("%sstep %d/%d loss %.4f lr %.2e %.1f images/s", self.label, step, self.steps,
                     event["loss"], event["lr"], self.images_per_s or 0)
            if self.progress:
                self.progress(event)

    def _save(self, batches: StreamBatches, step: int) -> None:
        rng_states = self.ranks.gather(rng_tensors(self.rng, self.ranks.device))  # every rank takes part
        data_state = checkpoint_state(batches, self.ranks)  # a collective too
        if self.ranks.rank == 0:
            save_checkpoint(self.out / self.checkpoint_name(step), self.parts(step), self.optimizer,
                            self.scheduler, step, rng_states, stream=data_state, **self.extra())
