"""How right a captioner is about the shapes world, against each image's ground truth.

accuracy       share of the image's objects whose colour AND shape the caption names together
               ("red circle" counts for a red circle; size and position are not required)
hallucination  CHAIR-style: share of the colour-shape pairs the caption names that are not in
               the image (an object that is not there, or a real shape in the wrong colour)
colour_hallucination  share of colour words named that no object in the image has
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..shapes.world import COLOURS, SHAPES, ShapeObject

_PAIR = re.compile(r"\b(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) + r")s?\b")
_COLOUR = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")


@dataclass
class CaptionScore:
    objects: int = 0
    described: int = 0
    named: int = 0
    hallucinated: int = 0
    colours_named: int = 0
    colours_hallucinated: int = 0

    def add(self, caption: str, objects: list[ShapeObject]) -> None:
        text = (caption or "").lower()
        pairs = _PAIR.findall(text)
        present = {(o.colour, o.shape) for o in objects}
        named = set(pairs)
        self.objects += len(objects)
        # An object is described when its pair is named (two red circles need it named once each).
        remaining = list(pairs)
        for o in objects:
            if (o.colour, o.shape) in remaining:
                remaining.remove((o.colour, o.shape))
                self.described += 1
        self.named += len(named)
        self.hallucinated += len(named - present)
        colours = set(_COLOUR.findall(text))
        self.colours_named += len(colours)
        self.colours_hallucinated += len(colours - {o.colour for o in objects})

    @property
    def accuracy(self) -> float:
        return self.described / self.objects if self.objects else 0.0

    @property
    def hallucination(self) -> float:
        return self.hallucinated / self.named if self.named else 0.0

    @property
    def colour_hallucination(self) -> float:
        return self.colours_hallucinated / self.colours_named if self.colours_named else 0.0

    def summary(self) -> dict:
        return {"objects": self.objects, "accuracy": round(self.accuracy, 4),
                "hallucination": round(self.hallucination, 4),
                "colour_hallucination": round(self.colour_hallucination, 4)}


def evaluate_captioner(model: str, images: int = 200, seed: int = 0, start: int = 200_000,
                       device: str = "auto", batch_size: int = 16, examples: int = 3) -> dict:
    """Caption held-out shapes-world images with the paper's prompt and score them."""
    import io

    from PIL import Image

    from ..config import CaptionConfig
    from ..engines.transformers_engine import TransformersCaptioner
    from ..models.loading import TINY_RANDOM_NAME
    from ..models.tiny import TINY_MODEL_NAME
    from ..shapes import ShapesWorld
    from .inputs import TrainingInputError, check_device, load_pretrained, model_source

    if images < 1 or start < 0:
        raise TrainingInputError("--images must be at least 1 and --start at least 0")
    check_device(device)
    if model not in (TINY_MODEL_NAME, TINY_RANDOM_NAME):
        model_source(model, "model")
    captioner = TransformersCaptioner(CaptionConfig(model=model, device=device, max_new_tokens=128))
    load_pretrained(lambda _: captioner.setup(), model, "model")
    world = ShapesWorld(seed, captioner.processor.image_processor.crop_size["height"])
    score, shown = CaptionScore(), []
    for first in range(start, start + images, batch_size):
        samples = [world.sample(i) for i in range(first, min(first + batch_size, start + images))]
        pictures = [Image.open(io.BytesIO(s.image)).convert("RGB") for s in samples]
        prompts = [captioner.plain_prompt] * len(pictures)
        generations = captioner.generate(captioner.prepare(pictures, prompts))
        for sample, gen in zip(samples, generations, strict=True):
            score.add(gen.text, sample.objects)
            if len(shown) < examples:
                shown.append({"truth": sample.description, "caption": gen.text})
    return {**score.summary(), "images": images, "examples": shown}
