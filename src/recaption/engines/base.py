"""What every captioning engine gives the pipeline: the `Engine` and `Preparer` contracts
(docs/architecture.md). The picklable `preparer` does the CPU work in loader workers; the engine
turns prepared inputs into `Generation`s. A new engine is one file, `engines/<name>_engine.py`,
defining `ENGINE` (and `TEXT_ENGINE`, its text-only generator, when it has one)."""

from __future__ import annotations

from dataclasses import dataclass

from ..passes import Decoding


@dataclass
class Generation:
    text: str | None
    num_tokens: int  # generated tokens up to and including the end-of-turn token
    truncated: bool  # stopped by max_new_tokens rather than by the model
    error: str | None = None  # this one sample failed (the rest of its batch did not)


class Preparer:
    """The CPU half of an engine; picklable. Subclasses implement `prepare` (and `render`)."""

    def render(self, instruction: str) -> str:
        """The instruction as `prepare` takes it (a chat template applied, an image placeholder)."""
        return instruction

    def prepare(self, images: list, prompts: list[str]):
        raise NotImplementedError

    def prepare_text(self, prompts: list[str]):
        """Inputs for a text-only pass (a text LLM's preparer): prompts, no images."""
        raise NotImplementedError(f"{type(self).__name__} prepares images; a text-only pass needs a "
                                  "text engine")

    def prepare_passes(self, images: list, prompt_lists: list[list[str]]) -> list:
        """Inputs for several passes over the same images (overridden to preprocess them once)."""
        return [self.prepare(images, prompts) for prompts in prompt_lists]


class ChatTextPreparer(Preparer):
    """A text LLM's CPU half: the instruction in the model's chat template (when it has one)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # The model's control tokens (`<|eot_id|>`, `</s>`, ...), longest first: web text that
        # spells one must not end the user's turn or open the assistant's.
        special = {*getattr(tokenizer, "all_special_tokens", ()),
                   *getattr(tokenizer, "added_tokens_encoder", {})}
        self.control = sorted((t for t in special if t), key=len, reverse=True)

    def render(self, instruction: str) -> str:
        for token in self.control:
            instruction = instruction.replace(token, "")
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": instruction}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return instruction


class Engine:
    """Built from a CaptionConfig without loading anything (picklable to a worker); `setup()`
    loads, `teardown()` releases."""

    device: str = "cpu"
    batches_in_flight: int = 1
    # The model is weights this process loads (checked before a run); False: a server's model.
    loads_weights: bool = True
    preparer: Preparer

    def __init__(self, config):
        self.config = config
        self.ready = False
        self.batch_size = config.batch_size or 8

    def setup(self) -> None:
        self.ready = True

    def teardown(self) -> None:
        self.ready = False

    def generate(self, inputs, decoding: Decoding | None = None) -> list[Generation]:
        raise NotImplementedError

    def rows(self, inputs, start: int, stop: int):
        """Rows start..stop of a prepared batch, as a batch (a failed batch is retried row by row)."""
        if isinstance(inputs, list):
            return inputs[start:stop]
        return type(inputs)({k: v[start:stop] for k, v in inputs.items()})

    def decoding(self, decoding: Decoding | None) -> Decoding:
        """The given decoding, or the run's default: greedy, --max-new-tokens."""
        return decoding or Decoding(self.config.max_new_tokens)

    def prompt_overflow(self, instruction: str, max_new_tokens: int) -> str | None:
        """Why this instruction and `max_new_tokens` cannot fit the model's context (None: they fit,
        or the engine cannot tell)."""
        return None


def context_length(model_config) -> int | None:
    """The most positions the model covers (its text model's, for a vision-language one)."""
    for config in (model_config, getattr(model_config, "text_config", None)):
        length = getattr(config, "max_position_embeddings", None)
        if isinstance(length, int) and length > 0:
            return length
    return None


def batch_rows(inputs) -> int:
    if isinstance(inputs, list):
        return len(inputs)
    return int(inputs["input_ids"].shape[0])


# One token this many times in a row is a loop, never a caption: generation stops there, keeping
# the loop's start, marked truncated (its text flags say what it is).
LOOP_RUN = 16


def loop_end(tokens: list[int]) -> int | None:
    """Where the first run of LOOP_RUN identical tokens ends, or None."""
    run = 0
    for i, token in enumerate(tokens):
        run = run + 1 if i and token == tokens[i - 1] else 1
        if run >= LOOP_RUN:
            return i + 1
    return None
