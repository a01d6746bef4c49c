"""The one job cost: UNet rows × pixels × model calls — AND parts, chunks, second-order samplers,
img2img's strength tail, hires fix's second pass — plus the text encoder's extra chunks."""

from __future__ import annotations

import pytest

from core.cost import (
    CHUNK_SHARE,
    STANDARD_PIXEL_STEPS,
    TEXT_CHUNK_PIXEL_STEPS,
    job_cost,
    model_calls,
    prompt_shape,
    standard_images,
)
from core.ranges import SECOND_ORDER_SAMPLERS
from core.types import GenerationRequest, Mode

PLAIN = GenerationRequest("a cat", width=512, height=512, steps=20)


def test_a_standard_image_costs_one() -> None:
    assert job_cost(PLAIN) == STANDARD_PIXEL_STEPS
    assert standard_images(job_cost(PLAIN)) == 1.0
    assert standard_images(job_cost(PLAIN.replace(width=1024, height=1024, count=2))) == 8.0


def test_img2img_counts_the_strength_tail_and_hires_its_second_pass() -> None:
    img2img = PLAIN.replace(mode=Mode.IMG2IMG, denoising_strength=0.5)
    assert job_cost(img2img) == 512 * 512 * 10
    assert job_cost(img2img.replace(denoising_strength=0.0)) == 512 * 512 * 1  # at least one step
    hires = PLAIN.replace(enable_hr=True, hr_scale=2.0, hr_second_pass_steps=10, hr_denoising_strength=0.5)
    assert job_cost(hires) == 512 * 512 * 20 + 1024 * 1024 * 5
    boxed = hires.replace(hr_resize_x=768, hr_resize_y=640, hr_second_pass_steps=0)  # 0: the first pass's
    assert job_cost(boxed) == 512 * 512 * 20 + 768 * 640 * 10
    assert job_cost(hires.replace(count=3)) == 3 * job_cost(hires)


def test_every_and_part_is_one_more_unet_row() -> None:
    """A plain prompt runs two rows per model call (cond + uncond); n AND parts run n + 1."""
    three = PLAIN.replace(prompt="a cat AND a dog AND a bird")
    assert prompt_shape(three.prompt, 20).parts == 3
    text = TEXT_CHUNK_PIXEL_STEPS * 2  # two texts more to encode than a plain prompt ("a dog", "a bird")
    assert job_cost(three) == pytest.approx(STANDARD_PIXEL_STEPS * 4 / 2 + text)


def test_a_thousand_and_parts_cost_what_they_run() -> None:
    """Issue 18: 1,000 AND parts in 6,000 characters were charged as one plain prompt."""
    thousand = PLAIN.replace(prompt=" AND ".join(["a"] * 1000))
    assert len(thousand.prompt) <= 6000
    shape = prompt_shape(thousand.prompt, 20)
    assert (shape.parts, shape.max_chunks) == (1000, 1)
    ratio = job_cost(thousand) / job_cost(PLAIN)
    print(f"cost of 1,000 AND parts / a plain prompt: {ratio:.1f}")
    assert ratio == pytest.approx(1001 / 2, rel=1e-5)  # 1,001 UNet rows against 2 (+ "a ", " a ", " a")


def test_chunks_lengthen_every_row_and_cost_the_text_encoder() -> None:
    breaks = PLAIN.replace(prompt="a" + " BREAK a" * 856)
    shape = prompt_shape(breaks.prompt, 20)
    assert shape.max_chunks == 857 and shape.encoded == 857
    unet = STANDARD_PIXEL_STEPS * (1 + CHUNK_SHARE * 856 + 1) / 2  # the cond row is 857 chunks long
    assert job_cost(breaks) == pytest.approx(unet + TEXT_CHUNK_PIXEL_STEPS * 856)
    assert job_cost(breaks) / job_cost(PLAIN) > 5
    # a long negative prompt lengthens the uncond row the same way
    long_negative = PLAIN.replace(negative_prompt="ugly, " * 100)  # 200 tokens: 3 chunks
    assert prompt_shape(long_negative.negative_prompt, 20, negative=True).max_chunks == 3
    assert job_cost(long_negative) == pytest.approx(
        STANDARD_PIXEL_STEPS * (1 + 1 + CHUNK_SHARE * 2) / 2 + TEXT_CHUNK_PIXEL_STEPS * 2
    )


def test_prompt_editing_counts_the_chunks_of_each_step_and_encodes_each_text_once() -> None:
    # A1111's step counter 0..10 uses the 2-chunk text (its schedule entry ends at 10), 11..19 the short one
    long = "word " * 80
    edited = PLAIN.replace(prompt=f"[{long}:short:10]")
    shape = prompt_shape(edited.prompt, 20)
    assert shape.max_chunks == 2 and shape.mean_chunks == pytest.approx((11 * 2 + 9 * 1) / 20)
    assert shape.encoded == 3


def test_second_order_samplers_call_the_model_twice_per_step_but_the_last() -> None:
    assert "Heun" in SECOND_ORDER_SAMPLERS and "Euler a" not in SECOND_ORDER_SAMPLERS
    assert model_calls("Heun", 20) == 39 and model_calls("Euler a", 20) == 20
    assert model_calls("DPM++ SDE Karras", 10) == 19  # an old combined name with its schedule
    assert model_calls("DPM++ 2M SDE", 10) == 10  # not "DPM++ SDE"
    assert job_cost(PLAIN.replace(sampler="DPM2 a")) == 512 * 512 * 39


def test_an_unreadable_prompt_is_costed_as_literal_text() -> None:
    for prompt in ("a AND [b:1e999]", "a (red:1.2.3) fox"):  # refused by the submit checks, not here
        broken = PLAIN.replace(prompt=prompt)
        assert prompt_shape(broken.prompt, 20).parts == 1  # one literal part
        assert job_cost(broken) == STANDARD_PIXEL_STEPS


def test_no_job_is_free() -> None:
    assert standard_images(0.0) == pytest.approx(1e-6)


def test_control_units_and_references_count() -> None:
    from core.types import ControlInput, ReferenceInput

    plain = GenerationRequest(prompt="a cat", width=512, height=512, steps=20)
    unit = ControlInput(image=b"x", model="canny")
    one = job_cost(plain.replace(controls=(unit,)))
    assert one > job_cost(plain)
    two = job_cost(plain.replace(controls=(unit, unit)))
    assert two - job_cost(plain) == pytest.approx(2 * (one - job_cost(plain)))
    half = job_cost(plain.replace(controls=(ControlInput(image=b"x", model="canny", guidance_end=0.5),)))
    assert job_cost(plain) < half < one
    assert job_cost(plain.replace(controls=(ControlInput(image=b"x", model="c", weight=0.0),))) == job_cost(plain)
    assert job_cost(plain.replace(references=(ReferenceInput(image=b"x"),))) > job_cost(plain)
