"""What every captioning engine gives the pipeline.

An engine has two halves. Its `preparer` does the CPU work (prompt rendering, image encoding or
preprocessing) and is picklable, so loader workers run it in parallel with generation. The
engine itself turns prepared inputs into `Generation`s on a GPU, through vLLM or over HTTP.

    engine.setup()                       load weights / open connections (once, in the worker)
    engine.preparer.plain_prompt         the instruction in the form `prepare` expects
    engine.preparer.conditional_prompt(alt_text)
    engine.preparer.prepare(images, prompts) -> inputs
    engine.generate(inputs, sample=False, seed=None) -> list[Generation]
    engine.device                        "cuda:0", "cpu", or "remote"
    engine.batches_in_flight             how many batches the pipeline may hand over at once
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Generation:
    text: str | None
    num_tokens: int  # generated tokens up to and including the end-of-turn token
    truncated: bool  # stopped by max_new_tokens rather than by the model
    error: str | None = None  # this one sample failed (the rest of its batch did not)


def slice_inputs(inputs, i: int):
    """Row i of a batch of prepared inputs, as a batch of one."""
    if isinstance(inputs, list):
        return inputs[i : i + 1]
    # A processor BatchFeature: left padding stays, the attention mask still marks it.
    return type(inputs)({k: v[i : i + 1] for k, v in inputs.items()})


def batch_rows(inputs) -> int:
    if isinstance(inputs, list):
        return len(inputs)
    return int(inputs["input_ids"].shape[0])
