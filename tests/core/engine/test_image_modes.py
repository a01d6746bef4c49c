"""img2img, inpaint and hires fix: A1111's image preprocessing (PIL) and the engine on the tiny SD1.5 model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.engine import cfg, image_modes
from core.engine.diffusers_engine import DiffusersEngine
from core.types import GenerationError, GenerationRequest, Mode, Progress

from .conftest import engine_settings

SMALL = {"width": 64, "height": 64, "steps": 4, "sampler": "Euler", "seed": 3, "prompt": "a cat"}


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def noise_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    values = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(values, "RGB")


def square_mask(size=(64, 64), box=(24, 24, 40, 40)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def img2img(**changes) -> GenerationRequest:
    return GenerationRequest(mode=Mode.IMG2IMG, init_image=png(noise_image()), **SMALL).replace(**changes)


def inpaint(**changes) -> GenerationRequest:
    return img2img(mode=Mode.INPAINT, mask_image=png(square_mask())).replace(**changes)


class CondSpy:
    """Records (step counter, index of the first job's positive conditioning used) for every call of the
    CFG denoiser."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[tuple[int, int]] = []
        original = cfg.CFGDenoiser.__call__

        def spy(denoiser, x, t):
            part = denoiser.jobs[0].positive[0]
            cond = part.at(denoiser.step)
            self.seen.append((denoiser.step, [c is cond for c in part.conds].index(True)))
            return original(denoiser, x, t)

        monkeypatch.setattr(cfg.CFGDenoiser, "__call__", spy)


# -- image_modes: pure PIL ---------------------------------------------------------------------------


def striped_source() -> Image.Image:
    """100x50: top half yellow, bottom half blue, a green stripe in the first 10 columns."""
    image = Image.new("RGB", (100, 50), (255, 255, 0))
    image.paste((0, 0, 255), (0, 25, 100, 50))
    image.paste((0, 255, 0), (0, 0, 10, 50))
    return image


def test_resize_modes_have_a1111_geometry() -> None:
    source = striped_source()
    stretched = np.asarray(image_modes.resize_image(0, source, 64, 64)).astype(int)
    assert stretched.shape == (64, 64, 3)
    assert stretched[32, 0, 1] > 200 and stretched[32, 0, 0] < 50  # the green stripe survives, stretched
    cropped = np.asarray(image_modes.resize_image(1, source, 64, 64)).astype(int)
    # 100x50 covers 64x64 at 128x64; the centre crop drops 32 columns each side, and the stripe with them.
    assert cropped.shape == (64, 64, 3)
    assert cropped[40, 0, 2] > 200 and cropped[40, 0, 1] < 60  # blue, not green, at the left edge
    assert cropped[10, 0, 0] > 200 and cropped[10, 0, 1] > 200  # yellow
    filled = np.asarray(image_modes.resize_image(2, source, 64, 64)).astype(int)
    # 100x50 fits as 64x32 at rows 16..47; the bands repeat the first and last rows.
    assert filled.shape == (64, 64, 3)
    assert np.abs(filled[0] - filled[16]).max() <= 8 and np.abs(filled[63] - filled[47]).max() <= 8
    assert filled[5, 40, 0] > 200 and filled[5, 40, 2] < 50  # yellow above
    assert filled[58, 40, 2] > 200 and filled[58, 40, 0] < 50  # blue below
    tall = np.asarray(image_modes.resize_image(2, source.rotate(90, expand=True), 64, 64)).astype(int)
    assert np.abs(tall[:, 0] - tall[:, 16]).max() <= 8 and np.abs(tall[:, 63] - tall[:, 47]).max() <= 8
    with pytest.raises(ValueError, match="resize mode"):
        image_modes.resize_image(3, source, 64, 64)


def test_crop_region_pads_and_expands_to_the_target_aspect() -> None:
    mask = square_mask((200, 100), (90, 40, 110, 60))
    assert image_modes.crop_region(mask, 10) == (80, 30, 120, 70)
    assert image_modes.crop_region(Image.new("L", (8, 8)), 4) is None
    assert image_modes.expand_crop_region((80, 30, 120, 70), 64, 64, 200, 100) == (80, 30, 120, 70)
    assert image_modes.expand_crop_region((80, 30, 120, 70), 128, 64, 200, 100) == (60, 30, 140, 70)
    # Near the right edge the box shifts back inside the image instead of shrinking.
    assert image_modes.expand_crop_region((180, 30, 200, 70), 128, 64, 200, 100) == (120, 30, 200, 70)
    # Taller than the image: clipped to it.
    assert image_modes.expand_crop_region((0, 0, 200, 10), 64, 64, 200, 100) == (0, 0, 200, 100)


def test_mask_blur_is_a1111s_gaussian() -> None:
    dot = Image.new("L", (41, 41), 0)
    dot.putpixel((20, 20), 255)
    blurred = np.asarray(image_modes.blur_mask(dot, 4, 0)).astype(int)
    # sigma 4 -> kernel 2 * int(2.5 * 4 + 0.5) + 1 = 21 wide, along x only.
    assert set(np.nonzero(blurred[20])[0]) <= set(range(10, 31)) and blurred[20, 20] == blurred[20].max()
    assert blurred[19].max() == 0 and abs(blurred.sum() - 255) <= 10
    both = np.asarray(image_modes.blur_mask(square_mask(), 4, 4)).astype(int)
    assert both[32, 32] == both.max() and 0 < both[24, 32] < both[32, 32] and both[0, 0] == 0
    assert both[32, 32] == round(255 * sum(image_modes._gaussian_kernel(4)[2:18]) ** 2)  # separable
    assert np.abs(both - both.T).max() <= 1  # the same blur both ways (uint8 rounding between passes)


def test_fill_paints_the_masked_area_with_surrounding_colours() -> None:
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((0, 0, 255), (24, 24, 40, 40))
    filled = np.asarray(image_modes.fill(image, square_mask())).astype(int)
    assert np.array_equal(filled[:24], np.asarray(image)[:24].astype(int))
    assert filled[32, 32, 0] > 150 and filled[32, 32, 2] < 60  # the blue square took the red around it


def test_masks_from_images_and_from_transparency() -> None:
    source = noise_image().convert("RGBA")
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (8, 8, 16, 16))
    source.putalpha(alpha)
    mask = np.asarray(image_modes.mask_from_alpha(source))
    assert mask[10, 10] == 255 and mask[30, 30] == 0 and mask.sum() == 64 * 255
    with pytest.raises(ValueError, match="transparent"):
        image_modes.mask_from_alpha(noise_image())
    grey = Image.new("L", (4, 4), 100)
    assert np.asarray(image_modes.mask_from_image(grey)).max() == 100  # greyscale masks stay soft
    painted = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    painted.putpixel((1, 1), (255, 0, 0, 200))
    assert np.asarray(image_modes.mask_from_image(painted))[1, 1] == 255  # painted strokes (alpha) repaint


def test_load_image_refuses_bad_input() -> None:
    assert image_modes.load_image(png(noise_image(), "JPEG"), max_megapixels=1).size == (64, 64)
    assert image_modes.load_image(png(noise_image(), "WEBP"), max_megapixels=1).size == (64, 64)
    with pytest.raises(ValueError, match="not a PNG, JPEG or WebP"):
        image_modes.load_image(b"hello, not an image", max_megapixels=1)
    with pytest.raises(ValueError, match="GIF"):
        image_modes.load_image(png(noise_image(), "GIF"), max_megapixels=1)
    with pytest.raises(ValueError, match="megapixels"):
        image_modes.load_image(png(noise_image(200, 100)), max_megapixels=0.01)
    data = png(noise_image())
    with pytest.raises(ValueError, match="corrupt"):
        image_modes.load_image(data[: len(data) // 2], max_megapixels=1)
    with pytest.raises(ValueError, match="empty"):
        image_modes.load_image(b"", max_megapixels=1)


def test_hires_target_sizes() -> None:
    assert image_modes.hires_target(512, 512, 2.0) == (1024, 1024, 0, 0)
    assert image_modes.hires_target(512, 768, 1.5) == (768, 1152, 0, 0)
    assert image_modes.hires_target(512, 768, 2.0, 1024, 0) == (1024, 1536, 0, 0)
    assert image_modes.hires_target(512, 768, 2.0, 0, 1024) == (682, 1024, 0, 0)
    # Both sides: cover the box, then crop the latent centrally ((1536 - 1024) // 8 = 64 rows).
    assert image_modes.hires_target(512, 768, 2.0, 1024, 1024) == (1024, 1536, 0, 64)


def test_masked_only_crops_the_masked_box_and_pastes_it_back() -> None:
    source = noise_image(200, 100)
    mask = square_mask((200, 100), (150, 40, 170, 60))
    init = image_modes.prepare_init(
        source, 64, 64, mask=mask, inpaint=True, mask_blur=0, full_res=True, full_res_padding=8
    )
    assert init.paste_to == (142, 32, 36, 36)  # (150 - 8, 40 - 8), 20 + 2 * 8 square
    assert init.image.size == (64, 64) and init.mask.shape == (8, 8)
    # The crop, processed at 64x64, is the source's box resized.
    expected = np.asarray(source.crop((142, 32, 178, 68)).resize((64, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(init.image), expected)
    result = image_modes.apply_overlay(Image.new("RGB", (64, 64), (0, 255, 0)), init.paste_to, init.overlay)
    out, original = np.asarray(result).astype(int), np.asarray(source).astype(int)
    assert result.size == (200, 100)
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], original[keep])  # everything outside the mask is the source
    assert (out[45:55, 155:165] == [0, 255, 0]).all()  # inside: the processed crop, pasted back


# -- the engine on the tiny SD1.5 model ------------------------------------------------------------


def test_strength_decides_how_many_steps_run_and_the_counter_starts_at_zero(sd15_engine, monkeypatch) -> None:
    spy = CondSpy(monkeypatch)
    for strength, calls in ((0.0, 1), (0.3, 2), (0.5, 3), (0.75, 4), (1.0, 4)):
        spy.seen.clear()
        sd15_engine.generate(img2img(denoising_strength=strength))
        # A1111 k-diffusion: t_enc = int(min(strength, 0.999) * steps); t_enc + 1 steps run.
        assert [c for c, _ in spy.seen] == list(range(calls)), strength
    spy.seen.clear()
    # The schedule is built for all 4 steps; the counter restarts at 0 on the first step that runs,
    # so "a [cat:dog:2]" shows cat for counters 0..2 even though these are the last 3 of 4 steps.
    sd15_engine.generate(img2img(prompt="a [cat:dog:2]", denoising_strength=0.5))
    assert spy.seen == [(0, 0), (1, 0), (2, 0)]
    spy.seen.clear()
    sd15_engine.generate(img2img(prompt="a [cat:dog:2]", denoising_strength=1.0))
    assert spy.seen == [(0, 0), (1, 0), (2, 0), (3, 1)]


def test_strength_zero_stays_closest_to_the_source(sd15_engine) -> None:
    """At strength 0 one step runs at the smallest sigma (0.03): the result stays near the source's VAE
    round trip. (The tiny random VAE does not reproduce its input, and its latents are small, so "near"
    is relative: compare with higher strengths, which the random UNet pulls far away.)"""
    request = img2img(denoising_strength=0.0)
    result = sd15_engine.generate(request)
    model = next(iter(sd15_engine.models._models.values()))
    source = image_modes.prepare_init(noise_image(), 64, 64).image
    roundtrip = np.asarray(sd15_engine.decode(model, sd15_engine.encode_images(model, [source]))[0]).astype(
        int
    )

    def distance(strength: float) -> float:
        out = pixels(sd15_engine.generate(request.replace(denoising_strength=strength)).images[0].png)
        return float(np.abs(out - roundtrip).mean())

    assert distance(0.0) < 0.7 * min(distance(0.25), distance(1.0))
    assert "Denoising strength: 0," in result.images[0].infotext


def test_img2img_uses_the_resize_mode_and_progress_counts_the_steps_that_run(sd15_engine) -> None:
    wide = png(striped_source())
    events: list[Progress] = []
    results = [
        sd15_engine.generate(
            img2img(init_image=wide, resize_mode=m, denoising_strength=0.5), on_progress=events.append
        )
        for m in (0, 1, 2)
    ]
    images = [pixels(r.images[0].png) for r in results]
    assert all(i.shape == (64, 64, 3) for i in images)
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    assert [(e.step, e.total) for e in events[:3]] == [(1, 3), (2, 3), (3, 3)]


def test_inpaint_keeps_the_outside_and_repaints_the_inside(sd15_engine) -> None:
    source = pixels(png(noise_image()))
    result = sd15_engine.generate(inpaint(denoising_strength=1.0))
    out = pixels(result.images[0].png)
    # Mask (24..40) blurred by 4 reaches 10 px further (kernel radius 10) and is doubled for the overlay.
    outside = np.ones((64, 64), bool)
    outside[13:51, 13:51] = False
    assert np.array_equal(out[outside], source[outside])
    assert np.abs(out[28:36, 28:36] - source[28:36, 28:36]).mean() > 20
    assert "Mask blur: 4" in result.images[0].infotext


def test_inpaint_mask_from_transparent_pixels(sd15_engine) -> None:
    source = noise_image().convert("RGBA")
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (24, 24, 40, 40))
    source.putalpha(alpha)
    request = inpaint(init_image=png(source), mask_image=None, mask_blur=0)
    out = pixels(sd15_engine.generate(request).images[0].png)
    original = np.asarray(source.convert("RGB")).astype(np.int16)
    outside = np.ones((64, 64), bool)
    outside[24:40, 24:40] = False
    assert np.array_equal(out[outside], original[outside])
    assert np.abs(out[26:38, 26:38] - 255).mean() > 20  # repainted (the flattened source there is white)
    with pytest.raises(GenerationError, match="mask image or a source image with transparent pixels"):
        sd15_engine.generate(request.replace(init_image=png(noise_image())))


def test_a_mask_of_another_size_is_stretched_to_the_source(sd15_engine) -> None:
    small = square_mask((32, 32), (12, 12, 20, 20))
    stretched = small.resize((64, 64), Image.Resampling.LANCZOS)
    a = sd15_engine.generate(inpaint(mask_image=png(small)))
    b = sd15_engine.generate(inpaint(mask_image=png(stretched)))
    assert a.images[0].png == b.images[0].png


def test_masked_only_returns_the_source_size_with_the_outside_untouched(sd15_engine) -> None:
    source = noise_image(128, 96, seed=4)
    mask = square_mask((128, 96), (90, 10, 110, 30))
    request = inpaint(
        init_image=png(source),
        mask_image=png(mask),
        inpaint_full_res=True,
        inpaint_full_res_padding=8,
        mask_blur=2,
    )
    result = sd15_engine.generate(request)
    out, original = pixels(result.images[0].png), np.asarray(source).astype(np.int16)
    assert out.shape == (96, 128, 3)
    far = np.ones((96, 128), bool)
    far[0:40, 80:120] = False
    assert np.array_equal(out[far], original[far])
    assert np.abs(out[14:26, 94:106] - original[14:26, 94:106]).mean() > 10
    assert "Inpaint area: Only masked, Masked area padding: 8" in result.images[0].infotext


def test_masked_content_modes_differ(sd15_engine) -> None:
    outs = [
        pixels(sd15_engine.generate(inpaint(inpainting_fill=f, denoising_strength=0.6)).images[0].png)
        for f in range(4)
    ]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(outs[i][24:40, 24:40], outs[j][24:40, 24:40]), (i, j)
        assert np.array_equal(outs[i][:8], outs[0][:8])  # the outside is the source in every mode


def test_hires_fix_upscales_and_runs_the_rebased_second_pass(sd15_engine, monkeypatch) -> None:
    spy = CondSpy(monkeypatch)
    events: list[Progress] = []
    base = GenerationRequest(**{**SMALL, "prompt": "a [cat:dog:1.5]"}).replace(
        enable_hr=True, hr_scale=1.5, hr_second_pass_steps=3
    )
    result = sd15_engine.generate(base, on_progress=events.append)
    assert pixels(result.images[0].png).shape == (96, 96, 3)
    # First pass: 1.5 x 4 never switches. Hires pass (3 steps): (1.5 - 1) x 3 -> switch after counter 1.
    assert spy.seen == [(0, 0), (1, 0), (2, 0), (3, 0), (0, 0), (1, 0), (2, 1)]
    assert [(e.step, e.total) for e in events] == [(i, 7) for i in range(1, 8)]
    text = result.images[0].infotext
    assert "Size: 64x64" in text and "Denoising strength: 0.7, Hires upscale: 1.5, Hires steps: 3" in text
    assert "Hires upscaler: Latent" in text
    spy.seen.clear()
    lanczos = sd15_engine.generate(
        base.replace(
            hr_upscaler="Lanczos", hr_resize_x=96, hr_resize_y=80, hr_prompt="a fox", hr_second_pass_steps=0
        )
    )
    assert pixels(lanczos.images[0].png).shape == (80, 96, 3)  # covered at 96x96, the latent cropped to 80
    assert len(spy.seen) == 8  # 4 + 4 (0 = the first pass's steps)
    assert "Hires prompt: a fox" in lanczos.images[0].infotext
    assert "Hires resize: 96x80" in lanczos.images[0].infotext


def test_same_request_twice_gives_identical_bytes(sd15_engine) -> None:
    for request in (
        inpaint(inpainting_fill=2),
        GenerationRequest(**SMALL).replace(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2),
    ):
        assert sd15_engine.generate(request).images[0].png == sd15_engine.generate(request).images[0].png


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"init_image": b"\x89PNG\r\n\x1a\n garbage"}, "not a PNG, JPEG or WebP"),
        ({"init_image": None}, "needs a source image"),
        ({"denoising_strength": 1.5}, "denoising strength must be between 0 and 1"),
        ({"denoising_strength": -0.1}, "denoising strength must be between 0 and 1"),
        ({"resize_mode": 3}, "resize mode"),
        ({"mask_image": png(square_mask())}, "a mask needs the inpaint mode"),
        ({"mode": Mode.INPAINT}, "mask image or a source image with transparent pixels"),
        ({"mode": Mode.INPAINT, "mask_image": png(Image.new("L", (64, 64)))}, "mask is empty"),
        ({"mode": Mode.INPAINT, "mask_image": png(square_mask()), "inpainting_fill": 4}, "masked content"),
        ({"mode": Mode.INPAINT, "mask_image": b"nope"}, "mask image is not"),
        ({"enable_hr": True}, "hires fix is a txt2img option"),
    ],
)
def test_bad_image_inputs_get_clear_errors(sd15_engine, changes, message) -> None:
    with pytest.raises(GenerationError, match=message):
        sd15_engine.generate(img2img().replace(**changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hr_upscaler": "ESRGAN"}, "unknown hires upscaler"),
        ({"hr_denoising_strength": 0.0}, "hires denoising strength"),
        ({"hr_scale": 8.0}, "hires upscale must be between 1 and 4"),
        ({"init_image": png(noise_image())}, "txt2img takes no source image"),
    ],
)
def test_bad_hires_options_get_clear_errors(sd15_engine, changes, message) -> None:
    with pytest.raises(GenerationError, match=message):
        sd15_engine.generate(GenerationRequest(**SMALL).replace(enable_hr=True, **changes))


def test_images_over_the_megapixel_limit_are_refused(tiny_sd15) -> None:
    engine = DiffusersEngine(engine_settings(tiny_sd15, max_input_megapixels=0.001))
    with pytest.raises(GenerationError, match=r"the limit is 0\.001 megapixels"):
        engine.generate(img2img())
    engine.close()


def test_inpainting_models_get_the_mask_and_masked_image_as_extra_input(tiny_sd15) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    engine = DiffusersEngine(engine_settings(tiny_sd15))
    engine.generate(GenerationRequest(**{**SMALL, "steps": 1}))
    model = next(iter(engine.models._models.values()))
    torch.manual_seed(0)
    model.pipe.unet = UNet2DConditionModel.from_config({**model.pipe.unet.config, "in_channels": 9}).eval()
    inputs: list[torch.Tensor] = []
    model.pipe.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    source = pixels(png(noise_image()))
    out = pixels(engine.generate(inpaint(mask_blur=0, denoising_strength=1.0)).images[0].png)
    outside = np.ones((64, 64), bool)
    outside[24:40, 24:40] = False
    assert np.array_equal(out[outside], source[outside])
    assert np.abs(out[26:38, 26:38] - source[26:38, 26:38]).mean() > 20
    x = inputs[0]
    assert x.shape[1] == 9
    mask = x[0, 4]  # channel 4: the repaint mask at latent size (64 / 8), rounded
    assert mask[3:5, 3:5].eq(1).all() and mask[0].eq(0).all() and set(mask.unique().tolist()) == {0.0, 1.0}
    inputs.clear()
    engine.generate(img2img())
    assert inputs[0][0, 4].eq(1).all()  # img2img: everything may change
    model.pipe.unet = UNet2DConditionModel.from_config({**model.pipe.unet.config, "in_channels": 8})
    with pytest.raises(GenerationError, match="takes 8 input channels"):
        engine.generate(img2img())
    engine.close()


def test_chant_generate_takes_image_mode_options(tiny_sd15, tmp_path, capsys, monkeypatch) -> None:
    from core.cli import main
    from core.engine.infotext import parse_infotext

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHANT_CONFIG", "")
    noise_image(96, 64).save(tmp_path / "src.png")
    square_mask((96, 64), (40, 20, 60, 40)).save(tmp_path / "mask.png")
    common = ["--model", str(tiny_sd15.folder), "--device", "cpu", "--seed", "1", "--steps", "2"]
    args = ["--init-image", "src.png", "--mask", "mask.png", "--strength", "0.6", "--masked-only"]
    assert main(["generate", "a cat", *common, "--size", "64x64", *args, "-o", "inpaint.png"]) == 0
    image = Image.open(tmp_path / "inpaint.png")
    params = parse_infotext(image.info["parameters"])
    assert image.size == (96, 64) and params["Denoising strength"] == "0.6"
    assert params["Inpaint area"] == "Only masked"
    hires = ["--hires", "--hr-size", "96x0", "--hr-upscaler", "Lanczos", "--hr-steps", "1"]
    assert main(["generate", "a cat", *common, "--size", "64x64", *hires, "-o", "hires.png"]) == 0
    assert Image.open(tmp_path / "hires.png").size == (96, 96)
    assert main(["generate", "a cat", *common, "--init-image", "missing.png"]) == 2
    assert "cannot read missing.png" in capsys.readouterr().err
    assert (
        main(["generate", "a cat", *common, "--size", "64x64", "--init-image", "src.png", "--inpaint"]) == 1
    )
    assert "transparent pixels" in capsys.readouterr().err


def test_img2img_equals_the_diffusers_img2img_pipeline_on_the_same_timesteps(
    sd15_engine, monkeypatch
) -> None:
    """A1111 runs int(0.5 * 4) + 1 = 3 of 4 steps; diffusers' pipeline runs int(0.75 * 4) = 3: the same
    timesteps. With the VAE mean (our choice), the same CPU noise and diffusers' Euler on "linspace"
    timesteps (A1111's Euler but for σ interpolated linearly instead of in log σ between table entries),
    the images are equal to rounding."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as module

    request = img2img(denoising_strength=0.5, rng="cpu", sampler="Euler", negative_prompt="fog")
    ours = pixels(sd15_engine.generate(request).images[0].png)
    model = next(iter(sd15_engine.models._models.values()))
    pipe = StableDiffusionImg2ImgPipeline(**model.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        model.pipe.scheduler.config, timestep_spacing="linspace"
    )
    monkeypatch.setattr(module, "retrieve_latents", lambda out, generator=None: out.latent_dist.mean)
    theirs = pipe(
        "a cat",
        image=noise_image(),
        strength=0.75,
        num_inference_steps=4,
        guidance_scale=7.0,
        negative_prompt="fog",
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    # Equal up to float rounding: the two loops order a few fp32 operations differently, which can move
    # a rare pixel by one 8-bit step (seen: 1 pixel of 4,096 by 1).
    diff = np.abs(ours - np.asarray(theirs).astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def _jpeg_with_orientation(stored: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_sources_are_turned_upright_by_their_exif_orientation(orientation) -> None:
    """A phone photo stored sideways with an orientation tag loads as the user sees it, in the engine
    (``chant generate --init-image``) as from what the bot's upload check stores (the JPEG as sent)."""
    from core.services.images import load_source

    stored = Image.new("RGB", (96, 64), (0, 0, 0))
    stored.paste((255, 0, 0), (0, 0, 48, 32))  # a red quarter, to see where the corner went
    data = _jpeg_with_orientation(stored, orientation)
    image = image_modes.load_image(data, max_megapixels=1)
    expected = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}
    with Image.open(io.BytesIO(data)) as decoded:  # the same JPEG pixels, turned by the EXIF rule
        upright = np.asarray(decoded.convert("RGB").transpose(expected[orientation]))
    assert image.size == upright.shape[1::-1] and np.array_equal(np.asarray(image), upright)
    bot = image_modes.load_image(load_source(data, max_pixels=10**6).data, max_megapixels=1)
    assert bot.size == image.size and np.array_equal(np.asarray(bot), np.asarray(image.convert("RGB")))


def test_every_upscaler_in_ranges_has_an_implementation_and_no_other() -> None:
    from core import ranges

    assert tuple(image_modes.LATENT_UPSCALERS) == ranges.LATENT_UPSCALERS
    assert tuple(image_modes.IMAGE_UPSCALERS) == ranges.IMAGE_UPSCALERS
    assert image_modes.upscaler_names() == list(ranges.UPSCALERS)
