"""Captions, progress bars and upload-size fitting, without Discord."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from bot import render


def caption(**kw) -> str:
    args = dict(
        prompt="a red fox", seeds=(1234,), sampler="DPM++ 2M", steps=20, cfg=7.0, model="sd15", job_id=9
    )
    args.update(kw)
    return render.caption(**args)


def test_caption_carries_every_fact() -> None:
    text = caption(width=512, height=768)
    assert text.startswith("**a red fox**\n")
    for fact in ("seed 1234", "DPM++ 2M", "20 steps", "CFG 7", "512×768", "sd15", "job #9"):
        assert fact in text


def test_caption_shows_a_seed_range_for_batches_and_fractional_cfg() -> None:
    text = caption(seeds=(10, 11, 12, 13), cfg=6.5)
    assert "seed 10–13" in text and "CFG 6.5" in text


def test_long_prompts_are_truncated_and_the_facts_survive() -> None:
    text = caption(prompt="masterpiece, " * 2000, user_mention="<@1>", note="n" * 5000)
    assert len(text) <= render.MESSAGE_LIMIT
    assert "job #9" in text and "seed 1234" in text and "…" in text


def test_markdown_and_mentions_in_prompts_are_neutralised() -> None:
    text = caption(prompt="**bold** @everyone `code`")
    assert "\\*\\*bold\\*\\*" in text
    assert "@everyone" not in text  # a zero-width space breaks the ping


@given(st.text(max_size=7000), st.text(max_size=300), st.integers(0, 2**32), st.integers(1, 150))
@settings(max_examples=200, deadline=None)
def test_any_caption_fits_discord(prompt: str, model: str, seed: int, steps: int) -> None:
    text = render.caption(
        prompt=prompt,
        seeds=(seed,),
        sampler="Euler a",
        steps=steps,
        cfg=7.5,
        model=model,
        job_id=123456789,
        user_mention="<@123456789012345678>",
    )
    assert 0 < len(text) <= render.MESSAGE_LIMIT
    assert "job #123456789" in text


def test_progress_bar() -> None:
    assert render.progress_bar(0, 20, width=10) == "[░░░░░░░░░░] 0/20"
    assert render.progress_bar(10, 20, width=10) == "[█████░░░░░] 10/20"
    assert render.progress_bar(20, 20, width=10) == "[██████████] 20/20"


@pytest.mark.parametrize("step,total", [(-1, 10), (11, 10), (0, 0)])
def test_progress_bar_refuses_bad_numbers(step: int, total: int) -> None:
    with pytest.raises(ValueError):
        render.progress_bar(step, total)


def test_progress_text_has_percent_eta_and_job() -> None:
    text = render.progress_text(5, 20, 75.4, job_id=3, prompt="a cat")
    assert "5/20" in text and "25%" in text and "ETA 1m 15s" in text and "job #3" in text


@pytest.mark.parametrize(
    "seconds,expected", [(None, "?"), (0, "0s"), (59.4, "59s"), (61, "1m 01s"), (3600 * 2 + 60 * 5, "2h 05m")]
)
def test_format_duration(seconds, expected) -> None:
    assert render.format_duration(seconds) == expected


def test_queued_text() -> None:
    assert "next in line" in render.queued_text(1, 4, job_id=2)
    assert "#5 in the queue" in render.queued_text(5, 100, job_id=2) and "1m 40s" in render.queued_text(
        5, 100, job_id=2
    )


def _noisy_png(size: int, text: str = "a prompt\nSteps: 20, Seed: 1") -> bytes:
    import random

    rng = random.Random(0)
    img = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_small_images_pass_through_untouched() -> None:
    png = _noisy_png(16)
    fitted = render.fit_to_limit(png, 10 * 1024 * 1024, stem="x")
    assert fitted.data == png and fitted.filename == "x.png" and not fitted.resized


@pytest.mark.parametrize("limit", [150_000, 60_000, 8_000])
def test_big_images_are_reencoded_or_downscaled_never_dropped(limit: int) -> None:
    png = _noisy_png(256)
    assert len(png) > limit
    fitted = render.fit_to_limit(png, limit)
    assert fitted.resized and 0 < len(fitted.data) <= limit
    img = Image.open(io.BytesIO(fitted.data))
    img.load()
    assert img.width >= 16  # still a picture
    if fitted.filename.endswith(".jpg"):
        comment = img.getexif().get_ifd(0x8769).get(0x9286)
        assert comment and b"Steps: 20" in comment.replace(b"\x00", b"")


def test_a_reencoded_png_keeps_its_parameters() -> None:
    img = Image.new("RGB", (256, 256), (10, 20, 30))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "flat\nSteps: 5")
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=0)  # bloated on purpose
    png = buf.getvalue()
    fitted = render.fit_to_limit(png, len(png) // 4)
    assert fitted.filename.endswith(".png")
    assert Image.open(io.BytesIO(fitted.data)).info["parameters"] == "flat\nSteps: 5"


def test_absurd_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        render.fit_to_limit(_noisy_png(16), 100)


def test_parameters_text_fits_one_message() -> None:
    text = render.parameters_text("x" * 5000 + "```", job_id=4)
    assert (
        len(text) <= render.MESSAGE_LIMIT and text.startswith("Parameters of job #4") and text.endswith("```")
    )
