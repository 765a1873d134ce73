"""`recap train-clip`: contrastive training of a transformers CLIPModel on original/recaption mixes.

Each sample uses its ORIGINAL caption with probability p, else its recaption, drawn anew each time
it is seen (the paper's Recap-CLIP); `concat` trains on both joined, `mix` draws any caption
columns, `recipe="clips"` trains the CLIPS way (clips_recipe.py). `load_pairs` (everything in
memory) is kept for the benchmarks that compare the stream with it.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .captions import check_caption_sources, check_mix_settings, is_caption_output
from .checkpoints import save_final
from .clips_recipe import clips_loss, clips_texts
from .data import Pair, check_fields, image_text_pairs, recaptioned_pairs
from .inputs import TrainingInputError, check_dual_encoder, load_start, require_counts
from .loop import TrainLoop, finish_run, resume, settings_of, train_into, trainer_stream

log = logging.getLogger(__name__)


@dataclass
class ClipTrainConfig:
    data: list[str]
    output: str
    model: str | None = None  # a CLIP folder to start from; None: a small CLIP built fresh
    p: float = 0.5  # probability of the ORIGINAL caption (the paper's p)
    concat: bool = False
    text_length: int = 128
    image_size: int = 64  # fresh models only
    width: int = 128  # fresh models only: hidden size of both towers
    layers: int = 2
    steps: int = 500
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 50
    save_every: int = 250
    seed: int = 0
    caption_field: str | None = None  # plain shards: where the original caption is
    recaption_field: str | None = None  # plain shards: a json field to use as the recaption
    device: str = "auto"
    log_every: int = 50
    workers: int = 2  # loader processes that decode and preprocess (0: in this process)
    shuffle_buffer: int = 1000  # samples each loader worker shuffles among (encoded images)
    recipe: str = "recap"  # recap: the paper's p mixing; clips: alt-text + partial recaption, two losses
    mix: str | None = None  # a mix over any caption columns instead of p (training/captions.CaptionMix)
    partial_words: int = 32  # clips: the longest block of a recaption sentence kept

    def __post_init__(self):
        require_counts(self, ("batch_size", "save_every", "log_every", "text_length", "width", "layers",
                              "partial_words"), ("steps", "warmup", "workers", "shuffle_buffer"))
        if self.recipe not in ("recap", "clips"):
            raise ValueError(f"--recipe {self.recipe}: choose recap or clips")
        if self.recipe == "clips" and self.concat:
            raise ValueError("--concat is a recap-recipe setting; --recipe clips uses both captions already")
        if self.mix is not None and (self.concat or self.recipe != "recap"):
            raise ValueError("--mix draws one caption per sample: it goes with --recipe recap, without "
                             "--concat")
        check_mix_settings(self)


def choose_caption(pair: Pair, p: float, concat: bool, rng: random.Random) -> tuple[str, str]:
    """(the caption a sample trains with this time, where it came from: original, recaption,
    both (--concat), or fallback: the drawn one is missing, so whichever exists)."""
    if concat:
        return " ".join(t for t in (pair.org, pair.re) if t), "both"
    use_original = rng.random() < p
    text = pair.org if use_original else pair.re
    if text:
        return text, "original" if use_original else "recaption"
    return pair.re or pair.org or "", "fallback"


def load_pairs(config: ClipTrainConfig) -> list[Pair]:
    """Every pair decoded, in memory (the DiT trainer's data; train_clip streams)."""
    pairs: list[Pair] = []
    plain: list[str] = []  # the items that are shards, not caption output
    for item in config.data:
        if is_caption_output(item):
            pairs += list(recaptioned_pairs(item))
        else:
            plain.append(item)
    if plain:
        from_shards = list(image_text_pairs(plain, config.caption_field,
                                            recaption_field=config.recaption_field))
        check_fields(from_shards, plain, caption=config.caption_field, recaption=config.recaption_field)
        pairs += from_shards
    if not pairs:
        raise TrainingInputError(f"no readable image-text pairs in {', '.join(config.data)}")
    return pairs


def fresh_clip(config: ClipTrainConfig):
    """A small CLIP for the shapes world: the tiny tokenizer (begin/end tokens added), a CLIP
    image processor at `image_size`, text positions = text_length."""
    from ..models.tiny_clip import small_clip

    return small_clip(width=config.width, intermediate=4 * config.width, heads=max(1, config.width // 32),
                      layers=config.layers, image_size=config.image_size,
                      patch_size=max(4, config.image_size // 8), projection_dim=config.width,
                      text_length=config.text_length, seed=config.seed)


# What a resumed run must share with the run it continues (--steps may grow; the data stream's
# settings are checked by its position, training/stream.py).
RECIPE_FIELDS = ("recipe", "p", "concat", "partial_words", "text_length", "lr", "weight_decay", "warmup",
                 "caption_field", "recaption_field", "mix")


def train_clip(config: ClipTrainConfig) -> dict:
    """Train (or resume) into config.output; OS errors there are one line (the output contract)."""
    return train_into("train-clip", config, _train_clip)


def _train_clip(config: ClipTrainConfig, out: Path, resume_from: str | None, ranks) -> dict:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, get_cosine_schedule_with_warmup

    uses = ("--recipe clips contrasts each image with its recaption too" if config.recipe == "clips"
            else "--concat joins each original caption with its recaption" if config.concat else None)
    mix = check_caption_sources(config.data, config.p, config.recaption_field, config.mix,
                                config.caption_field, uses)
    device = ranks.device
    model, tokenizer, processor = load_start(
        resume_from, config.model, check_dual_encoder, lambda: fresh_clip(config), AutoModel.from_pretrained,
        AutoTokenizer.from_pretrained, AutoImageProcessor.from_pretrained)
    tokenizer.padding_side = "right"
    model.to(device).train()
    stream = trainer_stream(config, processor, ranks, out)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup, config.steps)
    recipe = settings_of(config, RECIPE_FIELDS)
    resumed = resume(resume_from, ranks, config, optimizer, scheduler, stream, recipe)
    rng, batches = resumed.rng, resumed.batches
    trained = ranks.wrap(model)
    window = min(config.text_length,
                 getattr(model.config.text_config, "max_position_embeddings", config.text_length))

    trained_on: Counter = Counter()  # which caption each trained sample had: the mix as it happened

    def step_loss(batch: dict) -> torch.Tensor:
        # the p draw (or the CLIPS partial recaption) happens here, with the checkpointed RNG
        if config.recipe == "clips":
            originals, partials = clips_texts(batch["org"], batch["re"], rng, config.partial_words)
            texts = originals + partials  # one forward: every image against both text sets
        else:
            if mix is not None:
                drawn = [mix.choose(org, re, more, rng.random())
                         for org, re, more in zip(batch["org"], batch["re"], batch["more"], strict=True)]
            else:
                drawn = [choose_caption(Pair(key, None, org, re), config.p, config.concat, rng)
                         for key, org, re in zip(batch["keys"], batch["org"], batch["re"], strict=True)]
            texts = [text for text, _ in drawn]
            trained_on.update(source for _, source in drawn)
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=window, return_tensors="pt")
        tokens = tokens.to(device)
        output = trained(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                         pixel_values=batch["pixels"].to(device, non_blocking=True),
                         return_loss=config.recipe == "recap")
        return clips_loss(output.logits_per_image) if config.recipe == "clips" else output.loss

    loop = TrainLoop(ranks, out, optimizer, scheduler, list(model.parameters()), config.steps,
                     config.log_every, config.save_every, parts=lambda step: [model, tokenizer, processor],
                     extra=lambda: {"settings": recipe}, rng=rng)
    step = loop.run(batches, resumed.step, step_loss)
    result = {"steps": step, "losses": loop.losses, "pairs": sum(s.samples for s in stream.shards),
              "captions_trained_on": dict(sorted(trained_on.items()))}
    finish_run(ranks, batches, out, lambda: save_final(out, [model, tokenizer, processor]),
               {**result, "config": asdict(config)})
    return result
