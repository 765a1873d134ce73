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


def _said(summary):
    """The summary, after one warning per failed shard (the CLI prints them as FAILED lines; here
    the `recaption` logger says them, so a script that ignores `.failed` still shows why)."""
    import logging

    for name, why in summary.errors.items():
        logging.getLogger("recaption").warning("FAILED %s: %s", name, why)
    return summary


def _config(cls, options: dict, **given):
    """`cls(**given, **options)`: an unknown option is a TypeError listing the real ones."""
    from dataclasses import fields

    from .config import check_option_names

    check_option_names(options, [f.name for f in fields(cls) if f.name not in given])
    return cls(**given, **options)


def caption(inputs: PathLike | list[PathLike], output: PathLike, **options: Any):
    """Caption every image of `inputs` (tar / parquet shards, image folders, globs, `{00000..00009}`
    ranges, fsspec URLs) into one Recap-DataComp-1B-schema parquet per shard in `output`.

    `options`: any `recap caption` option with `_` for `-` (`config.caption_option_names()` lists
    them). Returns a `spine.results.RunSummary`, as every command does: `.results` per shard,
    `.done`, `.skipped`, `.failed` (broken shards; `.errors` says why). Raises TypeError for an
    unknown option, ValueError for a wrong value or input, `spine.atomic.OutputLockedError` while
    another run writes to `output`."""
    from .config import caption_settings
    from .executors.run import run_caption
    from .readers import discover_shards

    settings = caption_settings(os.fspath(output), **options)
    shards = discover_shards(_paths(inputs), settings.columns)
    return _said(run_caption(shards, settings.caption, settings.run, settings.executor))


def download(inputs: PathLike | list[PathLike], output: PathLike, **options: Any):
    """Download URL metadata into image shards in img2dataset's layout (`recap download`).

    Options are `DownloadConfig`'s fields (url_col, caption_col, shard_size, resize, image_size,
    allow_private_network, retry_failed, overwrite, ...). Returns a `RunSummary`."""
    from .downloads import DownloadConfig
    from .downloads import download as _download

    return _said(_download(_paths(inputs), _config(DownloadConfig, options, output=os.fspath(output))))


def lookup(shards: PathLike, values: list[str], by: str = "key"):
    """Find samples of a download folder (`recap download`'s or img2dataset's layout) whose column
    `by` (key, url, uid, ...) holds one of `values`, without scanning the tars (`recap lookup`).
    Returns (found, missing): `readers.lookup.Found` rows, each with its tar members
    (`member.read()` is one seek), and the values found nowhere."""
    from .readers.lookup import lookup as _lookup

    return _lookup(os.fspath(shards), [str(v) for v in values], by=by)


def run(inputs: PathLike | list[PathLike], output: PathLike, **options: Any):
    """URLs to captions (`recap run`): download into `{output}/images`, then caption those shards
    into `{output}/captions`; both halves resume. Options are the download's (`DownloadConfig`'s
    fields) and the caption's (`caption`'s); those both take (overwrite, retry_failed,
    max_pixels) go to both. Returns (download RunSummary, caption RunSummary)."""
    from dataclasses import fields

    from .config import caption_option_names, check_option_names
    from .downloads import DownloadConfig
    from .readers import pattern_places
    from .spine.contract import open_output
    from .steps.run import CAPTIONS, IMAGES, RUN

    base = os.fspath(output).rstrip("/")
    fetching = {f.name for f in fields(DownloadConfig)} - {"output"}
    check_option_names(options, sorted(fetching | set(caption_option_names())))
    captioning = {k: v for k, v in options.items() if k in caption_option_names()}
    with open_output(base, RUN, pattern_places(_paths(inputs))):
        fetched = download(inputs, f"{base}/{IMAGES}", **{k: v for k, v in options.items() if k in fetching})
        captioned = caption([f"{base}/{IMAGES}"], f"{base}/{CAPTIONS}", **captioning)
    return fetched, captioned


def score(output: PathLike, clip_model: str | None = None, device: str = "auto", batch_size: int = 64,
          overwrite: bool = False, clip_long_text: str = "truncate", long_text: str | None = None):
    """Fill re_clip_score / org_clip_score of finished shards in `output` (`recap score`).

    `clip_model`: a transformers CLIP/SigLIP folder or hub id (default: the paper's CLIP-L),
    `tiny-clip` (built in, shapes world only), or an open_clip model (`open_clip:FOLDER`,
    `open_clip:ARCH:PRETRAINED`). `clip_long_text` (`long_text`, its earlier name): truncate or
    chunk captions over the CLIP's window.
    Returns a `RunSummary` (`.done`: shards scored, `.skipped`: scored already, `.errors`)."""
    from .quality.clip import DEFAULT_CLIP_MODEL
    from .quality.score import score_output
    from .quality.scorers import make_scorer

    scorer = make_scorer(clip_model or DEFAULT_CLIP_MODEL, device=device, batch_size=batch_size,
                         long_text=long_text or clip_long_text)
    return _said(score_output(os.fspath(output), scorer, overwrite))


def judge(output: PathLike, **options: Any):
    """Rate original and new captions 1-5 with the paper's prompt (`recap judge`). Options are
    `JudgeConfig`'s fields: endpoints, model, fraction, seed, concurrency, ... Returns a
    `RunSummary` (`.count("judged")`: rows rated, `.done`, `.skipped`, `.errors`)."""
    from .config import split_list
    from .quality.judge import JudgeConfig, judge_output

    if "endpoint" in options:
        options["endpoints"] = split_list(options.pop("endpoint"))
    return _said(judge_output(os.fspath(output), _config(JudgeConfig, options)))


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


def view(output: PathLike, images: PathLike | list[PathLike] | None = None, host: str = "127.0.0.1",
         port: int = 8765, *, on_ready=None) -> None:
    """Serve the read-only browser view of caption output `output` at http://host:port/ until
    interrupted (`recap view`): thumbnails from `images` (tar shards or folders of them; default:
    the inputs the shards' stats record), both captions, flags, scores, search, filters, sorts.
    `on_ready(url)` is called once it listens. The app itself: `recaption.viewer.app.make_app`."""
    from .viewer.serve import serve

    serve(os.fspath(output), _paths(images) if images else None, host, port, on_ready=on_ready)


def filter(output: PathLike, where: str, destination: PathLike, *, overwrite: bool = False):  # noqa: A001
    """`filter_output` under the command's name (`recap filter`)."""
    return filter_output(output, where, destination, overwrite=overwrite)


def filter_output(output: PathLike, where: str, destination: PathLike, *, overwrite: bool = False):
    """Keep the rows of caption output `output` where the DuckDB SQL condition `where` holds
    (e.g. `"re_clip_score > 25 and not re_degenerate"`; NULL drops a row, as false does; no file or
    network access), into the caption output folder `destination` (`recap filter`). A rerun skips
    shards filtered alike; `overwrite` redoes them.

    Returns a RunSummary (`.count("rows_in")`, `.count("rows_kept")`). Raises
    `steps.filter.FilterExpressionError` (a bad condition), `spine.contract.OutputError`
    (`destination` is, holds or lies inside `output`, or holds other files),
    `spine.results.ConfigMismatchError` (shards filtered otherwise there, without `overwrite`),
    `quality.outputs.NoOutputError` (no finished shards), `spine.atomic.OutputLockedError`."""
    from .steps.filter import filter_output as _filter_output

    return _said(_filter_output(os.fspath(output), where, os.fspath(destination), overwrite=overwrite))


def export(output: PathLike, destination: PathLike, *, images: PathLike | list[PathLike] | None = None,
           caption: str = "re_caption", seed: int = 0, overwrite: bool = False, format: str = "jpg"):
    """Write caption output `output` as WebDataset tars in `destination` (`recap export`): per
    finished shard `{name}.tar` of `{key}.jpg` (or `format`: png, webp; EXIF orientation applied;
    keep: each image's own bytes), `{key}.txt` (the chosen caption) and `{key}.json` (key, url,
    sha256, the captions, CLIP scores, caption_source).

    `images`: where the images are when not at the inputs `recap caption` recorded (joined by key).
    `caption`: a text column, `mix:p=P` (the original caption with probability P, else the
    recaption) or `mix:COLUMN=P,...` (summing to 1), drawn per (seed, key) so reruns write the
    same tars. Returns a RunSummary (`.status_counts["exported"]`, rows not exported by reason;
    `.errors`: shards whose images could not be read, the others still exported). Raises
    `steps.export.CaptionChoiceError` (no such text column, a malformed mix),
    `readers.InputError` (`images` match none) and, as `filter_output`, OutputError (`destination`
    is, holds or lies inside an input), ConfigMismatchError, NoOutputError, OutputLockedError."""
    from .steps.export import export as _export

    found = None if images is None else _paths(images)
    return _said(_export(os.fspath(output), os.fspath(destination), images=found, caption=caption,
                         seed=seed, overwrite=overwrite, format=format))


def make_shapes(output: PathLike, images: int = 10_000, seed: int = 0, image_size: int = 64,
                shard_size: int = 1000, start: int = 0, overwrite: bool = False) -> list:
    """Write shapes-world shards (`recap shapes`; `recaption.shapes` is the world's package):
    images, noisy alt-text, full descriptions, labels, in img2dataset's layout; the shard paths."""
    from .shapes import write_shapes_shards

    return write_shapes_shards(output, images, seed, image_size, shard_size, start, overwrite)


def train_captioner(data: PathLike | list[PathLike], output: PathLike, **options: Any) -> dict:
    """Train a LLaVA-style captioner in the paper's two stages (`recap train-captioner`). Options
    are `CaptionerTrainConfig`'s fields."""
    from .training.captioner_train import CaptionerTrainConfig
    from .training.captioner_train import train_captioner as _train_captioner

    config = _config(CaptionerTrainConfig, options, data=_paths(data), output=os.fspath(output))
    return _train_captioner(config)


def eval_captioner(model: str, images: int = 200, seed: int = 0, start: int = 200_000, device: str = "auto"):
    """Objects described with the right colour and shape, and a CHAIR-style hallucination rate, on
    held-out shapes-world images (`recap eval-captioner`)."""
    from .training.caption_eval import evaluate_captioner

    return evaluate_captioner(model, images, seed, start, device)


def train_dit(data: PathLike | list[PathLike], output: PathLike, **options: Any) -> dict:
    """Train Recap-DiT on the p mix of original captions and recaptions (`recap train-dit`).
    Options are `DitTrainConfig`'s fields."""
    from .dit.train import DitTrainConfig
    from .dit.train import train_dit as _train_dit

    return _train_dit(_config(DitTrainConfig, options, data=_paths(data), output=os.fspath(output)))


def generate(model: PathLike, prompts, output: PathLike, **options: Any) -> dict:
    """Images from prompts (a list, or a prompt file) with a trained Recap-DiT (`recap generate`).
    Options: column, seed, images_per_prompt, batch_size, guidance, steps, sampler, device,
    overwrite."""
    from .dit.generate import generate as _generate

    return _generate(model, prompts, output, **options)


def eval_t2i(generated: PathLike | list[PathLike], **options: Any) -> dict:
    """Prompt alignment of generated images (`recap eval-t2i`): the shapes-world checker, CLIP
    score, a Frechet distance to `reference` images. Options: reference, clip_model,
    feature_model, max_images, device."""
    from .dit.eval import eval_t2i as _eval_t2i

    if options.get("reference") is not None:
        options["reference"] = _paths(options["reference"])
    return _eval_t2i(_paths(generated), **options)


def run_demo(output: PathLike = "recap-demo", rows: int = 5, preset: str | None = None) -> int:
    """The built-in captioner on the bundled sample shard, offline (`recap demo`; `recaption.demo`
    is its module), with a caption preset's passes when given (`fused`: the chain with the built-in
    text LLM); the exit code."""
    from rich.console import Console

    from .demo import run_demo as _run_demo
    from .executors.run import run_caption
    from .readers import discover_shards

    def caption_shards(inputs, caption_config, run_config) -> int:
        summary = run_caption(discover_shards(inputs), caption_config, run_config)
        return 1 if summary.failed else 0

    from pathlib import Path

    return _run_demo(Path(output), Console(), rows, caption=caption_shards, preset=preset)


def convert_llava(src: PathLike, dst: PathLike, vision_tower: str | None = None, tokenizer: str | None = None,
                  allow_pickle: bool = False):
    """A LLaVA-repo checkpoint as a transformers model folder (`recap convert-llava`)."""
    from .models.convert_llava import convert_llava as _convert_llava

    return _convert_llava(src, dst, vision_tower, tokenizer, allow_pickle)


def model_families() -> list[dict]:
    """The model families recaption knows and how it prompts them (`recap models`; under
    another name, as `recaption.models` is the package of the models themselves)."""
    from dataclasses import asdict

    from .models.registry import MODEL_FAMILIES

    return [asdict(f) for f in MODEL_FAMILIES]


def caption_presets() -> list[dict]:
    """The caption presets shipped with recaption (`recap caption --preset NAME`; listed by
    `recap models`): name, description, source, file, the columns each writes."""
    from .presets import preset_columns, presets

    return [{"name": p.name, "description": p.description, "source": p.source, "path": p.path,
             "columns": preset_columns(p)} for p in presets()]


def train_clip(data: PathLike | list[PathLike], output: PathLike, **options: Any) -> dict:
    """Train CLIP on a mix of original captions and recaptions (`recap train-clip`). Options are
    `ClipTrainConfig`'s fields (p, concat, steps, batch_size, lr, ...)."""
    from .training.clip_train import ClipTrainConfig
    from .training.clip_train import train_clip as _train_clip

    return _train_clip(_config(ClipTrainConfig, options, data=_paths(data), output=os.fspath(output)))


def eval_retrieval(model: str, data: PathLike | list[PathLike], **options: Any):
    """Image->text and text->image Recall@1/5/10 and zero-shot accuracy (`recap eval-retrieval`).
    Options: caption_field, label_field, device, batch_size, limit. Returns an `EvalResult`."""
    from .training.retrieval import evaluate

    return evaluate(model, _paths(data), **options)
