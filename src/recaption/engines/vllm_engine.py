"""The vLLM engine (`--engine vllm`): `LLM.generate` with `multi_modal_data`, in-process, prompts
from the same model-family table as the transformers engine. vLLM is not installable where this
project is built: the adapter is tested against a stand-in with vLLM's call signature."""

from __future__ import annotations

import logging

from ..config import CaptionConfig
from ..models.loading import load_error, resolve_model
from ..models.registry import ModelFamily, family_for
from ..passes import Decoding
from .base import ChatTextPreparer, Engine, Generation, Preparer, loop_end

log = logging.getLogger(__name__)


class VLLMPreparer(Preparer):
    """Prompt strings and PIL images as vLLM takes them; picklable."""

    def __init__(self, processor, family: ModelFamily):
        self.processor = processor
        self.family = family

    def render(self, instruction: str) -> str:
        return self.family.render_prompt(self.processor, instruction)

    def prepare(self, images: list, prompts: list[str]) -> list[dict]:
        pairs = zip(images, prompts, strict=True)
        return [{"prompt": p, "multi_modal_data": {"image": img}} for img, p in pairs]


class VLLMCaptioner(Engine):
    def __init__(self, config: CaptionConfig):
        super().__init__(config)
        self.llm = None
        self.device = "cuda"

    def setup(self) -> None:
        from transformers import AutoConfig

        from ..models.processors import load_processor

        def load(vllm, source: str, **options):
            model_type = AutoConfig.from_pretrained(source).model_type
            family = family_for(model_type)
            processor_options = {**family.processor_kwargs, **self.config.processor_options}
            processor = load_processor(source, model_type, **processor_options)
            # vLLM runs the model's processor itself: the same options, as mm_processor_kwargs.
            extra = {"mm_processor_kwargs": processor_options} if processor_options else {}
            self.preparer = VLLMPreparer(processor, family)
            self.preparer.render(self.config.prompt)  # a prompt the family refuses: now, in one line
            llm = vllm.LLM(limit_mm_per_prompt={"image": 1}, **options, **extra)
            log.info("vLLM loaded %s (%s family)", source, family.name)
            return llm

        self._load(load)

    def _load(self, load) -> None:
        """`load(vllm, source, model=, dtype=, seed=)` makes the LLM (and sets the preparer); a
        model that cannot load is one line (ModelError), as in the transformers engine."""
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError("--engine vllm needs vLLM: pip install vllm (on a GPU machine)") from exc
        source = resolve_model(self.config.model)  # ModelError: not here, in one line
        try:
            self.llm = load(vllm, source, model=source, dtype=self.config.dtype, seed=self.config.seed)
        except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
            raise load_error(self.config.model, exc) from exc
        self._sampling_params = vllm.SamplingParams
        self.batch_size = self.config.batch_size or 256  # vLLM schedules within what it is given
        self.ready = True

    def teardown(self) -> None:
        self.llm = None
        self.ready = False

    def generate(self, inputs: list[dict], decoding: Decoding | None = None) -> list[Generation]:
        decoding = self.decoding(decoding)
        max_tokens, seed = decoding.max_new_tokens, decoding.seed
        if decoding.sample:
            # One seed per request, derived from the batch's: reproducible whatever vLLM's order.
            params = [self._sampling_params(temperature=1.0, top_k=decoding.top_k, max_tokens=max_tokens,
                                            seed=None if seed is None else seed + i)
                      for i in range(len(inputs))]
        else:
            params = self._sampling_params(temperature=0.0, max_tokens=max_tokens)
        outputs = self.llm.generate(inputs, sampling_params=params, use_tqdm=False)
        return [self._finish(out) for out in outputs]

    def _finish(self, request_output) -> Generation:
        completion = request_output.outputs[0]
        tokens = list(completion.token_ids)
        looped = loop_end(tokens)
        if looped is not None:  # the same cut as the transformers engine's early stop (base.LOOP_RUN)
            text = self.llm.get_tokenizer().decode(tokens[:looped], skip_special_tokens=True).strip()
            return Generation(text=text, num_tokens=len(tokens), truncated=True)
        return Generation(text=completion.text.strip(), num_tokens=len(tokens),
                          truncated=completion.finish_reason == "length")


class VLLMTextPreparer(ChatTextPreparer):
    """A text-only pass's prompts for vLLM: the instruction in the model's chat template."""

    def prepare_text(self, prompts: list[str]) -> list[dict]:
        return [{"prompt": p} for p in prompts]


class VLLMTextGenerator(VLLMCaptioner):
    """A text-only pass's LLM in vLLM (tested against a stand-in only, as the captioner)."""

    def setup(self) -> None:
        def load(vllm, source: str, **options):
            llm = vllm.LLM(**options)
            self.preparer = VLLMTextPreparer(llm.get_tokenizer())
            log.info("vLLM loaded text model %s", source)
            return llm

        self._load(load)


ENGINE = VLLMCaptioner
TEXT_ENGINE = VLLMTextGenerator
