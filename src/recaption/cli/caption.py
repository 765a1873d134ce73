"""`recap caption` and what sits beside it: `run` (download, then caption), `models`,
`convert-llava`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..config import CaptionConfig, ExecutorConfig, RunConfig
from ..models.registry import CONDITIONAL_PROMPT, MODEL_FAMILIES, PAPER_PROMPT
from ..readers import pattern_places
from ..spine.contract import open_output
from ..spine.errors import RecaptionError
from ..steps.run import RUN
from .common import clear_error, console, error_line, exit_code_of, print_caption_summary
from .download import run_download_command


def run_caption_command(inputs: list[str], caption_cfg: CaptionConfig, run_cfg: RunConfig,
                        columns=None, executor_cfg: ExecutorConfig | None = None) -> int:
    """Caption with a progress bar and print the summary; the exit code (2: a user error, or a
    wrong value or folder found once the run starts)."""
    from ..executors.run import run_caption
    from ..progress import RichProgress
    from ..readers import ColumnConfig, discover_shards
    from ..readers.webdataset import rows_without_image

    try:
        shards = discover_shards(inputs, columns or ColumnConfig())
    except RecaptionError as exc:  # InputError: no such file, nothing to caption
        error_line(exc)
        return 2
    progress = RichProgress()
    try:
        summary = run_caption(shards, caption_cfg, run_cfg, executor_cfg, progress)
    except (RecaptionError, FileNotFoundError, ValueError, RuntimeError) as exc:
        progress.stop()
        error_line(exc)
        return exit_code_of(exc)
    progress.stop()
    code = print_caption_summary(summary, run_cfg.output, caption_cfg.model)
    without_image = rows_without_image(shards)
    if without_image:  # the download's failures: in its parquet, never in the tar we read
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(without_image.items()))
        total = sum(without_image.values())
        console.print(f"note: the download parquet beside the tar shards also lists {total} "
                      f"{'row' if total == 1 else 'rows'} without an image ({kinds}): nothing to caption "
                      "for them", soft_wrap=True)
    if run_cfg.clip_model:
        from ..models.tiny_clip import builtin_clip_facts

        facts = builtin_clip_facts(run_cfg.clip_model)
        if facts:
            console.print(f"note: {facts[1]}", soft_wrap=True)
    return code


def caption_cmd(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="Tar/parquet shards, folders, globs, {00000..00009} ranges or fsspec URLs.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder (local or fsspec URL).")],
    model: Annotated[str, typer.Option(help="'tiny' (built-in, offline), a local model folder or a hub id.")] = "tiny",
    batch_size: Annotated[int, typer.Option(help="Images per generate call; 0: as many as GPU memory holds (backs off on out-of-memory).")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")] = "auto",
    prompt: Annotated[str, typer.Option(help="Instruction sent with each image.")] = PAPER_PROMPT,
    max_new_tokens: Annotated[int, typer.Option(help="Generation limit per caption (a pass that sets its own max_new_tokens, in a passes file or a preset, keeps it).")] = 128,
    conditional: Annotated[bool, typer.Option(help="Also write re_caption_condition_diverse_topk: a caption conditioned on the original.")] = False,
    conditional_prompt: Annotated[str, typer.Option(help="Prompt for --conditional; {caption} is replaced by the original caption.")] = CONDITIONAL_PROMPT,
    top_k: Annotated[int, typer.Option(help="Top-k sampling for --conditional (0 = greedy).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for --conditional sampling.")] = 0,
    passes: Annotated[list[str] | None, typer.Option("--pass", help="Another caption pass, NAME=PROMPT, into re_caption_<NAME> (with _length and flags); repeat for several; {caption} in PROMPT is the original caption.")] = None,
    passes_file: Annotated[str | None, typer.Option("--passes", help="YAML file: a list of passes, each {name, prompt, top_k (0: greedy), max_new_tokens; model (and engine, endpoint): a text LLM}; {re_caption} or {re_caption_NAME} in a prompt reads an earlier pass.")] = None,
    preset: Annotated[str | None, typer.Option(help="Caption passes shipped with recaption: paper, paper-v2, short, dense or fused (recap models lists them); --pass / --passes add to it.")] = None,
    workers: Annotated[int | None, typer.Option(help="Processes that read, decode and preprocess ahead of the model (default: 0 on CPU, up to 4 with a GPU).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo shards that are already complete.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Redo complete shards that hold caption_error rows (e.g. a server failed some requests).")] = False,
    image_col: Annotated[str | None, typer.Option(help="Parquet image column (default: image, jpg, png, ...); tar image extension.")] = None,
    caption_col: Annotated[str | None, typer.Option(help="Parquet caption column or tar .json field (default: caption, text, ...; tars use .txt).")] = None,
    url_col: Annotated[str, typer.Option(help="Column / .json field holding the URL.")] = "url",
    key_col: Annotated[str, typer.Option(help="Column / .json field holding the key.")] = "key",
    image_root: Annotated[str | None, typer.Option(help="Folder that image paths in a parquet are read from (default: the parquet file's folder); a path outside it is that row's read_error.")] = None,
    any_image_path: Annotated[bool, typer.Option(help="Let image paths in a parquet name any file this process can read (absolute paths, ../, other protocols); by default they stay inside --image-root.")] = False,
    max_image_bytes: Annotated[int, typer.Option(help="Largest image file / tar member read; bigger ones become rows with status too_large (checked before reading).")] = 64 * 1024 * 1024,
    placeholders: Annotated[str | None, typer.Option(help="A file of sha256 digests (one per line, # comments) of placeholder images ('image unavailable'): such rows get status placeholder and are not captioned.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Largest image in pixels (width x height); bigger ones become rows with status too_large (checked from the header, before decoding).")] = 89_478_485,
    processor_options: Annotated[list[str] | None, typer.Option("--processor-option", help="A setting of the model's processor, KEY=VALUE (value as JSON, else text); repeat for several, e.g. --processor-option max_pixels=1003520 for Qwen-VL (image tokens per image; recorded with the output).")] = None,
    attn_implementation: Annotated[str, typer.Option(help="transformers engine attention: sdpa, flash_attention_2 (needs flash-attn) or eager.")] = "sdpa",
    engine: Annotated[str, typer.Option(help="transformers (in-process), vllm (in-process, needs vLLM) or openai (OpenAI-compatible servers).")] = "transformers",
    endpoint: Annotated[list[str] | None, typer.Option(help="--engine openai: server URL (http://host:8000 or .../v1); repeat it or separate with commas for several.")] = None,
    concurrency: Annotated[int, typer.Option(help="--engine openai: requests in flight over all endpoints.")] = 64,
    request_timeout: Annotated[float, typer.Option(help="--engine openai: seconds per request, connect to last byte.")] = 120.0,
    retries: Annotated[int, typer.Option(help="--engine openai: retries on timeouts, connection errors, 429 and 5xx.")] = 4,
    api_key_env: Annotated[str, typer.Option(help="--engine openai: environment variable holding the API key (never logged).")] = "OPENAI_API_KEY",
    devices: Annotated[str | None, typer.Option(help="One worker process per device over disjoint shards, e.g. 0,1,2,3 or cuda:0,cuda:1 (default: every GPU when there are several).")] = None,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (Ray actors, one per GPU).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="--executor ray: cluster to join (auto, ray://host:10001); default: start a local Ray.")] = None,
    ray_workers: Annotated[int | None, typer.Option(help="--executor ray: caption workers (default: one per GPU share in the cluster).")] = None,
    ray_gpus_per_worker: Annotated[float, typer.Option(help="--executor ray: GPU share per worker; 0.5 or 0.25 packs small models.")] = 1.0,
    ray_cpus_per_worker: Annotated[float, typer.Option(help="--executor ray: CPUs per worker; each becomes one of its loader processes.")] = 1.0,
    score: Annotated[bool, typer.Option(help="Also fill the CLIP-score columns in the same pass (images decoded once).")] = False,
    clip_model: Annotated[str, typer.Option(help="CLIP for --score: hub id, local folder, open_clip:FOLDER or open_clip:ARCH:PRETRAINED, or tiny-clip (built in).")] = "openai/clip-vit-large-patch14",
    clip_long_text: Annotated[str, typer.Option(help="--score: captions longer than the CLIP's text window: truncate or chunk (sentences packed into windows, embeddings averaged).")] = "truncate",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show info lines and the libraries' warnings and progress bars.")] = False,
) -> None:
    """Caption every image of INPUTS into one Recap-DataComp-1B-schema parquet per shard."""
    # The options as typer parsed them, by name: the one way flags become settings (caption_settings).
    options = {k: v for k, v in ctx.params.items() if k not in ("inputs", "output", "verbose")}
    from ..config import caption_settings

    with clear_error(ValueError):  # a wrong value: one line naming it, exit 2
        settings = caption_settings(output, **options)
    code = run_caption_command(inputs, settings.caption, settings.run, settings.columns, settings.executor)
    raise typer.Exit(code)


def run_cmd(
    inputs: Annotated[list[str], typer.Argument(help="URL metadata (parquet, csv, tsv, jsonl, txt; .gz too).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Run folder: images/ (shards) and captions/ go inside.")],
    url_col: Annotated[str, typer.Option(help="Column holding the image URL.")] = "url",
    caption_col: Annotated[str | None, typer.Option(help="Column holding the original caption (default: the first of caption, text, ... found; '' for none).")] = None,
    shard_size: Annotated[int, typer.Option(help="Rows per shard.")] = 10_000,
    image_size: Annotated[int, typer.Option(help="Images are stored with this short side (keep_ratio).")] = 512,
    concurrency: Annotated[int, typer.Option(help="Connections open at once.")] = 64,
    allow_private_network: Annotated[bool, typer.Option(help="Allow hosts that resolve to private or loopback addresses.")] = False,
    timeout: Annotated[float, typer.Option(help="Download: seconds per attempt (connect, redirects and the whole body).")] = 10.0,
    retries: Annotated[int, typer.Option(help="Download: retries on 429, 5xx, connection errors and cut bodies.")] = 2,
    respect_opt_out: Annotated[bool, typer.Option(help="Download: skip images whose X-Robots-Tag says noai, noimageai, noindex, noimageindex or none.")] = True,
    keep_url_secrets: Annotated[bool, typer.Option(help="Download: store URLs as given, credentials and signed query values included.")] = False,
    model: Annotated[str, typer.Option(help="'tiny', a local model folder or a hub id.")] = "tiny",
    prompt: Annotated[str, typer.Option(help="Instruction sent with each image.")] = PAPER_PROMPT,
    passes_file: Annotated[str | None, typer.Option("--passes", help="YAML file: a list of caption passes, each {name, prompt, top_k (0: greedy), max_new_tokens; model: a text LLM}.")] = None,
    preset: Annotated[str | None, typer.Option(help="Caption passes shipped with recaption: paper, paper-v2, short, dense or fused (recap models lists them).")] = None,
    score: Annotated[bool, typer.Option(help="Also fill the CLIP-score columns while captioning (images decoded once).")] = False,
    clip_model: Annotated[str, typer.Option(help="CLIP for --score: hub id, local folder, open_clip:..., or tiny-clip (built in, offline).")] = "openai/clip-vit-large-patch14",
    max_bytes: Annotated[int, typer.Option(help="Download: largest image body accepted, in bytes.")] = 32 * 1024 * 1024,
    placeholder_min_urls: Annotated[int, typer.Option(help="Download: an image whose bytes came from this many distinct URLs of one host in a shard is a placeholder, not stored (0: never).")] = 5,
    placeholders: Annotated[str | None, typer.Option(help="A file of sha256 digests of known placeholder images: not stored by the download, not captioned.")] = None,
    max_pixels: Annotated[int, typer.Option(help="Largest image in pixels; bigger ones become rows with a status (download: failed_to_resize; caption: too_large).")] = 89_478_485,
    devices: Annotated[str | None, typer.Option(help="Caption on these GPUs, one model each: all, or a list such as 0,1.")] = None,
    workers: Annotated[int | None, typer.Option(help="Caption: loader processes (0: in this process; default: 0 on CPU, up to 4 on a GPU).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo complete shards of both halves (download and caption).")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Fetch again the rows that failed for a transient reason, and caption again the shards with caption_error rows.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per generate call (0: automatic on GPU).")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="Generation limit per caption (a pass that sets its own max_new_tokens, in a passes file or a preset, keeps it).")] = 128,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (both halves on a Ray cluster; same output).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="--executor ray: cluster to join (auto, ray://host:10001); default: start a local Ray.")] = None,
) -> None:
    """URLs to captions in one command: `recap download` into OUT/images, then `recap caption`
    into OUT/captions. Both halves resume, so rerunning the command finishes an interrupted run."""
    from ..downloads import DownloadConfig
    from ..downloads.config import DEFAULT_DISALLOWED

    base = output.rstrip("/")
    try:
        download_cfg = DownloadConfig(
            output=f"{base}/images", url_col=url_col, caption_col=caption_col, shard_size=shard_size,
            image_size=image_size, concurrency=concurrency, allow_private_network=allow_private_network,
            timeout=timeout, retries=retries, keep_url_secrets=keep_url_secrets, overwrite=overwrite,
            retry_failed=retry_failed, disallowed_directives=DEFAULT_DISALLOWED if respect_opt_out else (),
            max_bytes=max_bytes, max_pixels=max_pixels, placeholder_min_urls=placeholder_min_urls,
            placeholders=placeholders,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from ..config import caption_settings

    with clear_error(ValueError):  # the caption half through the one mapping of flags to settings
        settings = caption_settings(
            f"{base}/captions", model=model, batch_size=batch_size, device=device, max_new_tokens=max_new_tokens,
            prompt=prompt, passes_file=passes_file, preset=preset, score=score, clip_model=clip_model, overwrite=overwrite,
            retry_failed=retry_failed, max_pixels=max_pixels, devices=devices, workers=workers,
            executor=executor, ray_address=ray_address, placeholders=placeholders,
        )
    # The run folder itself through the output contract: not among the inputs, and holding
    # nothing but a run's images/ and captions/ (never an export's or a caption folder).
    with open_output(base, RUN, pattern_places(inputs)):
        code = run_download_command(inputs, download_cfg, executor, ray_address)
        if code == 2:
            raise typer.Exit(code)
        caption_code = run_caption_command([f"{base}/images"], settings.caption, settings.run,
                                           executor_cfg=settings.executor)
    raise typer.Exit(max(code, caption_code))


def convert_llava_cmd(
    src: Annotated[Path, typer.Argument(help="LLaVA-repo checkpoint folder (model_type llava_llama), e.g. tennant/llava-llama-3-8b-hqedit downloaded.")],
    dst: Annotated[Path, typer.Argument(help="Output folder, new or empty: a transformers LlavaForConditionalGeneration model.")],
    vision_tower: Annotated[str | None, typer.Option(help="CLIP folder or hub id for the vision tower (default: the checkpoint's mm_vision_tower).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder or hub id (default: the checkpoint's own).")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Accept pickle checkpoints (.bin); pickle can run code when loaded.")] = False,
) -> None:
    """Convert a LLaVA-repo checkpoint into a transformers model folder that `recap caption --model` loads."""
    from ..models.convert_llava import convert_llava

    out = convert_llava(src, dst, vision_tower, tokenizer, allow_pickle)  # ConversionError: a user error
    console.print(f"wrote {out}; caption with: recap caption SHARDS -o OUT --model {out}")


def models_cmd() -> None:
    """List the model families recaption knows and how it prompts them, and the caption presets."""
    table = Table(title="model families")
    for column in ("family", "model_type", "prompt format", "models"):
        table.add_column(column)
    for family in MODEL_FAMILIES:
        table.add_row(family.name, ", ".join(family.model_types), family.prompt_format, family.description)
    console.print(table)
    from ..presets import preset_columns, presets

    table = Table(title="caption presets (recap caption --preset NAME)")
    for column in ("preset", "writes", "what", "from", "file"):
        table.add_column(column, overflow="fold")  # the whole path: copy the file to change it
    for p in presets():
        table.add_row(p.name, ", ".join(preset_columns(p)), p.description, p.source, p.path)
    console.print(table)
