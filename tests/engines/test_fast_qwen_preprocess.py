"""The Qwen2-VL fast preprocessing path gives the processor's own output: the same grids, the
same patches (to float32 rounding), for any size, aspect ratio and min/max pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from recaption.preprocess import FastQwenVLPreprocessor


def processor(**kwargs):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**kwargs)


SETTINGS = [{}, {"min_pixels": 56 * 56, "max_pixels": 448 * 448}, {"max_pixels": 28 * 28 * 4}]


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_fast_qwen_matches_the_processor(kwargs):
    ip = processor(**kwargs)
    assert FastQwenVLPreprocessor.supports(ip)
    fast = FastQwenVLPreprocessor(ip)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
              for w, h in [(640, 480), (37, 90), (2000, 60), (300, 300), (501, 333)]]
    images.append(images[0].convert("L"))  # greyscale: converted to RGB as the processor does
    ours = fast(images)
    theirs = ip(images=images, return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    assert torch.allclose(ours["pixel_values"], theirs["pixel_values"].float(), atol=1e-5)


def test_other_processors_are_not_taken_for_qwen():
    from transformers import CLIPImageProcessor

    assert not FastQwenVLPreprocessor.supports(CLIPImageProcessor())
