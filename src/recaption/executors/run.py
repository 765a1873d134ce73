"""Running a caption step on an executor: the checks that take seconds (model, devices, CLIP),
the output contract, then the executor named by --executor (see executors/__init__.py)."""

from __future__ import annotations

from ..captioning.pipeline import CAPTION
from ..config import CaptionConfig, ExecutorConfig, RunConfig
from ..hardware import check_devices
from ..readers import Shard, input_locations
from ..readers.changes import forget_vanished_slices
from ..spine.contract import open_output
from ..spine.results import Progress, RunSummary
from . import executor_class, executor_module


def visible_gpus() -> list[str]:
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def devices_to_use(caption: CaptionConfig, executor: ExecutorConfig) -> list[str]:
    """Explicit --devices, else every visible GPU when there are several and --device is auto."""
    if executor.devices:
        return list(executor.devices)
    if caption.engine == "transformers" and caption.device == "auto":
        gpus = visible_gpus()
        if len(gpus) > 1:
            return gpus
    return []


def check_run(caption: CaptionConfig, run: RunConfig, executor: ExecutorConfig) -> None:
    """What can be checked in seconds, before the output lock, workers and model loading (the
    model, the devices, the CLIP of --score, the executor's name): each failure one ValueError line."""
    from ..engines import engine_class, text_config, text_engine_class
    from ..models.loading import check_model

    executor_module(executor.executor)

    if engine_class(caption.engine).loads_weights:
        check_model(caption.model)
        if executor.executor == "local":  # Ray places its workers on the cluster's GPUs
            if executor.devices:
                check_devices(list(executor.devices), "--devices")
            elif caption.device != "auto":
                check_devices([caption.device], "--device")
    for p in caption.caption_passes:  # the text LLMs of text-only passes, as the captioner
        if p.text_only:
            settings = text_config(caption, p)
            if text_engine_class(settings.engine, p.name).loads_weights:
                check_model(settings.model)
            elif not settings.server.endpoints:
                raise ValueError(f"pass {p.name}: engine openai needs a server: give the pass endpoint: URL "
                                 "or the run --endpoint URL")
    if run.clip_model:  # a CLIP that is not here fails now, not after the captioner has loaded
        from ..quality.scorers import check_scorer

        check_scorer(run.clip_model)


def run_caption(shards: list[Shard], caption: CaptionConfig, run: RunConfig,
                executor: ExecutorConfig | None = None, progress: Progress | None = None) -> RunSummary:
    """Caption `shards` into `run.output` through the output contract (spine/contract.py: not
    among the inputs, not another step's folder, one run at a time, OS errors as one line),
    whichever executor runs it."""
    executor = executor or ExecutorConfig()
    check_run(caption, run, executor)
    with open_output(run.output, CAPTION, input_locations(shards)) as out:
        forget_vanished_slices(shards, out)  # once, with every shard of the run
        return executor_class(executor.executor)(caption, run, executor, progress).run(shards)
