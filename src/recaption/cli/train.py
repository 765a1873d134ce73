"""The shapes world and the trainers: `recap shapes`, `train-clip`, `train-captioner`,
`eval-captioner`, `eval-retrieval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import clear_error, console, print_result


def shapes_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the shards.")],
    images: Annotated[int, typer.Option(help="Samples to write (at least 1).")] = 10_000,
    seed: Annotated[int, typer.Option(help="World seed: sample i depends only on (seed, i).")] = 0,
    start: Annotated[int, typer.Option(help="First sample index (make disjoint splits with it).")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels (8 to 2048).")] = 64,
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 1000,
    overwrite: Annotated[bool, typer.Option(help="Replace the shapes-world shards already in --output (and remove those of the old set the new one does not replace); never other files.")] = False,
) -> None:
    """Write shapes-world shards (img2dataset layout): images, noisy alt-text, full descriptions, labels."""
    from ..shapes import write_shapes_shards

    paths = write_shapes_shards(output, images, seed, image_size, shard_size, start, overwrite)
    console.print(f"wrote {len(paths)} shard(s) of shapes-world samples to {output}")


def train_clip_cmd(
    ctx: typer.Context,
    data: Annotated[list[str], typer.Argument(help="`recap caption` output folders (original + recaption per row) or image-text shards.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for checkpoints and the final model.")],
    p: Annotated[float, typer.Option("--p", help="Probability of training on the ORIGINAL caption (the paper's p); else the recaption.")] = 0.5,
    concat: Annotated[bool, typer.Option(help="Train on 'original recaption' concatenated instead.")] = False,
    text_length: Annotated[int, typer.Option(help="Text tokens (the paper: 128).")] = 128,
    model: Annotated[str | None, typer.Option(help="CLIP folder to start from (default: a small CLIP built fresh).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 500,
    batch_size: Annotated[int, typer.Option(help="Pairs per step (per GPU under torchrun).")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW; warmup then cosine).")] = 5e-4,
    warmup: Annotated[int, typer.Option(help="Warmup steps.")] = 50,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (a rerun resumes).")] = 250,
    seed: Annotated[int, typer.Option(help="Seed for sampling batches and captions.")] = 0,
    caption_field: Annotated[str | None, typer.Option(help="Plain shards: field with the original caption.")] = None,
    recaption_field: Annotated[str | None, typer.Option(help="Plain shards: json field used as the recaption.")] = None,
    width: Annotated[int, typer.Option(help="Fresh models: hidden size of both towers.")] = 128,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    workers: Annotated[int, typer.Option(help="Loader processes that read, decode and preprocess (per GPU under torchrun; 0: in this process). Resume with the same number.")] = 2,
    shuffle_buffer: Annotated[int, typer.Option(help="Samples each loader process shuffles among (encoded images held in memory).")] = 1000,
    recipe: Annotated[str, typer.Option(help="recap (the paper: original with probability p, else the recaption) or clips (each image against its alt-text and a partial recaption, two losses).")] = "recap",
    partial_words: Annotated[int, typer.Option(help="--recipe clips: longest block of a recaption sentence kept (block masking).")] = 32,
    mix: Annotated[str | None, typer.Option(help="Instead of --p: probabilities of caption columns summing to 1, e.g. mix:re_caption=0.5,org_caption=0.3,re_caption_short=0.2 (any re_caption_* pass column; plain shards: json fields).")] = None,
) -> None:
    """Train CLIP contrastively on a mix of original captions and recaptions (Recap-CLIP, or the CLIPS recipe)."""
    options = ctx.params  # every option is a ClipTrainConfig field of the same name
    from ..training.clip_train import ClipTrainConfig, train_clip

    try:
        config = ClipTrainConfig(**options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with clear_error(ValueError):
        result = train_clip(config)
    console.print(f"trained {result['steps']} steps on {result['pairs']} pairs; final loss {result['losses'][-1]:.4f}" if result["losses"] else "nothing to train")


def train_captioner_cmd(
    ctx: typer.Context,
    data: Annotated[list[str], typer.Argument(help="Image shards with a short caption and a detailed description (shapes world: recap shapes).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for checkpoints and the final model.")],
    model: Annotated[str | None, typer.Option(help="LlavaForConditionalGeneration folder to start from (default: a small one built fresh).")] = None,
    vision_tower: Annotated[str | None, typer.Option(help="Fresh models: CLIP folder whose vision tower to use (e.g. from recap train-clip).")] = None,
    stage1_field: Annotated[str | None, typer.Option(help="Stage 1 caption field (default: the shard's caption).")] = None,
    stage2_field: Annotated[str, typer.Option(help="Stage 2 target: json field with the detailed description.")] = "description",
    stage1_steps: Annotated[int, typer.Option(help="Stage 1 steps (projector only).")] = 200,
    stage2_steps: Annotated[int, typer.Option(help="Stage 2 steps (projector + language model).")] = 1500,
    batch_size: Annotated[int, typer.Option(help="Conversations per step (per GPU under torchrun).")] = 32,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (a rerun resumes).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    width: Annotated[int, typer.Option(help="Fresh models: language model width.")] = 192,
    layers: Annotated[int, typer.Option(help="Fresh models: language model layers.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    workers: Annotated[int, typer.Option(help="Loader processes that read, decode and preprocess (per GPU under torchrun; 0: in this process). Resume with the same number.")] = 2,
    shuffle_buffer: Annotated[int, typer.Option(help="Samples each loader process shuffles among (encoded images held in memory).")] = 1000,
) -> None:
    """Train a captioner with the LLaVA-1.5 recipe (stage 1 projector, stage 2 projector + LM; vision frozen)."""
    options = ctx.params  # every option is a CaptionerTrainConfig field of the same name
    from ..training.captioner_train import CaptionerTrainConfig, train_captioner

    try:
        config = CaptionerTrainConfig(**options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    # The library's input errors (InputError, TrainingInputError, CheckpointError) are user errors;
    # a ValueError from deeper down is one line too, as before.
    with clear_error(ValueError):
        result = train_captioner(config)
    console.print(f"trained on {result['examples']} examples; saved to {output}")


def eval_captioner_cmd(
    model: Annotated[str, typer.Argument(help="Captioner folder, or tiny.")],
    images: Annotated[int, typer.Option(help="Held-out shapes-world images.")] = 200,
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    start: Annotated[int, typer.Option(help="First sample index (keep it outside the training range).")] = 200_000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")] = False,
) -> None:
    """Share of objects described with the right colour and shape, and a CHAIR-style hallucination rate."""

    from ..training.caption_eval import evaluate_captioner

    with clear_error(ValueError):
        result = evaluate_captioner(model, images, seed, start, device)
    print_result(result, as_json, "recap eval-captioner")


def eval_retrieval_cmd(
    model: Annotated[str, typer.Argument(help="CLIP / SigLIP model folder or hub id.")],
    data: Annotated[list[str], typer.Argument(help="Image-text shards (e.g. COCO / Flickr30k test in WebDataset, or a shapes test split).")],
    caption_field: Annotated[str | None, typer.Option(help="Field with the caption to retrieve (default: the shard's caption; shapes: description).")] = None,
    label_field: Annotated[str | None, typer.Option(help="Field with a class label, for zero-shot accuracy.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate on the first N pairs.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Image->text and text->image Recall@1/5/10, and zero-shot classification accuracy."""
    import json

    from ..training.retrieval import evaluate

    with clear_error(ValueError):
        result = evaluate(model, data, caption_field, label_field, device=device, limit=limit)
    if as_json:
        print(json.dumps({"n": result.n, "without_caption": result.without_caption, **result.metrics}, indent=2))
        return
    left_out = f" ({result.without_caption} samples without a caption left out)" if result.without_caption else ""
    table = Table(title=f"retrieval on {result.n} image-text pairs{left_out}", show_header=False)
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
