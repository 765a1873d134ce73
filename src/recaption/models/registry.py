"""Model-family table: everything model-specific (prompt format, processor quirks) lives here,
one entry per family, matched on the model config's `model_type`; `recap models` lists it."""

from __future__ import annotations

from dataclasses import dataclass, field

# A caption budget past any captioner's context window only lets a looping model run longer.
MAX_NEW_TOKENS = 8192
# The paper's recaptioning prompt, verbatim (Recap-DataComp-1B, arXiv 2406.08478).
PAPER_PROMPT = "Please generate a detailed caption of this image. Please be as descriptive as possible."
# Our prompt for the conditional mode (the dataset's later `re_caption_condition_diverse_topk`
# column); the paper does not publish its own, so `{caption}` is filled with the alt-text.
CONDITIONAL_PROMPT = (
    "Please generate a detailed caption of this image. Please be as descriptive as possible. "
    'The original caption of this image is: "{caption}"'
)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    description: str
    model_types: tuple[str, ...]
    # Used only when the processor has no chat template; `{prompt}` is the instruction.
    fallback_template: str | None = None
    processor_kwargs: dict = field(default_factory=dict)
    # transformers Auto class that loads the model.
    auto_class: str = "AutoModelForImageTextToText"
    # Every image becomes the same number of tokens (LLaVA-1.5: 576), so a prompt's token ids
    # do not depend on the image and can be computed once and reused for every batch.
    fixed_image_tokens: bool = False
    # The image processor is CLIP-style, so recaption.preprocess may stand in for it.
    clip_style_images: bool = False
    # The processor takes one list of images per prompt (Gemma 3 reads a flat list as the
    # images of a single prompt).
    nested_images: bool = False

    def messages(self, prompt: str) -> list[dict]:
        """One user turn: the image, then the instruction (LLaVA's order)."""
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

    @property
    def prompt_format(self) -> str:
        """How `recap models` describes the prompt."""
        if self.fallback_template:
            return f"chat template; else {self.fallback_template!r}"
        return "chat template"

    def render_prompt(self, processor, prompt: str) -> str:
        if getattr(processor, "chat_template", None):
            return processor.apply_chat_template(self.messages(prompt), add_generation_prompt=True)
        if self.fallback_template is None:
            raise ValueError(f"the processor has no chat template and the {self.name} family defines no "
                             "fallback prompt format")
        return self.fallback_template.format(prompt=prompt)


LLAVA_1_5 = ModelFamily(
    name="llava-1.5", model_types=("llava",),
    description="LLaVA-1.5 (LlavaForConditionalGeneration): the paper's captioner after conversion "
        "(LLaMA-3 template), llava-hf/llava-1.5-*-hf (Vicuna template) and the built-in tiny model",
    fallback_template="USER: <image>\n{prompt} ASSISTANT:", fixed_image_tokens=True, clip_style_images=True,
)

LLAVA_NEXT = ModelFamily(
    name="llava-next", model_types=("llava_next",),
    description="LLaVA-NeXT / LLaVA-1.6 (LlavaNextForConditionalGeneration): any-resolution tiles, so the "
        "number of image tokens depends on the image; prompted through its chat template",
)

IDEFICS3 = ModelFamily(
    name="idefics3", model_types=("idefics3", "smolvlm"),
    description="Idefics3 and SmolVLM (Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration): "
        "images split into tiles plus a global view; prompted through the chat template",
)

GEMMA3 = ModelFamily(
    name="gemma3", model_types=("gemma3",),
    description="Gemma 3 (Gemma3ForConditionalGeneration): SigLIP at 896 px, 256 tokens per image; "
        "pan-and-scan (extra crops of large or elongated images) off unless "
        "--processor-option do_pan_and_scan=true; prompted through the chat template",
    processor_kwargs={"do_pan_and_scan": False}, nested_images=True,
)

QWEN_VL = ModelFamily(
    name="qwen-vl", model_types=("qwen2_vl", "qwen2_5_vl", "qwen3_vl"),
    description="Qwen2-VL, Qwen2.5-VL, Qwen3-VL (Qwen2VLForConditionalGeneration, ...): dynamic resolution, "
        "one token per 28x28 pixels (32x32 for Qwen3-VL) between min_pixels and max_pixels "
        "(--processor-option max_pixels=N); prompted through the chat template, image first",
)

INTERNVL = ModelFamily(
    name="internvl", model_types=("internvl",),
    description="InternVL 2.5 / 3 in transformers' format (InternVLForConditionalGeneration, the -hf "
        "checkpoints): 448 px tiles chosen by aspect ratio plus a thumbnail (max_patches); "
        "prompted through the chat template",
)


@dataclass(frozen=True)
class TaskTokenFamily(ModelFamily):
    """A model prompted with a task token instead of free text (Florence-2). A prompt that is one
    of `tasks` passes through; the paper's prompt becomes `paper_task`; other free text is refused
    (the model was not trained to follow it, so its captions would mean nothing)."""

    tasks: tuple[str, ...] = ()
    paper_task: str = ""

    @property
    def prompt_format(self) -> str:
        return f"task token: {', '.join(self.tasks)}; the paper's prompt -> {self.paper_task}"

    def render_prompt(self, processor, prompt: str) -> str:
        prompt = prompt.strip()
        if prompt in self.tasks:
            return prompt
        if prompt == PAPER_PROMPT:
            return self.paper_task
        raise ValueError(
            f"the {self.name} family takes a task token, not free text: give the prompt as one of "
            f"{', '.join(self.tasks)} (the paper's prompt means {self.paper_task}); got {prompt[:60]!r}")


FLORENCE2 = TaskTokenFamily(
    name="florence-2", model_types=("florence2",),
    description="Florence-2 in transformers' format (Florence2ForConditionalGeneration, e.g. "
        "florence-community/Florence-2-large): an encoder-decoder prompted with task tokens; "
        "<MORE_DETAILED_CAPTION> is the paper's detailed caption",
    # The tasks whose answer is plain text.
    tasks=("<MORE_DETAILED_CAPTION>", "<DETAILED_CAPTION>", "<CAPTION>", "<OCR>"),
    paper_task="<MORE_DETAILED_CAPTION>",
)

GENERIC = ModelFamily(
    name="generic", model_types=(),
    description="Any other transformers image-text-to-text model with a chat template",
)

MODEL_FAMILIES: tuple[ModelFamily, ...] = (LLAVA_1_5, LLAVA_NEXT, IDEFICS3, QWEN_VL, GEMMA3, INTERNVL,
                                           FLORENCE2)


def family_for(model_type: str) -> ModelFamily:
    for family in MODEL_FAMILIES:
        if model_type in family.model_types:
            return family
    return GENERIC
