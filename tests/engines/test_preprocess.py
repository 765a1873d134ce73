import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from recaption.preprocess import FastClipPreprocessor


def _images():
    rng = np.random.default_rng(0)
    sizes = [(336, 336), (100, 300), (401, 77), (1, 1), (700, 500), (50, 51)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.mark.parametrize("which", ["llava_pad_square", "clip_center_crop"])
def test_fast_path_matches_the_image_processor(which, captioner):
    ip = captioner.processor.image_processor if which == "llava_pad_square" else CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    assert FastClipPreprocessor.supports(ip)
    fast = FastClipPreprocessor(ip)
    for img in _images():
        ref = ip([img], return_tensors="np")["pixel_values"][0]
        got = fast.image(img)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() < 1e-5, img.size


def test_prepare_fast_path_equals_processor_path(captioner):
    images = _images()
    prompt = captioner.preparer.plain_prompt
    fast = captioner.prepare(images, [prompt] * len(images))
    slow = captioner.processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
    assert torch.equal(fast["input_ids"], slow["input_ids"])
    assert torch.equal(fast["attention_mask"], slow["attention_mask"])
    assert torch.allclose(fast["pixel_values"], slow["pixel_values"], atol=1e-5)
