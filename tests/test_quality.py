"""Caption quality flags, CLIP scores, the judge's parser and the report."""

from __future__ import annotations

import pytest

from recaption.quality.flags import is_boilerplate, is_repetitive, repetition_rate

NATURAL = (
    "A brown horse stands in a green field in front of a wooden fence, with trees in the background "
    "and a cloudy sky above. The horse has a white blaze on its face and looks towards the camera, "
    "while a second horse grazes in the background near the fence."
)
LOOP = "A cat sits on a red sofa. " + "The cat is looking at the camera. " * 6


def test_repetition_flags_loops_not_natural_repeats():
    rate, repeats = repetition_rate(NATURAL)
    assert repeats < 3 and rate < 0.1  # "in the background" twice is no loop
    assert is_repetitive(NATURAL) is False
    rate, repeats = repetition_rate(LOOP)
    assert rate > 0.6 and is_repetitive(LOOP) is True
    assert is_repetitive("short caption") is False and is_repetitive(None) is None
    # Hand count: 8 words -> 5 four-grams; "a b c d a b c d" repeats "a b c d" once (1/5).
    assert repetition_rate("a b c d a b c d") == (pytest.approx(1 / 5), 1)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The image shows a dog on a beach.", True),
        ("This photograph depicts a mountain lake.", True),
        ("In this image, a woman is reading.", True),
        ("the picture features two cups", True),
        ("A dog runs on a beach at sunset.", False),
        ("Images of the moon are shown on a screen.", False),
        (None, None),
    ],
)
def test_boilerplate_openers(text, expected):
    assert is_boilerplate(text) is expected
