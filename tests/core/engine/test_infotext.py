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


# --- reading A1111 1.10 infotext back into settings ---------------------------------------------------

from core.engine.infotext import parse_hashes, settings_from_infotext  # noqa: E402

# Written by hand the way A1111 1.10's create_infotext writes them (key order, quoting, defaults left out).
A1111_HIRES = (
    "masterpiece, best quality, 1girl, <lora:add_detail:0.5>, (smile:1.2)\n"
    "Negative prompt: easynegative, lowres, bad anatomy\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, ENSD: 31337, "
    'Hires prompt: "masterpiece, detailed face", Hires upscale: 2, Hires steps: 15, Hires upscaler: Latent, '
    'Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "easynegative: c74b4e810b03, easynegative: '
    'c74b4e810b03", Version: v1.10.1'
)
A1111_OLD_NAMES = (
    "a photo of a cat\n"
    "Steps: 20, Sampler: DPM++ 2M SDE Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: "
    "cc6cb27103, Model: v1-5-pruned-emaonly, Version: v1.6.0"
)
A1111_IMG2IMG = (
    "portrait of an old man, oil painting\n"
    "Negative prompt: blurry\n"
    "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 5, Size: 768x512, "
    "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.6, Mask blur: 4, Version: v1.10.1"
)
A1111_VARIATION = (
    "a castle on a hill,\nat sunset\n"
    "Steps: 25, Sampler: DDIM, Schedule type: Uniform, CFG scale: 5, Seed: 7, Size: 640x448, Model hash: "
    "31e35c80fc, Model: sd_xl_base_1.0, Variation seed: 99, Variation seed strength: 0.3, RNG: CPU, Eta: 0.67, "
    'ADetailer model: face_yolov8n.pt, ADetailer prompt: "a face, smiling", Version: v1.10.1'
)
A1111_HIRES_RESIZE = (
    "a forest\n"
    "Steps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 3, Size: 512x512, "
    "Denoising strength: 0.7, Hires resize: 1024x1536, Hires upscaler: Lanczos, Version: v1.10.1"
)


def test_a1111_hires_infotext_gives_its_settings() -> None:
    found = settings_from_infotext(A1111_HIRES)
    assert found.fields == {
        "prompt": "masterpiece, best quality, 1girl, <lora:add_detail:0.5>, (smile:1.2)",
        "negative_prompt": "easynegative, lowres, bad anatomy",
        "sampler": "DPM++ 2M",
        "schedule_type": "Karras",
        "width": 512,
        "height": 768,
        "steps": 28,
        "cfg_scale": 7.0,
        "seed": 1234567890,
        "clip_skip": 2,
        "eta_noise_seed_delta": 31337,
        "rng": "gpu",  # missing RNG is A1111's GPU default
        "enable_hr": True,  # Denoising strength + hires keys: the hires pass's strength (A1111's rule)
        "hr_denoising_strength": 0.45,
        "hr_prompt": "masterpiece, detailed face",
        "hr_scale": 2.0,
        "hr_second_pass_steps": 15,
        "hr_upscaler": "Latent",
    }
    assert (found.model_name, found.model_hash, found.ignored) == ("v1-5-pruned-emaonly", "6ce0161689", ())
    GenerationRequest(**found.fields)  # every key is a request field


def test_old_combined_sampler_names_are_split() -> None:
    found = settings_from_infotext(A1111_OLD_NAMES)
    assert (found.fields["sampler"], found.fields["schedule_type"]) == ("DPM++ 2M SDE", "Karras")
    assert found.fields["clip_skip"] == 1 and "negative_prompt" in found.fields  # missing Clip skip = 1
    for name, expected in [
        ("LMS Karras", ("LMS", "Karras")),
        ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
        ("DDIM", ("DDIM", "Automatic")),  # a sampler, though also a schedule label
        ("Euler a", ("Euler a", "Automatic")),
    ]:
        text = f"x\nSteps: 20, Sampler: {name}, CFG scale: 7, Seed: 1, Size: 64x64"
        fields = settings_from_infotext(text).fields
        assert (fields["sampler"], fields["schedule_type"]) == expected


def test_img2img_infotext_gives_the_img2img_strength() -> None:
    found = settings_from_infotext(A1111_IMG2IMG)
    f = found.fields
    assert f["denoising_strength"] == 0.6 and f["enable_hr"] is False and "hr_denoising_strength" not in f
    assert (f["width"], f["height"], f["cfg_scale"], f["mask_blur"]) == (768, 512, 7.5, 4)
    assert found.model_name == "sd_xl_base_1.0"


def test_variation_seed_rng_eta_and_other_tools_keys() -> None:
    found = settings_from_infotext(A1111_VARIATION)
    f = found.fields
    assert f["prompt"] == "a castle on a hill,\nat sunset" and f["negative_prompt"] == ""
    assert (f["subseed"], f["subseed_strength"], f["rng"], f["eta"]) == (99, 0.3, "cpu", 0.67)
    assert (f["sampler"], f["schedule_type"]) == ("DDIM", "Uniform")
    # ADetailer's first pass is read as the job's detailer (issue 15); the server checks its model.
    assert found.ignored == ()
    assert f["detailer"] and f["detailer_prompt"]


def test_hires_resize_box() -> None:
    f = settings_from_infotext(A1111_HIRES_RESIZE).fields
    assert (f["enable_hr"], f["hr_resize_x"], f["hr_resize_y"], f["hr_upscaler"]) == (
        True,
        1024,
        1536,
        "Lanczos",
    )


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("Steps: many, Sampler: Euler, Seed: 1", "Steps: 'many' is not a whole number"),
        ("Steps: 20, CFG scale: high, Seed: 1", "CFG scale: 'high' is not a number"),
        ("Steps: 20, Seed: 1, RNG: dice", "RNG: 'dice'"),
    ],
)
def test_bad_values_are_named(line, why) -> None:
    with pytest.raises(ValueError, match=why):
        settings_from_infotext(f"a cat\n{line}")


def test_plain_text_is_a_prompt() -> None:
    assert (
        settings_from_infotext("just a prompt, no parameters").fields["prompt"]
        == "just a prompt, no parameters"
    )


def test_chant_infotext_round_trips_to_the_same_request() -> None:
    request = GenerationRequest(
        prompt="a boat, (sea:1.2)",
        negative_prompt="fog, rain",
        steps=23,
        cfg_scale=6.5,
        sampler="DPM++ SDE",
        schedule_type="Exponential",
        seed=77,
        subseed=5,
        subseed_strength=0.25,
        width=640,
        height=384,
        clip_skip=2,
        rng="nv",
        eta=0.5,
        eta_noise_seed_delta=31337,
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=9,
        hr_denoising_strength=0.55,
        hr_upscaler="Latent (bicubic)",
    )
    text = infotext_for_request(request, seed=77, subseed=5, ensd=31337, extra={"Eta": 0.5})
    assert GenerationRequest(**settings_from_infotext(text).fields) == request.replace(hr_prompt="")


def test_parse_hashes() -> None:
    assert parse_hashes("add_detail: 7c6bad76eb54, style: 0123456789ab") == {
        "add_detail": "7c6bad76eb54",
        "style": "0123456789ab",
    }
    assert parse_hashes(parse_infotext(A1111_HIRES)["TI hashes"]) == {"easynegative": "c74b4e810b03"}
    assert parse_hashes("not a list") == {}


def test_infotext_module_needs_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, core.engine.infotext as i; i.settings_from_infotext('a'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("key", ["CFG Rescale", "CFG Rescale φ", "CFG Rescale phi", "Rescale CFG"])
def test_cfg_rescale_is_read_under_every_tools_key(key) -> None:
    """chant writes A1111's CFG_Rescale extension's key; that extension also reads the two spelled-out keys
    back, and Forge writes "Rescale CFG"."""
    found = settings_from_infotext(f"a cat\nSteps: 20, Sampler: Euler, Seed: 1, {key}: 0.7")
    assert found.fields["cfg_rescale"] == 0.7 and found.ignored == ()


def test_controlnet_units_are_read_back_as_controls_and_references() -> None:
    """sd-webui-controlnet's keys, as A1111 writes them: units become ``controls`` (without their images),
    an IP-Adapter unit a reference; neither is listed as ignored."""
    from core.engine.infotext import settings_from_infotext
    from core.types import ControlInput, ReferenceInput

    text = (
        "a castle\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, "
        'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8, '
        "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, "
        'Guidance Start: 0.0, Guidance End: 0.6, Pixel Perfect: False, Control Mode: Balanced", '
        'ControlNet 1: "Module: ip-adapter_clip_h, Model: ip-adapter_sd15 [6a3f6166], Weight: 0.7, '
        "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, "
        'Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced", Version: v1.10.1'
    )
    found = settings_from_infotext(text)
    assert found.fields["controls"] == (
        ControlInput(module="canny", model="control_v11p_sd15_canny", weight=0.8, processor_res=512,
                     threshold_a=100.0, threshold_b=200.0, guidance_end=0.6),
    )  # fmt: skip
    assert found.fields["references"] == (ReferenceInput(model="ip-adapter_sd15", scale=0.7),)
    assert not any(k.startswith("ControlNet") for k in found.ignored)
