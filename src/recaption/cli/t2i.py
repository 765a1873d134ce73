"""`recap train-dit`, `recap generate`, `recap eval-t2i`: the text-to-image half (Recap-DiT)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import clear_error, console, print_result


def train_dit_cmd(
    ctx: typer.Context,
    data: Annotated[list[str], typer.Argument(help="Image shards with an original caption and a recaption (shapes world: recap shapes), or `recap caption` output folders.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for checkpoints and the final model (a rerun resumes).")],
    p: Annotated[float, typer.Option("--p", help="Probability of training on the ORIGINAL caption (the paper's p); else the recaption.")] = 0.5,
    text_encoder: Annotated[str, typer.Option(help="Frozen text encoder: tiny-clip (built in) or any transformers CLIP folder / hub id.")] = "tiny-clip",
    vae: Annotated[str | None, typer.Option(help="AutoencoderKL folder: train in its latent space (the paper: 256 px, f=8); default: pixel space.")] = None,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 64,
    patch_size: Annotated[int, typer.Option(help="DiT patch size (in pixel space keep width >= patch*patch*3).")] = 4,
    layers: Annotated[int, typer.Option(help="Transformer blocks.")] = 6,
    heads: Annotated[int, typer.Option(help="Attention heads (width = heads x head-dim).")] = 4,
    head_dim: Annotated[int, typer.Option(help="Width of each attention head.")] = 32,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Images per step (per GPU under torchrun).")] = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate, constant (the paper: 1e-4).")] = 1e-4,
    caption_dropout: Annotated[float, typer.Option(help="Share of steps with an empty caption (classifier-free guidance).")] = 0.1,
    prediction_type: Annotated[str, typer.Option(help="v_prediction or epsilon (docs/dit.md says why v is the default).")] = "v_prediction",
    snr_gamma: Annotated[float | None, typer.Option(help="Min-SNR-gamma loss weighting (5 is the usual choice); default: plain MSE.")] = None,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed for batches, noise and caption draws.")] = 0,
    caption_field: Annotated[str | None, typer.Option(help="Plain shards: field with the original caption (default: the .txt).")] = None,
    recaption_field: Annotated[str | None, typer.Option(help="Plain shards: json field used as the recaption (the shapes world's: description).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    workers: Annotated[int, typer.Option(help="Loader processes that read, decode and crop (per GPU under torchrun; 0: in this process). Resume with the same number.")] = 2,
    shuffle_buffer: Annotated[int, typer.Option(help="Samples each loader process shuffles among.")] = 1000,
    mix: Annotated[str | None, typer.Option(help="Instead of --p: probabilities of caption columns summing to 1, e.g. mix:re_caption=0.5,org_caption=0.3,re_caption_short=0.2 (any re_caption_* pass column; plain shards: json fields).")] = None,
) -> None:
    """Train a text-conditioned diffusion transformer (diffusers' PixArt blocks) on a mix of
    original captions and recaptions."""
    options = ctx.params  # every option is a DitTrainConfig field of the same name
    from ..dit.train import DitTrainConfig, train_dit

    with clear_error(ValueError):
        result = train_dit(DitTrainConfig(**options))
    if result["losses"]:
        console.print(f"trained {result['steps']} steps on {result['pairs']} images; final loss "
                      f"{result['losses'][-1]:.4f}; {result['images_per_s']:.1f} images/s -> {output}")
    else:
        console.print(f"nothing to train: {output} already holds {result['steps']} steps")
    print_caption_draws(result["captions"], p)


def print_caption_draws(captions: dict[str, int], p: float) -> None:
    """Which caption each draw trained with, and a warning when the data kept the mix from p."""
    from ..dit.data import ORIGINAL_NO_RECAPTION, RECAPTION_NO_ORIGINAL, UNCAPTIONED

    console.print("caption draws: " + ", ".join(f"{kind} {n}" for kind, n in captions.items() if n), soft_wrap=True)
    short = {kind: captions.get(kind, 0) for kind in (ORIGINAL_NO_RECAPTION, RECAPTION_NO_ORIGINAL, UNCAPTIONED)}
    if any(short.values()):
        total = sum(captions.values())
        console.print(f"[yellow]warning:[/yellow] {sum(short.values())} of {total} draws could not use the caption "
                      f"p={p:g} chose (samples without it): " + ", ".join(f"{k} {n}" for k, n in short.items() if n),
                      soft_wrap=True)


def generate_cmd(
    model: Annotated[str, typer.Argument(help="A folder written by recap train-dit.")],
    prompts: Annotated[str, typer.Argument(help="Prompts: a .txt (one per line, UTF-8), .jsonl, a parquet file or caption output folder (with --column), or one prompt in quotes. Taken as a file when it exists, or has no spaces and ends in .txt/.jsonl/.json/.parquet or /.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for the generated shard (img2dataset layout: score, report and eval-t2i read it); new, empty, or one generate wrote.")],
    column: Annotated[str | None, typer.Option(help="Parquet column or .jsonl field holding the prompts (e.g. re_caption).")] = None,
    seed: Annotated[int, typer.Option(help="Seed: image i's noise depends only on (seed, i).")] = 0,
    images_per_prompt: Annotated[int, typer.Option(help="Images per prompt.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Images per denoising batch.")] = 32,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale, a number >= 0: 1 = no guidance (the plain conditional model), 0 = unconditional (the prompt ignored), above 1 = follow the prompt more closely (the paper: 10).")] = 4.0,
    steps: Annotated[int, typer.Option(help="Sampling steps, at most the model's train timesteps (the paper: 250 DDPM).")] = 50,
    sampler: Annotated[str, typer.Option(help="ddim, dpm (DPM-Solver++) or ddpm.")] = "ddim",
    overwrite: Annotated[bool, typer.Option(help="Replace the shards of an earlier recap generate in --output (a folder holding generate.json; never other data).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")] = False,
) -> None:
    """Generate images from prompts with a trained Recap-DiT, plus a contact sheet."""
    from ..dit.generate import generate, looks_like_prompt_file

    source = prompts if looks_like_prompt_file(prompts) else [prompts]
    bar, task = None, None

    def progress(done: int, total: int) -> None:
        # Started once every input has been checked and the model loaded, and only on a
        # terminal: a refusal stays the only line.
        nonlocal bar, task
        if bar is None:
            from rich.progress import Progress

            bar = Progress(console=console, transient=True)
            bar.start()
            task = bar.add_task("generating", total=total)
        bar.update(task, completed=done, total=total)

    with clear_error(ValueError):
        try:
            result = generate(model, source, output, column=column, seed=seed, images_per_prompt=images_per_prompt,
                              batch_size=batch_size, guidance=guidance, steps=steps, sampler=sampler, device=device,
                              overwrite=overwrite, progress=progress if console.is_terminal else None)
        finally:
            if bar is not None:
                bar.stop()
    print_result(result, as_json, "recap generate")


def eval_t2i_cmd(
    generated: Annotated[list[str], typer.Argument(help="Shards written by recap generate (folders or .tar files; several folders may each hold 00000.tar). Images without generate's metadata are scored too, and counted apart.")],
    reference: Annotated[list[str] | None, typer.Option(help="Reference image shards for the Frechet distance.")] = None,
    clip_model: Annotated[str, typer.Option(help="Dual encoder for the CLIP score (tiny-clip, a folder or hub id).")] = "tiny-clip",
    feature_model: Annotated[str | None, typer.Option(help="Encoder whose image features the Frechet distance uses (default: --clip-model's; never Inception).")] = None,
    max_images: Annotated[int | None, typer.Option(help="Read at most this many images (at least 1; default: all).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
) -> None:
    """Prompt alignment of generated images: the shapes-world checker (no model), CLIP score,
    and a Frechet distance to reference images in a named encoder's feature space."""
    from ..dit.eval import eval_t2i

    with clear_error(ValueError):
        if feature_model and not reference:  # it would be loaded for nothing, and say nothing
            raise ValueError("--feature-model is for the Frechet distance, which needs --reference images")
        report = eval_t2i(generated, reference, clip_model=clip_model, feature_model=feature_model,
                          max_images=max_images, device=device)
    print_result(report, as_json, "recap eval-t2i")
