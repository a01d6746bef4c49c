"""The one job cost: pixels × steps × images, img2img's strength tail, hires fix's second pass."""

from __future__ import annotations

import pytest

from core.cost import STANDARD_PIXEL_STEPS, pixel_steps, standard_images
from core.types import GenerationRequest, Mode


def test_a_standard_image_costs_one() -> None:
    plain = GenerationRequest("x", width=512, height=512, steps=20)
    assert pixel_steps(plain) == STANDARD_PIXEL_STEPS
    assert standard_images(pixel_steps(plain)) == 1.0
    assert standard_images(pixel_steps(plain.replace(width=1024, height=1024, count=2))) == 8.0


def test_img2img_counts_the_strength_tail_and_hires_its_second_pass() -> None:
    base = GenerationRequest("x", width=512, height=512, steps=20)
    img2img = base.replace(mode=Mode.IMG2IMG, denoising_strength=0.5)
    assert pixel_steps(img2img) == 512 * 512 * 10
    assert pixel_steps(img2img.replace(denoising_strength=0.0)) == 512 * 512 * 1  # at least one step
    hires = base.replace(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=10, hr_denoising_strength=0.5)
    assert pixel_steps(hires) == 512 * 512 * 20 + 1024 * 1024 * 5
    boxed = hires.replace(hr_resize_x=768, hr_resize_y=640, hr_second_pass_steps=0)  # 0: the first pass's
    assert pixel_steps(boxed) == 512 * 512 * 20 + 768 * 640 * 10
    assert pixel_steps(hires.replace(count=3)) == 3 * pixel_steps(hires)


def test_no_job_is_free() -> None:
    assert standard_images(0.0) == pytest.approx(1e-6)
