"""`recap train-captioner`: the LLaVA-1.5 recipe on transformers, for any LlavaForConditionalGeneration.

Stage 1 trains the projector on image-caption pairs (a brief-caption instruction -> the caption),
stage 2 the projector and language model on the recaption prompt -> the detailed description; the
vision tower stays frozen and the loss is on the answer tokens only; OUTPUT ends as a model folder
`recap caption --model OUTPUT` loads. With no `--model`, a small LLaVA for the shapes world is
built, its vision tower from `--vision-tower` (a CLIP folder) or random.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..models.registry import PAPER_PROMPT
from .checkpoints import CheckpointError, restore_optimizer, save_final
from .inputs import load_pretrained, load_start, model_source, require_counts, require_model_type
from .loop import TrainLoop, finish_run, resume, settings_of, train_into, trainer_stream

log = logging.getLogger(__name__)

BRIEF_PROMPT = "Describe the image briefly."


@dataclass
class CaptionerTrainConfig:
    data: list[str]
    output: str
    model: str | None = None  # a LlavaForConditionalGeneration folder; None: a small one built fresh
    vision_tower: str | None = None  # fresh models: CLIP folder whose vision tower to use (frozen)
    stage1_field: str | None = None  # the caption for stage 1 (default: the shard's caption)
    stage2_field: str = "description"  # the detailed description for stage 2 (a json field)
    prompt: str = PAPER_PROMPT
    stage1_steps: int = 200
    stage2_steps: int = 600
    stage1_lr: float = 1e-3
    stage2_lr: float = 5e-4
    batch_size: int = 32
    warmup: int = 30
    save_every: int = 200
    seed: int = 0
    width: int = 192  # fresh models: language model width
    layers: int = 4
    device: str = "auto"
    log_every: int = 50
    workers: int = 2  # loader processes that decode and preprocess (0: in this process)
    shuffle_buffer: int = 1000  # samples each loader worker shuffles among (encoded images)

    def __post_init__(self):
        require_counts(self, ("batch_size", "save_every", "log_every", "width", "layers"),
                       ("stage1_steps", "stage2_steps", "warmup", "workers", "shuffle_buffer"))


def fresh_llava(config: CaptionerTrainConfig, image_size: int = 64, patch: int = 8):
    from transformers import AutoModel, CLIPVisionConfig

    from ..models.llava_parts import llava_processor, small_llava, toy_vision_config
    from ..models.tiny import _build_tokenizer

    tokenizer = _build_tokenizer()
    clip = None
    if config.vision_tower:
        source = model_source(config.vision_tower, "--vision-tower")
        require_model_type(source, "--vision-tower", config.vision_tower, "clip",
                           "a CLIP model folder (e.g. one recap train-clip wrote)")
        clip = load_pretrained(AutoModel.from_pretrained, source, "--vision-tower", config.vision_tower)
    if clip is not None:
        vision = CLIPVisionConfig(**clip.config.vision_config.to_dict())
        image_size, patch = vision.image_size, vision.patch_size
    else:
        vision = toy_vision_config(image_size, patch, intermediate=256)
    model = small_llava(tokenizer, vision, config.width, config.layers, 3 * config.width,
                        max(1, config.width // 32), 512, config.seed)
    if clip is not None:
        model.model.vision_tower.load_state_dict(clip.vision_model.state_dict(), strict=False)
    return model, llava_processor(tokenizer, image_size, patch, tokenizer.chat_template)


class ConversationBatcher:
    """Prompt (chat template, image token expanded by the processor) + answer + end token; labels
    are -100 everywhere but the answer and its end token; right padding."""

    def __init__(self, processor, family):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.family = family
        self._prompt_ids: dict[str, list[int]] = {}

    def prompt_ids(self, instruction: str) -> list[int]:
        if instruction not in self._prompt_ids:
            from PIL import Image

            text = self.family.render_prompt(self.processor, instruction)
            probe = self.processor(images=[Image.new("RGB", (8, 8))], text=[text], return_tensors="pt")
            self._prompt_ids[instruction] = probe["input_ids"][0].tolist()
        return self._prompt_ids[instruction]

    def __call__(self, pixels: torch.Tensor, instruction: str, targets: list[str]) -> dict:
        """A batch of images (B x 3 x H x W) with one target answer each."""
        eos = self.tokenizer.eos_token_id
        prompt = self.prompt_ids(instruction)
        sequences, labels = [], []
        for target in targets:
            answer = self.tokenizer(target, add_special_tokens=False)["input_ids"] + [eos]
            sequences.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
        label_ids = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": label_ids, "pixel_values": pixels}


def trainable(model, stage: int) -> list:
    """Stage 1: the projector. Stage 2: projector and language model. Never the vision tower."""
    for p in model.parameters():
        p.requires_grad = False
    parts = [model.model.multi_modal_projector]
    if stage == 2:
        parts += [model.model.language_model, model.lm_head]
    params = [p for part in parts for p in part.parameters()]
    for p in params:
        p.requires_grad = True
    return params


# What a resumed run must share with the run it continues (steps may grow).
RECIPE_FIELDS = ("stage1_field", "stage2_field", "prompt", "stage1_lr", "stage2_lr", "warmup")


def _require_llava(source: str, option: str, name: str) -> None:
    require_model_type(source, option, name, "llava", "a LlavaForConditionalGeneration folder "
                       "(recap convert-llava makes one from a LLaVA-repo checkpoint)")


def train_captioner(config: CaptionerTrainConfig) -> dict:
    """Train (or resume) into config.output; OS errors there are one line (the output contract)."""
    return train_into("train-captioner", config, _train_captioner)


def _train_captioner(config: CaptionerTrainConfig, out: Path, resume_from: str | None, ranks) -> dict:
    from transformers import AutoProcessor, LlavaForConditionalGeneration, get_cosine_schedule_with_warmup

    from ..models.registry import family_for

    device = ranks.device
    model, processor = load_start(resume_from, config.model, _require_llava, lambda: fresh_llava(config),
                                  LlavaForConditionalGeneration.from_pretrained,
                                  AutoProcessor.from_pretrained)
    model.to(device)
    batcher = ConversationBatcher(processor, family_for(model.config.model_type))
    stream = trainer_stream(
        config, processor.image_processor, ranks, out,
        {"--stage1-field": config.stage1_field, "--stage2-field": config.stage2_field},
        [({"--stage1-field": config.stage1_field if config.stage1_steps else None}, ""),
         ({"--stage2-field": config.stage2_field if config.stage2_steps else None},
          " (stage 2 trains on that detailed description; a `recap export` folder holds its recaption "
          "as re_caption: --stage2-field re_caption)")],
    )
    recipe = settings_of(config, RECIPE_FIELDS)
    resumed = resume(resume_from, ranks, config, None, None, stream, recipe)
    state = resumed.extra or None
    if state and state.get("stage") not in (1, 2):
        raise CheckpointError(f"{resume_from}: its stage is {state.get('stage')!r}, not 1 or 2; "
                              "train into a new --output")
    stage, step = (state["stage"], resumed.step) if state else (1, 0)
    batches = resumed.batches
    history: dict[str, list[float]] = state["history"] if state else {"stage1": [], "stage2": []}
    for current in (1, 2):
        total = config.stage1_steps if current == 1 else config.stage2_steps
        if current < stage or total == 0:
            continue
        params = trainable(model, current)
        optimizer = torch.optim.AdamW(params, lr=config.stage1_lr if current == 1 else config.stage2_lr,
                                      weight_decay=0.0)
        scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup, total // 2), total)
        if state and current == stage:
            restore_optimizer(resume_from, state, optimizer, scheduler)
        else:
            step = 0
        model.train()
        trained = ranks.wrap(model, find_unused_parameters=True)
        instruction = BRIEF_PROMPT if current == 1 else config.prompt

        def step_loss(batch: dict, current: int = current, instruction: str = instruction, trained=trained):
            # Stage 1 trains on the brief caption, stage 2 on the detailed one; either stands in.
            targets = [(brief if current == 1 else detailed) or detailed or brief or ""
                       for brief, detailed in zip(batch["org"], batch["re"], strict=True)]
            inputs = {k: v.to(device) for k, v in batcher(batch["pixels"], instruction, targets).items()}
            return trained(**inputs).loss

        loop = TrainLoop(ranks, out, optimizer, scheduler, params, total, config.log_every, config.save_every,
                         parts=lambda step: [model, processor],
                         extra=lambda current=current: {"stage": current, "history": history,
                                                        "settings": recipe},
                         rng=resumed.rng, label=f"stage {current} ",
                         checkpoint_name=lambda step, current=current: f"checkpoint-s{current}-{step:07d}",
                         losses=history[f"stage{current}"])
        step = loop.run(batches, step, step_loss)
        stage = current + 1
        state = None
    model.eval()
    finish_run(ranks, batches, out, lambda: save_final(out, [model, processor]),
               {"history": history, "config": asdict(config)})
    return {"history": history, "examples": sum(s.samples for s in stream.shards)}
