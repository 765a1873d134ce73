"""The Python API: one function per `recap` command, taking the same options under the same names
(`--key-col id` is `key_col="id"`). The CLI builds its settings through the same config classes,
so the two cannot drift apart."""

from __future__ import annotations

import os
from typing import Any

PathLike = str | os.PathLike


def _paths(value) -> list[str]:
    """One path or URL, or several: as the strings the readers take."""
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def caption(inputs: PathLike | list[PathLike], output: PathLike, **options: Any):
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
        RunSummary (every command returns one, `recaption.spine.results`): `.results` per shard
        (name, source, outcome, rows, status_counts, counts, error), `.done`, `.skipped`,
        `.failed` (broken shards; `.errors` says why), row counts.

    Raises:
        TypeError: an option that does not exist. ValueError: a wrong value or input.
        atomic.OutputLockedError: another run is writing to `output`.
    """
    from .config import caption_settings
    from .executors.run import run_caption
    from .readers import discover_shards

    settings = caption_settings(os.fspath(output), **options)
    shards = discover_shards(_paths(inputs), settings.columns)
    return run_caption(shards, settings.caption, settings.run, settings.executor)


def download(inputs: PathLike | list[PathLike], output: PathLike, **options: Any):
    """Download URL metadata into image shards in img2dataset's layout (`recap download`).

    Options are `DownloadConfig`'s fields (url_col, caption_col, shard_size, resize, image_size,
    allow_private_network, retry_failed, overwrite, ...). Returns a `RunSummary`."""
    from .downloads import DownloadConfig
    from .downloads import download as _download

    return _download(_paths(inputs), DownloadConfig(output=os.fspath(output), **options))


def score(output: PathLike, clip_model: str | None = None, device: str = "auto", batch_size: int = 64,
          overwrite: bool = False, long_text: str = "truncate"):
    """Fill re_clip_score / org_clip_score of finished shards in `output` (`recap score`).

    `clip_model`: a transformers CLIP/SigLIP folder or hub id (default: the paper's CLIP-L),
    `tiny-clip` (built in, shapes world only), or an open_clip model (`open_clip:FOLDER`,
    `open_clip:ARCH:PRETRAINED`). `long_text`: truncate or chunk captions over the CLIP's window.
    Returns a `RunSummary` (`.done`: shards scored, `.skipped`: scored already, `.errors`)."""
    from .quality.clip import DEFAULT_CLIP_MODEL
    from .quality.score import score_output
    from .quality.scorers import make_scorer

    scorer = make_scorer(clip_model or DEFAULT_CLIP_MODEL, device=device, batch_size=batch_size,
                         long_text=long_text)
    return score_output(os.fspath(output), scorer, overwrite)


def judge(output: PathLike, **options: Any):
    """Rate original and new captions 1-5 with the paper's prompt (`recap judge`). Options are
    `JudgeConfig`'s fields: endpoints, model, fraction, seed, concurrency, ... Returns a
    `RunSummary` (`.count("judged")`: rows rated, `.done`, `.skipped`, `.errors`)."""
    from .config import split_list
    from .quality.judge import JudgeConfig, judge_output

    if "endpoint" in options:
        options["endpoints"] = split_list(options.pop("endpoint"))
    return judge_output(os.fspath(output), JudgeConfig(**options))


def stats(output: PathLike) -> dict:
    """The numbers of an output folder, as `recap stats --json` prints them."""
    from .quality.stats import collect

    return collect(os.fspath(output)).summary()


def report(output: PathLike, report: PathLike | None = None, gallery: int = 24, seed: int = 0) -> str:
    """Write the self-contained HTML report of the caption output folder `output` to `report`
    (`recap report OUTPUT -o REPORT`; default `{output}/report.html`); returns its path."""
    from .quality.report import write_report
    from .spine.contract import REPORT_NAME

    output = os.fspath(output)
    path = os.fspath(report) if report is not None else f"{output.rstrip('/')}/{REPORT_NAME}"
    write_report(output, path, gallery, seed)
    return path


def filter_output(output: PathLike, where: str, destination: PathLike, *, overwrite: bool = False):
    """Keep the rows of caption output `output` where the SQL condition `where` holds, into the
    caption output folder `destination` (`recap filter OUTPUT --where "..." -o DESTINATION`).

    `where` is a DuckDB SQL condition over the output's columns, e.g.
    `"re_clip_score > 25 and not re_degenerate"`; it can read nothing but the rows (file and
    network access are off). Rows where it is NULL are dropped (SQL semantics), like those where
    it is false. A rerun skips shards already filtered alike; `overwrite` redoes them.

    Returns:
        RunSummary: `.results` (per shard: `counts` rows_in and rows_kept), `.count("rows_in")`,
        `.count("rows_kept")`, `.done`, `.skipped`; `steps.filter.filter_lines` as the CLI prints it.

    Raises:
        steps.filter.FilterExpressionError: a condition that is empty, holds `;`, does not parse or
            bind, or reads files (one line naming the columns).
        spine.contract.OutputError: `destination` is, holds or lies inside `output`, or holds other
        files or another command's output. spine.results.ConfigMismatchError: it holds shards
        filtered otherwise (without `overwrite`).
        quality.outputs.NoOutputError: `output` holds no finished shards.
        atomic.OutputLockedError: another run is writing to `destination`.
    """
    from .steps.filter import filter_output as _filter_output

    return _filter_output(os.fspath(output), where, os.fspath(destination), overwrite=overwrite)


def export(output: PathLike, destination: PathLike, *, images: PathLike | list[PathLike] | None = None,
           caption: str = "re_caption", seed: int = 0, overwrite: bool = False, format: str = "jpg"):
    """Write caption output `output` as WebDataset tars in `destination`, one `{name}.tar` per
    finished shard (`recap export OUTPUT -o DESTINATION --caption ...`): `{key}.jpg` (or `format`:
    png, webp; `keep`: each image's own bytes), `{key}.txt` (the chosen caption), `{key}.json`
    (key, url, sha256, the captions, CLIP scores, caption_source).

    Args:
        images: where the images are (tar / parquet shards, folders, globs), when not at the
            inputs `recap caption` recorded; joined to the rows by key.
        caption: a text column of the output (`re_caption`, `org_caption`, `re_caption_...`), or
            `mix:p=P`: the original caption with probability P, else the recaption, fixed per
            (seed, key) so reruns write the same tars.
        seed: the mix's seed.
        format: jpg, png or webp (one format for the whole export, EXIF orientation applied), or
            keep (each image's bytes as they are).
        overwrite: redo shards already exported (a rerun otherwise skips those exported alike).

    Returns:
        RunSummary: `.results` (per shard: `status_counts` rows exported and not by reason,
        `counts["rows_in"]`), `.status_counts["exported"]`, `steps.export.not_exported`, `.errors`
        (shards whose images could not be read; the others are still exported);
        `steps.export.export_lines` as the CLI prints it.

    Raises:
        steps.export.CaptionChoiceError: `caption` is no text column of the output, or a malformed mix.
        spine.contract.OutputError: `destination` is, holds or lies inside an input, or holds other
        files or another command's output. spine.results.ConfigMismatchError: it holds shards
        exported otherwise (without `overwrite`).
        quality.outputs.NoOutputError, readers.InputError: no finished shards; `images` match none.
        atomic.OutputLockedError: another run is writing to `destination`.
    """
    from .steps.export import export as _export

    found = None if images is None else _paths(images)
    return _export(os.fspath(output), os.fspath(destination), images=found, caption=caption, seed=seed,
                   overwrite=overwrite, format=format)


def train_clip(data: PathLike | list[PathLike], output: PathLike, **options: Any) -> dict:
    """Train CLIP on a mix of original captions and recaptions (`recap train-clip`). Options are
    `ClipTrainConfig`'s fields (p, concat, steps, batch_size, lr, ...)."""
    from .training.clip_train import ClipTrainConfig
    from .training.clip_train import train_clip as _train_clip

    return _train_clip(ClipTrainConfig(data=_paths(data), output=os.fspath(output), **options))


def eval_retrieval(model: str, data: PathLike | list[PathLike], **options: Any):
    """Image->text and text->image Recall@1/5/10 and zero-shot accuracy (`recap eval-retrieval`).
    Options: caption_field, label_field, device, batch_size, limit. Returns an `EvalResult`."""
    from .training.retrieval import evaluate

    return evaluate(model, _paths(data), **options)
