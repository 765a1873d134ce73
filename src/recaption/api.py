"""The Python API: one function per `recap` command, taking the same options under the same names
(`--key-col id` is `key_col="id"`). The CLI builds its settings through the same config classes,
so the two cannot drift apart."""

from __future__ import annotations

from typing import Any


def caption(inputs: list[str] | str, output: str, **options: Any):
    """Caption every image of `inputs` into one Recap-DataComp-1B-schema parquet per shard.

    Args:
        inputs: tar / parquet shards, image folders, globs, `{00000..00009}` ranges, fsspec URLs.
        output: the output folder (local path or fsspec URL). One run writes to it at a time.
        **options: any `recap caption` option, named as on the command line with `_` for `-`:
            model, prompt, max_new_tokens, batch_size, device, dtype, conditional, top_k, seed,
            engine, endpoint, devices, executor, image_col, caption_col, url_col, key_col,
            workers, overwrite, score, clip_model, ... (`recaption.config.caption_option_names()`
            lists them all).

    Returns:
        pipeline.RunSummary: per-shard results (`.failed` names broken shards), row counts.

    Raises:
        TypeError: an option that does not exist. ValueError: a wrong value or input.
        atomic.OutputLockedError: another run is writing to `output`.
    """
    from .config import caption_settings
    from .executors import run_caption
    from .readers import discover_shards

    settings = caption_settings(output, **options)
    shards = discover_shards([inputs] if isinstance(inputs, str) else list(inputs), settings.columns)
    return run_caption(shards, settings.caption, settings.run, settings.executor)


def download(inputs: list[str] | str, output: str, **options: Any):
    """Download URL metadata into image shards in img2dataset's layout (`recap download`).

    Options are `DownloadConfig`'s fields (url_col, caption_col, shard_size, resize, image_size,
    allow_private_network, retry_failed, overwrite, ...). Returns a `DownloadSummary`."""
    from .downloads import DownloadConfig
    from .downloads import download as _download

    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    return _download(inputs, DownloadConfig(output=output, **options))


def score(output: str, clip_model: str, device: str = "auto", batch_size: int = 64, overwrite: bool = False):
    """Fill re_clip_score / org_clip_score of finished shards in `output` (`recap score`).

    `clip_model`: a transformers CLIP/SigLIP folder or hub id, or `tiny-clip` (built in, shapes
    world only). Returns a `ScoreSummary`."""
    from .quality.clip import ClipScorer
    from .quality.score import score_output

    return score_output(output, ClipScorer(clip_model, device=device, batch_size=batch_size), overwrite)


def judge(output: str, **options: Any):
    """Rate original and new captions 1-5 with the paper's prompt (`recap judge`). Options are
    `JudgeConfig`'s fields: endpoints, model, fraction, seed, concurrency, ... Returns a
    `JudgeSummary`."""
    from .config import split_list
    from .quality.judge import JudgeConfig, judge_output

    if "endpoint" in options:
        options["endpoints"] = split_list(options.pop("endpoint"))
    return judge_output(output, JudgeConfig(**options))


def stats(output: str) -> dict:
    """The numbers of an output folder, as `recap stats --json` prints them."""
    from .quality.stats import collect

    return collect(output).summary()


def report(output: str, path: str | None = None, gallery: int = 24, seed: int = 0) -> str:
    """Write the self-contained HTML report of `output` (default `{output}/report.html`); returns
    its path."""
    from .quality.report import write_report

    path = path or f"{output.rstrip('/')}/report.html"
    write_report(output, path, gallery, seed)
    return path


def train_clip(data: list[str] | str, output: str, **options: Any) -> dict:
    """Train CLIP on a mix of original captions and recaptions (`recap train-clip`). Options are
    `ClipTrainConfig`'s fields (p, concat, steps, batch_size, lr, ...)."""
    from .training.clip_train import ClipTrainConfig
    from .training.clip_train import train_clip as _train_clip

    data = [data] if isinstance(data, str) else list(data)
    return _train_clip(ClipTrainConfig(data=data, output=output, **options))


def eval_retrieval(model: str, data: list[str] | str, **options: Any):
    """Image->text and text->image Recall@1/5/10 and zero-shot accuracy (`recap eval-retrieval`).
    Options: caption_field, label_field, device, batch_size, limit. Returns an `EvalResult`."""
    from .training.retrieval import evaluate

    return evaluate(model, [data] if isinstance(data, str) else list(data), **options)


__all__ = ["caption", "download", "eval_retrieval", "judge", "report", "score", "stats", "train_clip"]
