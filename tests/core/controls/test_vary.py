"""Vary subtle / strong: the request, A1111's seeds for a variation job, and why 0.15 and 0.5."""

from __future__ import annotations

import math

import pytest
import torch

from core.controls.vary import STRONG, SUBTLE, ImageSeeds, image_seeds, vary
from core.types import GenerationRequest, Mode


def test_vary_request() -> None:
    base = GenerationRequest(prompt="__animal__ in a field", seed=100, count=4, steps=30, enable_hr=True,
                             mode=Mode.IMG2IMG, init_image=b"png", denoising_strength=0.6)  # fmt: skip
    subtle = vary(base, image_seed=102, strength="subtle", subseed=777)
    assert (subtle.seed, subtle.subseed, subtle.subseed_strength, subtle.count) == (102, 777, SUBTLE, 4)
    assert (subtle.steps, subtle.enable_hr, subtle.mode, subtle.init_image, subtle.denoising_strength) == (
        30, True, Mode.IMG2IMG, b"png", 0.6)  # fmt: skip
    strong = vary(base, image_seed=102, strength="strong", subseed=5, count=1, prompt="a fox in a field")
    assert (strong.subseed_strength, strong.count, strong.prompt) == (STRONG, 1, "a fox in a field")
    assert vary(base, image_seed=0, strength=0.3, subseed=0).subseed_strength == 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": "wild"}, "one of subtle, strong or a number"),
        ({"strength": 0.0}, "above 0 and at most 1"),
        ({"strength": 1.5}, "above 0 and at most 1"),
        ({"image_seed": -1}, "image_seed must be between 0 and 4294967295"),
        ({"subseed": 2**32}, "subseed must be between"),
    ],
)
def test_vary_refuses(kwargs: dict, message: str) -> None:
    args = {"image_seed": 1, "strength": "subtle", "subseed": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        vary(GenerationRequest(prompt="x"), **args)


def test_image_seeds_follow_a1111() -> None:
    # processing.py: all_seeds = seed + (i if subseed_strength == 0 else 0); all_subseeds = subseed + i
    assert image_seeds(10, 50, 0.0, 3) == [ImageSeeds(10, 50), ImageSeeds(11, 51), ImageSeeds(12, 52)]
    assert image_seeds(10, 50, SUBTLE, 3) == [ImageSeeds(10, 50), ImageSeeds(10, 51), ImageSeeds(10, 52)]


@pytest.mark.parametrize(("strength", "kept"), [(SUBTLE, 0.972), (0.25, 0.924), (STRONG, 0.707)])
def test_strengths_keep_the_share_of_noise_the_docstring_says(strength: float, kept: float) -> None:
    """With A1111's slerp (the engine's own), the varied noise correlates cos(tπ/2) with the image's."""
    from core.engine.rng import slerp

    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((4, 64, 64), generator=generator)
    other = torch.randn((4, 64, 64), generator=generator)
    mixed = slerp(strength, noise, other)
    correlation = torch.corrcoef(torch.stack([mixed.flatten(), noise.flatten()]))[0, 1].item()
    assert correlation == pytest.approx(math.cos(strength * math.pi / 2), abs=0.01)
    assert correlation == pytest.approx(kept, abs=0.01)
