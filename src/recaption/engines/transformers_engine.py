"""The transformers engine: batched, left-padded generation through the model's chat template;
a batch that runs out of GPU memory is halved (and the smaller size kept) instead of crashing."""

from __future__ import annotations

import logging

from transformers import BatchFeature

from ..config import CaptionConfig
from ..hardware import pick_device, pick_dtype
from ..models.loading import load_error, resolve_model
from ..models.processors import load_processor
from ..models.registry import ModelFamily, family_for
from ..passes import Decoding
from ..preprocess import FastClipPreprocessor, FastImageProcessor, FastQwenVLPreprocessor
from .base import (
    LOOP_RUN,
    ChatTextPreparer,
    Engine,
    Generation,
    Preparer,
    batch_rows,
    context_length,
    loop_end,
)

log = logging.getLogger(__name__)


def auto_batch_size(model, device: str, config: CaptionConfig) -> int:
    """A first guess for --batch-size 0: as many sequences as the KV cache of free GPU memory
    holds (capped at 256); out-of-memory back-off corrects a guess that is too big."""
    import torch

    if not str(device).startswith("cuda"):
        return 8
    text_config = model.config.get_text_config()
    head_dim = getattr(text_config, "head_dim", None) or (
        text_config.hidden_size // text_config.num_attention_heads)
    kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
    dtype_bytes = torch.finfo(model.dtype).bits // 8
    bytes_per_token = 2 * text_config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    tokens_per_sequence = 1024 + config.max_new_tokens  # image tokens, prompt, caption, headroom
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    fits = int(0.7 * free) // (bytes_per_token * tokens_per_sequence)
    return max(1, min(256, fits))


class BatchPreparer(Preparer):
    """The CPU half of captioning: prompts and processor, no model; picklable, for loader workers."""

    def __init__(self, processor, family: ModelFamily, config: CaptionConfig):
        self.processor = processor
        self.family = family
        self.config = config
        self.plain_prompt = self.render(config.prompt)
        image_processor = getattr(processor, "image_processor", None)
        self.fast_images = (
            FastClipPreprocessor(image_processor)
            if family.clip_style_images and FastClipPreprocessor.supports(image_processor)
            else None
        )
        if FastQwenVLPreprocessor.supports(image_processor):
            # Dynamic resolution: the processor still expands each image's tokens from the grid;
            # only the pixels come from the fast path (equal to the processor's, tests check).
            fast = FastQwenVLPreprocessor(image_processor)
            processor.image_processor = FastImageProcessor(image_processor, fast)
        self._prompt_tokens: dict[str, dict] = {}

    def render(self, instruction: str) -> str:
        return self.family.render_prompt(self.processor, instruction)

    def prepare(self, images: list, prompts: list[str]):
        return self.prepare_passes(images, [prompts])[0]

    def prepare_passes(self, images: list, prompt_lists: list[list[str]]) -> list:
        """Model inputs for each pass over a batch. With a fixed image token count, the images go
        through the fast CLIP-style path once for all passes, and a pass of one prompt has its
        token ids computed once: what the processor gives (tests check), faster."""
        if self.fast_images is None or not self.family.fixed_image_tokens:
            return [self._processor(images, prompts) for prompts in prompt_lists]
        try:
            pixel_values = self.fast_images(images)
        except ValueError:  # a case the fast path leaves to the processor
            return [self._processor(images, prompts) for prompts in prompt_lists]
        inputs = []
        for prompts in prompt_lists:
            if len(set(prompts)) == 1:
                tokens, n = self._tokens_for(prompts[0]), len(images)
                inputs.append(BatchFeature({
                    "input_ids": tokens["input_ids"].repeat(n, 1),
                    "attention_mask": tokens["attention_mask"].repeat(n, 1),
                    "pixel_values": pixel_values,
                }))
            elif getattr(self.processor, "image_token", None):
                # Prompts differ (a conditional pass): tokenise them as the processor would, with
                # the image placeholder expanded, and share the pixel values.
                text = self.processor.tokenizer(self._expand_image_tokens(prompts), return_tensors="pt",
                                                padding=True)
                inputs.append(BatchFeature({**text, "pixel_values": pixel_values}))
            else:
                inputs.append(self._processor(images, prompts))
        return inputs

    def _processor(self, images: list, prompts: list[str]):
        if self.family.nested_images:
            images = [[image] for image in images]
        return self.processor(images=images, text=prompts, return_tensors="pt", padding=True)

    def _expand_image_tokens(self, prompts: list[str]) -> list[str]:
        """Prompts with the image placeholder expanded as the processor would (fixed counts only)."""
        probe = self._tokens_for(prompts[0])["input_ids"][0].tolist()
        image_id = self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        count = probe.count(image_id)
        token = self.processor.image_token
        return [p.replace(token, token * count, 1) for p in prompts]

    def _tokens_for(self, prompt: str) -> dict:
        if prompt not in self._prompt_tokens:
            from PIL import Image

            probe = self.processor(images=[Image.new("RGB", (64, 64))], text=[prompt], return_tensors="pt")
            self._prompt_tokens[prompt] = {k: probe[k] for k in ("input_ids", "attention_mask")}
        return self._prompt_tokens[prompt]


class TransformersCaptioner(Engine):
    """Loads in `setup()` (picklable until then); `generate` runs the model on its device."""

    def __init__(self, config: CaptionConfig):
        super().__init__(config)
        self.model = None
        self.processor = None
        self.family: ModelFamily | None = None
        self.encoder_decoder = False
        self.device = "cpu"
        self.max_rows = 1 << 30  # lowered when a batch runs out of GPU memory

    def setup(self) -> None:
        import transformers
        from transformers import AutoConfig

        def load(source: str):
            model_type = AutoConfig.from_pretrained(source).model_type
            family = family_for(model_type)
            processor = load_processor(
                source, model_type, **{**family.processor_kwargs, **self.config.processor_options})
            auto_class = getattr(transformers, family.auto_class)
            return auto_class.from_pretrained(source, **self._load_options()), processor, family

        source, model, (processor, family) = self._load(load)
        self.attach(model, processor, family)
        log.info("loaded %s (%s family) on %s as %s", source, family.name, self.device, self.dtype)

    def _load(self, load) -> tuple:
        """(source, model on its device, *what else `load(source)` returned). Not found, offline,
        not a model transformers knows, flash-attn missing: one line naming the model (ModelError)."""
        source = resolve_model(self.config.model)  # ModelError: not here, in one line
        self.device = pick_device(self.config.device)
        self.dtype = pick_dtype(self.config.dtype, self.device)
        try:
            model, *rest = load(source)
        except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
            raise load_error(self.config.model, exc) from exc
        return source, model.to(self.device).eval(), rest

    @classmethod
    def from_model(cls, model, processor, config: CaptionConfig) -> TransformersCaptioner:
        """An engine around a model already in memory (benchmarks, notebooks); no loading."""
        engine = cls(config)
        engine.device = str(next(model.parameters()).device)
        engine.dtype = model.dtype
        engine.attach(model.eval(), processor, family_for(model.config.model_type))
        return engine

    def attach(self, model, processor, family: ModelFamily) -> None:
        self.model, self.processor, self.family = model, processor, family
        encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self._bind_tokens(model, processor.tokenizer, encoder_decoder)
        self.preparer = BatchPreparer(processor, family, self.config)
        self.plain_prompt = self.preparer.plain_prompt
        for caption_pass in self.config.caption_passes:  # a prompt the family refuses: now, in one line
            if not caption_pass.text_only:
                self.preparer.render(caption_pass.instruction("an example caption"))
        self.batch_size = self.config.batch_size or auto_batch_size(model, self.device, self.config)
        self.ready = True

    def prompt_overflow(self, instruction: str, max_new_tokens: int) -> str | None:
        context = context_length(self.model.config)
        if context is None:
            return None
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        tokens = len(tokenizer(self.preparer.render(instruction), add_special_tokens=False).input_ids)
        if tokens + max_new_tokens <= context:
            return None
        return (f"its prompt is {tokens} tokens; with {max_new_tokens} new tokens that is over the model's "
                f"{context}-token context")

    def _bind_tokens(self, model, tokenizer, encoder_decoder: bool) -> None:
        """Padding side (left for decoder-only batching; right for an encoder-decoder, as trained),
        pad token and the ids that end an answer."""
        self.encoder_decoder = encoder_decoder
        tokenizer.padding_side = "right" if encoder_decoder else "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id

    def _load_options(self) -> dict:
        """from_pretrained's options: the dtype, and the attention kernel when one is asked for."""
        options = {"dtype": self.dtype}
        if self.config.transformers.attn_implementation:
            options["attn_implementation"] = self.config.transformers.attn_implementation
        return options

    def teardown(self) -> None:
        self.model = None
        self._release_memory()
        self.ready = False

    def prepare(self, images: list, prompts: list[str]):
        return self.preparer.prepare(images, prompts)

    def generate(self, inputs, decoding: Decoding | None = None) -> list[Generation]:
        """Captions in chunks of at most `max_rows` rows; out of GPU memory, `max_rows` is halved."""
        import torch

        decoding = self.decoding(decoding)
        rows, step = batch_rows(inputs), self.max_rows
        if rows > step:
            generations = []
            for start in range(0, rows, step):
                generations += self.generate(self.rows(inputs, start, start + step), decoding)
            return generations
        try:
            return self._generate_rows(inputs, decoding)
        except torch.OutOfMemoryError:
            if rows == 1:
                raise
            self.max_rows = max(1, rows // 2)
            log.warning("out of GPU memory with %d rows; continuing with batches of %d", rows, self.max_rows)
            self._release_memory()
            return self.generate(inputs, decoding)

    def rows(self, inputs, start: int, stop: int):
        """Rows start..stop of a prepared batch; pixel values that are patches or tiles one after
        another (Qwen-VL, InternVL) are shared in proportion to each row's image tokens."""
        rows = batch_rows(inputs)
        part = {k: v[start:stop] for k, v in inputs.items() if k != "pixel_values"}
        pixels = inputs.get("pixel_values")
        if pixels is not None and pixels.shape[0] != rows:
            image_token = getattr(self.processor, "image_token_id", None)
            if image_token is None:
                image_token = self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token)
            tokens = (inputs["input_ids"] == image_token).sum(dim=1).tolist()
            total = sum(tokens)
            first, last = (sum(tokens[:i]) * pixels.shape[0] for i in (start, stop))
            if not total or first % total or last % total:
                raise ValueError("cannot split this batch's pixel values by row; use a smaller --batch-size")
            part["pixel_values"] = pixels[first // total : last // total]
        elif pixels is not None:
            part["pixel_values"] = pixels[start:stop]
        return type(inputs)(part)

    def _release_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generate_rows(self, inputs, decoding: Decoding) -> list[Generation]:
        import torch
        from transformers import StoppingCriteriaList

        inputs = inputs.to(self.device, non_blocking=True)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        # No forced end token at the limit (BART-style configs, Florence-2, have one): a caption
        # cut by max_new_tokens must read as truncated, not as finished.
        kwargs = dict(max_new_tokens=decoding.max_new_tokens, num_beams=1, pad_token_id=self.pad_id,
                      forced_eos_token_id=None)
        if self.config.min_new_tokens:
            kwargs["min_new_tokens"] = min(self.config.min_new_tokens, decoding.max_new_tokens)
        if decoding.sample:
            if decoding.seed is not None:
                torch.manual_seed(decoding.seed)
            kwargs.update(do_sample=True, top_k=decoding.top_k, temperature=1.0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        # A decoder-only model's output starts with its prompt; an encoder-decoder's with the
        # decoder's start token(s) only (the prompt went to the encoder).
        if self.encoder_decoder:
            prompt = inputs["decoder_input_ids"].shape[1] if "decoder_input_ids" in inputs else 1
        else:
            prompt = inputs["input_ids"].shape[1]
        kwargs["stopping_criteria"] = StoppingCriteriaList([stop_on_token_run(prompt)])
        with torch.inference_mode():
            output = self.model.generate(**inputs, **kwargs)
        new_tokens = output[:, prompt:].tolist()
        return [self._finish(row, decoding.max_new_tokens) for row in new_tokens]

    def _finish(self, tokens: list[int], max_new_tokens: int) -> Generation:
        end = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens if end is None else tokens[:end]
        looped = loop_end(kept)
        if looped is not None:  # stopped early on a run of one token: cut there, not at the budget
            kept, num_tokens, truncated = tokens[:looped], looped, True
        else:
            num_tokens = len(tokens) if end is None else end + 1
            truncated = end is None and len(tokens) >= max_new_tokens
        tokenizer = getattr(self.processor, "tokenizer", self.processor)  # a text LLM's is its tokenizer
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        return Generation(text=text, num_tokens=num_tokens, truncated=truncated)


def stop_on_token_run(prompt_length: int):
    """A transformers stopping criterion: a row is done once its last LOOP_RUN new tokens are one
    token (per row: the others of the batch go on)."""
    import torch
    from transformers import StoppingCriteria

    class StopOnTokenRun(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            new = input_ids[:, prompt_length:]
            if new.shape[1] < LOOP_RUN:
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            tail = new[:, -LOOP_RUN:]
            return (tail == tail[:, :1]).all(dim=1)

    return StopOnTokenRun()


class TextPreparer(ChatTextPreparer):
    """A text LLM's CPU half: the instruction in the model's chat template, then token ids."""

    def prepare_text(self, prompts: list[str]):
        # The chat template wrote the begin token already (when the model has one).
        special = not getattr(self.tokenizer, "chat_template", None)
        return self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=special)


class TransformersTextGenerator(TransformersCaptioner):
    """A text-only pass's LLM (AutoModelForCausalLM): the same batched, left-padded generation,
    decoding and out-of-memory back-off as the captioner, from text alone."""

    def setup(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        def load(source: str):
            tokenizer = AutoTokenizer.from_pretrained(source)
            return AutoModelForCausalLM.from_pretrained(source, **self._load_options()), tokenizer

        source, model, (tokenizer,) = self._load(load)
        self.model, self.processor = model, tokenizer
        self._bind_tokens(model, tokenizer, encoder_decoder=False)
        self.preparer = TextPreparer(tokenizer)
        self.batch_size = self.config.batch_size or auto_batch_size(model, self.device, self.config)
        self.ready = True
        log.info("loaded text model %s on %s as %s", source, self.device, self.dtype)


ENGINE = TransformersCaptioner
TEXT_ENGINE = TransformersTextGenerator
