import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from core.engine.infotext import (
    build_infotext,
    infotext_for_request,
    parse_infotext,
    png_with_infotext,
    quote,
)
from core.types import GenerationRequest, Mode

BASE = dict(steps=20, sampler="Euler a", cfg_scale=7.0, seed=1, width=512, height=512)


def test_full_line_in_a1111_order():
    text = build_infotext(
        "a cat, (masterpiece:1.2)",
        "blurry",
        steps=20,
        sampler="DPM++ 2M",
        schedule_type="Karras",
        cfg_scale=7.5,
        seed=1,
        width=512,
        height=768,
        model_hash="abcdef1234",
        model_name="sd15",
        subseed=5,
        subseed_strength=0.3,
        denoising_strength=0.7,
        clip_skip=2,
        ensd=31337,
        rng="nv",
        extra={"Hires upscale": 2.0, "Hires steps": 10, "Hires upscaler": "Latent"},
        version="chant 0.1.0",
    )
    assert text == (
        "a cat, (masterpiece:1.2)\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1, Size: 512x768, "
        "Model hash: abcdef1234, Model: sd15, Variation seed: 5, Variation seed strength: 0.3, "
        "Denoising strength: 0.7, Clip skip: 2, ENSD: 31337, RNG: NV, Hires upscale: 2, Hires steps: 10, "
        "Hires upscaler: Latent, Version: chant 0.1.0"
    )


def test_defaults_are_left_out():
    text = build_infotext(
        "a cat", **BASE, clip_skip=1, subseed=9, subseed_strength=0.0, ensd=0, rng="gpu", version="v"
    )
    assert (
        text
        == "a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, Version: v"
    )


def test_default_version_names_chant():
    last = build_infotext("x", **BASE).split(", ")[-1]
    assert last.startswith("Version: chant ") and len(last) > len("Version: chant ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7.0, "7"),
        (7.5, "7.5"),
        (0.3, "0.3"),
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("k: v", '"k: v"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi", ok', '"say \\"hi\\", ok"'),
        ("ünï, cödé", '"ünï, cödé"'),
    ],
)
def test_quote_like_a1111(value, expected):
    assert quote(value) == expected


def test_round_trip():
    text = build_infotext(
        "line one\nline two, (x:1.1)",
        "neg one\nneg two",
        **{**BASE, "cfg_scale": 6.5},
        model_name="my, model: v2",
        model_hash="0123456789",
        clip_skip=2,
        extra={"Lora hashes": "a: 1234, b: 5678"},
    )
    res = parse_infotext(text)
    assert res["Prompt"] == "line one\nline two, (x:1.1)"
    assert res["Negative prompt"] == "neg one\nneg two"
    assert res["Steps"] == "20" and res["Sampler"] == "Euler a" and res["CFG scale"] == "6.5"
    assert res["Model"] == "my, model: v2"
    assert res["Lora hashes"] == "a: 1234, b: 5678"
    assert (res["Size-1"], res["Size-2"]) == ("512", "512")
    assert res["Clip skip"] == "2" and res["Seed"] == "1"


def test_parse_real_a1111_text_and_defaults():
    text = (
        "masterpiece, 1girl\nNegative prompt: lowres, bad anatomy\n"
        "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 2270513414, Size: 512x768, "
        'Model hash: 7f96a1a9ca, Model: AnythingV5, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
    )
    res = parse_infotext(text)
    assert res["Prompt"] == "masterpiece, 1girl"
    assert res["Negative prompt"] == "lowres, bad anatomy"
    assert res["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert res["Version"] == "v1.10.1"
    assert res["Clip skip"] == "1" and res["RNG"] == "GPU"


def test_a_last_line_with_few_pairs_is_prompt():
    res = parse_infotext("a photo\nstyle: film, grain")
    assert res["Prompt"] == "a photo\nstyle: film, grain"
    assert "style" not in res


@given(st.text(max_size=300))
def test_parse_never_raises(text):
    res = parse_infotext(text)
    assert isinstance(res["Prompt"], str)


@given(
    prompt=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80).map(str.strip),
    negative=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80).map(str.strip),
    cfg=st.sampled_from([1.0, 4.5, 7.0, 7.5, 12.25]),
    seed=st.integers(0, 2**32 - 1),
    model=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30).map(str.strip),
)
def test_round_trip_property(prompt, negative, cfg, seed, model):
    if prompt.startswith("Negative prompt:") or not model:
        return
    text = build_infotext(prompt, negative, **{**BASE, "cfg_scale": cfg, "seed": seed}, model_name=model)
    res = parse_infotext(text)
    if negative:
        assert res["Negative prompt"] == negative
    assert float(res["CFG scale"]) == cfg and int(res["Seed"]) == seed
    assert res["Model"] == model


def test_request_helper_txt2img_hires_and_img2img():
    req = GenerationRequest(
        prompt="a cat", sampler="DPM++ 2M", steps=25, cfg_scale=7.0, width=512, height=640
    )
    text = infotext_for_request(req, seed=42, schedule_type="Karras", model_name="m", model_hash="h" * 10)
    assert (
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x640" in text
    )
    assert "Denoising strength" not in text

    hires = req.replace(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=0, hr_denoising_strength=0.45)
    text = infotext_for_request(hires, seed=42)
    assert "Denoising strength: 0.45, Hires upscale: 1.5, Hires upscaler: Latent, Version" in text
    assert "Hires steps" not in text

    img2img = req.replace(mode=Mode.IMG2IMG, denoising_strength=0.6)
    assert "Seed: 7, Size: 512x640, Denoising strength: 0.6, Version" in infotext_for_request(img2img, seed=7)


def test_png_carries_parameters_chunk():
    text = build_infotext("ünïcödé prompt, 猫", "neg", **BASE)
    data = png_with_infotext(Image.new("RGB", (8, 8), (10, 20, 30)), text)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as img:
        assert img.info["parameters"] == text
        assert img.size == (8, 8) and img.getpixel((0, 0)) == (10, 20, 30)


def test_png_latin1_text_uses_text_chunk():
    data = png_with_infotext(Image.new("RGB", (4, 4)), build_infotext("plain", **BASE))
    assert b"tEXtparameters\x00" in data
    with Image.open(io.BytesIO(data)) as img:
        assert parse_infotext(img.info["parameters"])["Prompt"] == "plain"
