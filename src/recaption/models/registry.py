"""Model-family table: everything model-specific (prompt format, processor quirks) lives here.

One entry per family, matched on the model config's `model_type`. The CLI's `recap models`
lists this table; adding a family means adding an entry, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The paper's recaptioning prompt, verbatim (Recap-DataComp-1B, arXiv 2406.08478).
PAPER_PROMPT = (
    "Please generate a detailed caption of this image. Please be as descriptive as possible."
)
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

    def messages(self, prompt: str) -> list[dict]:
        """One user turn: the image, then the instruction (LLaVA's order)."""
        return [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]

    def render_prompt(self, processor, prompt: str) -> str:
        if getattr(processor, "chat_template", None):
            return processor.apply_chat_template(self.messages(prompt), add_generation_prompt=True)
        if self.fallback_template is None:
            raise ValueError(
                f"the processor has no chat template and the {self.name} family defines no "
                "fallback prompt format"
            )
        return self.fallback_template.format(prompt=prompt)


LLAVA_1_5 = ModelFamily(
    name="llava-1.5",
    description=(
        "LLaVA-1.5 (LlavaForConditionalGeneration): the paper's captioner after conversion "
        "(LLaMA-3 template), llava-hf/llava-1.5-*-hf (Vicuna template) and the built-in tiny model"
    ),
    model_types=("llava",),
    fallback_template="USER: <image>\n{prompt} ASSISTANT:",
    fixed_image_tokens=True,
    clip_style_images=True,
)

LLAVA_NEXT = ModelFamily(
    name="llava-next",
    description=(
        "LLaVA-NeXT / LLaVA-1.6 (LlavaNextForConditionalGeneration): any-resolution tiles, so the "
        "number of image tokens depends on the image; prompted through its chat template"
    ),
    model_types=("llava_next",),
)

IDEFICS3 = ModelFamily(
    name="idefics3",
    description=(
        "Idefics3 and SmolVLM (Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration): "
        "images split into tiles plus a global view; prompted through the chat template"
    ),
    model_types=("idefics3", "smolvlm"),
)

GENERIC = ModelFamily(
    name="generic",
    description="Any other transformers image-text-to-text model with a chat template",
    model_types=(),
)

MODEL_FAMILIES: tuple[ModelFamily, ...] = (LLAVA_1_5, LLAVA_NEXT, IDEFICS3)


def family_for(model_type: str) -> ModelFamily:
    for family in MODEL_FAMILIES:
        if model_type in family.model_types:
            return family
    return GENERIC
