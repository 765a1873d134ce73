"""The caption mix (training/captions.CaptionMix): its syntax, its draws, its refusals."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recaption.training.captions import CaptionMix, MixError, keyed_draw

columns = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True).filter(lambda c: c != "p")  # p: mix:p=P


@st.composite
def mixes(draw):
    names = draw(st.lists(columns, min_size=1, max_size=5, unique=True))
    cuts = sorted(draw(st.lists(st.integers(0, 1000), min_size=len(names) - 1, max_size=len(names) - 1)))
    edges = [0, *cuts, 1000]
    return [(n, (edges[i + 1] - edges[i]) / 1000) for i, n in enumerate(names)]


@settings(max_examples=200, deadline=None)
@given(mixes(), st.floats(0, 1, exclude_max=True))
def test_a_written_mix_parses_back_and_draws_only_its_columns(weights, u):
    spec = "mix:" + ",".join(f"{c}={w}" for c, w in weights)
    mix = CaptionMix.parse(spec)
    assert mix.columns == tuple(c for c, _ in weights)
    assert CaptionMix.parse(mix.spec) == mix  # the recorded spec is the same mix
    drawn = mix.draw(u)
    assert drawn in mix.columns and dict(mix.weights)[drawn] > 0


@settings(max_examples=200, deadline=None)
@given(mixes(), st.floats(0.001, 0.5))
def test_weights_that_do_not_sum_to_one_are_refused_in_one_line(weights, extra):
    spec = ",".join(f"{c}={w}" for c, w in weights) + f",zz_extra={extra}"
    with pytest.raises(MixError, match="sum to .*, not 1") as error:
        CaptionMix.parse(spec)
    assert "\n" not in str(error.value)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30))
def test_any_text_parses_or_is_one_line_naming_the_form(text):
    try:
        CaptionMix.parse(text)
    except MixError as error:
        assert "\n" not in str(error) and ("mix:p=P" in str(error) or "sum to" in str(error)
                                           or "named twice" in str(error) or "probability in" in str(error))


@pytest.mark.parametrize(("spec", "says"), [
    ("mix:re_caption=0.5,re_caption=0.5", "named twice"),
    ("mix:re_caption=1.5,org_caption=-0.5", "a probability in [0, 1]"),
    ("mix:re_caption=nan,org_caption=1", "mix:p=P"),
    ("mix:p=1.2", "mix:p=P with P in [0, 1]"),
    ("mix:", "mix:p=P"),
])
def test_malformed_mixes(spec, says):
    with pytest.raises(MixError, match=says.replace("[", r"\[").replace("]", r"\]")):
        CaptionMix.parse(spec)


def test_the_paper_mix_draws_as_before_and_empty_captions_fall_back():
    paper = CaptionMix.parse("mix:p=0.8")
    assert paper.spec == "mix:p=0.8" and paper.columns == ("org_caption", "re_caption")
    for key in map(str, range(200)):
        u = keyed_draw(key, 3)
        assert (paper.draw(u) == "org_caption") == (u < 0.8)
    mix = CaptionMix.parse("re_caption_short=0.5,org_caption=0.5")
    assert mix.pick({"re_caption_short": " ", "org_caption": "a cat"}, 0.1) == ("a cat", "org_caption", True)
    fell_back = ("cat", "re_caption_short", True)
    assert mix.pick({"re_caption_short": "cat", "org_caption": None}, 0.9) == fell_back
    rng = random.Random(0)
    counts = {c: 0 for c in mix.columns}
    for _ in range(4000):
        counts[mix.draw(rng.random())] += 1
    assert abs(counts["org_caption"] / 4000 - 0.5) < 0.05


def test_a_mix_spec_reads_back_as_the_same_weights():
    from recaption.training.captions import CaptionMix

    mix = CaptionMix.parse("mix:re_caption=0.1000009,org_caption=0.2000009,re_caption_fused=0.6999991")
    assert CaptionMix.parse(mix.spec).weights == mix.weights
