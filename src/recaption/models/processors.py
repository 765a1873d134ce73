"""Loading a model's processor, with the options `--processor-option` gives it. Qwen-VL's and
InternVL's processors need torchvision for their video half; without it they are built image-only
(`image_only`), from the same files: captioning sends images only."""

from __future__ import annotations

import inspect
from functools import cache


def load_processor(source: str, model_type: str, **kwargs):
    """`AutoProcessor.from_pretrained(source, **kwargs)`, image-only when it needs torchvision."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    cls = _processor_class(model_type)
    if cls is not None and "video_processor" in cls.get_attributes() and not is_torchvision_available():
        processor = image_only(cls).from_pretrained(source, **kwargs)
    else:
        processor = AutoProcessor.from_pretrained(source, **kwargs)
    known = _settings(processor)
    unknown = sorted(set(kwargs) - known) if known else []
    if unknown:  # from_pretrained ignores a misspelt setting without a word
        raise ValueError(
            f"--processor-option {', '.join(unknown)}: {type(processor).__name__} has no such setting "
            f"(its settings: {', '.join(sorted(known))})"
        )
    return processor


def _settings(processor) -> set[str]:
    """The settings a processor takes (empty when they cannot be told)."""
    image_processor = getattr(processor, "image_processor", None)
    declared = getattr(type(image_processor), "valid_kwargs", None)
    if declared is None:
        return set()
    names = {name for c in getattr(declared, "__mro__", ()) for name in getattr(c, "__annotations__", {})}
    own = inspect.signature(type(processor).__init__).parameters
    names |= {n for n, p in own.items() if p.kind is p.POSITIONAL_OR_KEYWORD}
    return names - {"self", "chat_template", *type(processor).get_attributes()}


def _processor_class(model_type: str):
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None


@cache
def image_only(cls):
    """`cls` (a processor class) with only its image processor and tokenizer, under its own name
    (a folder it saves loads as `cls` where torchvision is)."""

    # transformers reads the settings a saved processor passes back from this function's own
    # parameters (its code object): chat_template, and InternVL's image_seq_length.
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_seq_length=None,
                 **kwargs):
        if image_seq_length is not None:
            kwargs["image_seq_length"] = image_seq_length
        # The parts are now (image_processor, tokenizer): ProcessorMixin pairs the positional
        # parts with them, so the `None` passed for the video processor is left out.
        cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    # ...and what to save from its signature: the class's own, less the video processor.
    signature = inspect.signature(cls.__init__)
    __init__.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name != "video_processor"])
    def __reduce__(self):  # loader workers get a copy: rebuilt from `cls`, not looked up by name
        return _rebuild_image_only, (cls, self.__dict__)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                       "__reduce__": __reduce__})


def _rebuild_image_only(cls, state: dict):
    made = image_only(cls)
    processor = made.__new__(made)
    processor.__dict__.update(state)
    return processor
