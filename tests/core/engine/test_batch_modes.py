"""img2img, inpaint and hires-fix jobs in one denoising loop: every image equals its job run alone.

As tests/core/engine/test_batch.py: decoded float images within 1e-4 (CPU, fp32), plus the final PNGs
(after inpaint's paste-back and overlay) within one 8-bit step of the job's PNG alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine import grouping
from core.engine.diffusers_engine import DiffusersEngine
from core.types import GenerationCancelled, GenerationError, GenerationRequest, GenerationResult, Mode
from tests.core.engine.conftest import engine_settings
from tests.core.engine.test_batch import DecodeSpy, decoded
from tests.core.engine.test_image_modes import noise_image, pixels, png, square_mask

TOLERANCE = 1e-4
PIXEL_ROUNDING_TOLERANCE = 5e-4  # after an 8-bit round trip between passes (hires fix with an image upscaler)
BASE = {"width": 64, "height": 64, "steps": 4, "rng": "cpu"}


def holed(seed: int) -> Image.Image:
    """A source whose transparent square (16..32) is the area to repaint."""
    image = noise_image(seed=seed).convert("RGBA")
    alpha = Image.new("L", (64, 64), 255)
    alpha.paste(0, (16, 16, 32, 32))
    image.putalpha(alpha)
    return image


IMG2IMG = [
    GenerationRequest(
        mode=Mode.IMG2IMG,
        init_image=png(noise_image(seed=1)),
        prompt="a red [cat:dog:2] on a chair",
        negative_prompt="blurry",
        cfg_scale=7.0,
        seed=11,
        denoising_strength=0.6,
        **BASE,
    ),
    GenerationRequest(
        mode=Mode.IMG2IMG,
        init_image=png(noise_image(96, 64, seed=2)),
        resize_mode=1,
        prompt="a red cat AND a (blue:1.3) chair :0.6",
        cfg_scale=4.5,
        seed=22,
        count=2,
        denoising_strength=0.6,
        **BASE,
    ),
    GenerationRequest(
        mode=Mode.IMG2IMG,
        init_image=png(noise_image(seed=3)),
        prompt="an astronaut",
        negative_prompt="low quality, " * 40,  # another token length: its own UNet rows
        cfg_scale=9.0,
        seed=33,
        subseed=7,
        subseed_strength=0.4,
        eta_noise_seed_delta=31337,
        denoising_strength=0.6,
        **BASE,
    ),
]

INPAINT = [
    IMG2IMG[0].replace(
        mode=Mode.INPAINT, mask_image=png(square_mask()), inpainting_fill=1, denoising_strength=0.8
    ),
    IMG2IMG[1].replace(  # mask from the source's transparency, "latent noise"
        mode=Mode.INPAINT, init_image=png(holed(4)), mask_blur=0, inpainting_fill=2, denoising_strength=0.8
    ),
    IMG2IMG[2].replace(  # "fill", masked only: a 96x80 source, its box processed at 64x64 and pasted back
        mode=Mode.INPAINT,
        init_image=png(noise_image(96, 80, seed=5)),
        mask_image=png(square_mask((96, 80), (60, 20, 76, 36))),
        inpainting_fill=0,
        inpaint_full_res=True,
        inpaint_full_res_padding=8,
        denoising_strength=0.8,
    ),
]

HIRES = [
    GenerationRequest(
        prompt="a red [cat:dog:2] on a chair",
        hr_prompt="a red [cat:fox:0.5] on a chair",  # its own hires schedule
        negative_prompt="blurry",
        cfg_scale=7.0,
        seed=11,
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=3,
        hr_denoising_strength=0.6,
        **BASE,
    ),
    GenerationRequest(
        prompt="a red cat AND a (blue:1.3) chair :0.6",
        hr_negative_prompt="grainy",
        cfg_scale=4.5,
        seed=22,
        count=2,
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=3,
        hr_denoising_strength=0.6,
        **BASE,
    ),
    GenerationRequest(
        prompt="an astronaut",
        negative_prompt="low quality, " * 40,
        cfg_scale=9.0,
        seed=33,
        subseed=7,
        subseed_strength=0.4,
        enable_hr=True,
        hr_scale=1.5,
        hr_second_pass_steps=3,
        hr_denoising_strength=0.6,
        **BASE,
    ),
]


def alone_and_batched(engine: DiffusersEngine, jobs, **kwargs):
    """Each job alone (its result and final latents), then all together (results, every decode's latents)."""
    spy = DecodeSpy(engine)
    alone = []
    for job in jobs:
        spy.latents.clear()
        alone.append((engine.generate(job), spy.latents[-1]))
    spy.latents.clear()
    together = engine.generate_batch(jobs, **kwargs)
    return alone, together, list(spy.latents)


def assert_as_alone(engine, alone, results, final_latents, what: str, tolerance: float = TOLERANCE) -> float:
    """Each batched job's decoded floats within ``tolerance`` of its job alone, and its PNGs within 1 step."""
    assert final_latents.shape[0] == sum(latents.shape[0] for _, latents in alone)
    pieces = final_latents.split([latents.shape[0] for _, latents in alone])
    worst, worst_pixel = 0.0, 0
    for (single, latents), piece, result in zip(alone, pieces, results, strict=True):
        assert isinstance(result, GenerationResult), result
        assert [i.seed for i in result.images] == [i.seed for i in single.images]
        assert [i.infotext for i in result.images] == [i.infotext for i in single.images]
        a, b = decoded(engine, latents), decoded(engine, piece)
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        worst = max(worst, float((a - b).abs().max()))
        for image_alone, image_batched in zip(single.images, result.images, strict=True):
            x, y = pixels(image_alone.png), pixels(image_batched.png)
            assert x.shape == y.shape
            worst_pixel = max(worst_pixel, int(np.abs(x - y).max()))
    assert worst <= tolerance, f"{what}: max abs difference {worst}"
    assert worst_pixel <= 1, f"{what}: PNGs differ by {worst_pixel} levels"
    print(f"{what}: max abs difference batched vs alone {worst:.2e} (PNG: {worst_pixel} levels)")
    return worst


@pytest.fixture
def engine(tiny_sd15):
    engine = DiffusersEngine(engine_settings(tiny_sd15))
    yield engine
    engine.close()


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE"])
def test_img2img_jobs_batch_each_as_alone(engine, sampler) -> None:
    jobs = [job.replace(sampler=sampler) for job in IMG2IMG]
    alone, together, calls = alone_and_batched(engine, jobs)
    assert len(calls) == 1, "one loop and one VAE call for the whole batch"
    assert [r.timings["batch_jobs"] for r in together] == [3.0, 3.0, 3.0]
    assert_as_alone(engine, alone, together, calls[0], f"img2img {sampler}")
    assert not torch.allclose(calls[0][0], calls[0][3], atol=1e-2)  # the jobs really differ


def test_inpaint_jobs_batch_each_pasted_onto_its_own_source(engine) -> None:
    jobs = [job.replace(sampler="DPM++ 2M") for job in INPAINT]
    alone, together, calls = alone_and_batched(engine, jobs)
    assert len(calls) == 1 and together[0].timings["batch_jobs"] == 3.0
    assert_as_alone(engine, alone, together, calls[0], "inpaint DPM++ 2M")
    # Outside its own mask each image is its own source (blur 4 reaches 10 px, doubled for the overlay).
    outside = np.ones((64, 64), bool)
    outside[13:51, 13:51] = False
    first = pixels(together[0].images[0].png)
    assert np.array_equal(first[outside], pixels(jobs[0].init_image)[outside])
    assert np.abs(first[28:36, 28:36] - pixels(jobs[0].init_image)[28:36, 28:36]).mean() > 10
    kept = np.ones((64, 64), bool)
    kept[16:32, 16:32] = False
    source = np.asarray(holed(4).convert("RGB")).astype(np.int16)
    for image in together[1].images:
        assert np.array_equal(pixels(image.png)[kept], source[kept])
    third = pixels(together[2].images[0].png)  # masked only: the source's size, far pixels untouched
    original = np.asarray(noise_image(96, 80, seed=5)).astype(np.int16)
    far = np.ones((80, 96), bool)
    far[0:56, 40:96] = False
    assert third.shape == (80, 96, 3) and np.array_equal(third[far], original[far])


def test_inpainting_unet_gets_each_jobs_own_mask_and_masked_image(tiny_sd15) -> None:
    """A 9-channel (inpainting) UNet: each job's [mask, masked-image latents] rows join its latents.
    (The tiny fixtures have no inpainting model: the loaded UNet is swapped for a 9-channel one, as
    test_image_modes does.)"""
    from diffusers import UNet2DConditionModel

    engine = DiffusersEngine(engine_settings(tiny_sd15))
    engine.generate(GenerationRequest(prompt="a cat", **{**BASE, "steps": 1}))
    model = next(iter(engine.models._models.values()))
    torch.manual_seed(0)
    model.pipe.unet = UNet2DConditionModel.from_config({**model.pipe.unet.config, "in_channels": 9}).eval()
    inputs: list[torch.Tensor] = []
    model.pipe.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    jobs = [INPAINT[0].replace(sampler="Euler", mask_blur=0), INPAINT[1].replace(sampler="Euler")]
    alone, together, calls = alone_and_batched(engine, jobs)
    assert len(calls) == 1 and together[0].timings["batch_jobs"] == 2.0
    assert_as_alone(engine, alone, together, calls[0], "inpaint, 9-channel UNet")
    x = inputs[-1]  # the batch's last UNet call: job 0 (uncond, cond), job 1 (uncond, 2 AND parts) x 2
    assert x.shape[:2] == (8, 9)
    assert x[0, 4, 3:5, 3:5].eq(1).all() and x[0, 4, 2, 2] == 0  # job 0's mask: 24..40 = latent 3..4
    assert x[2, 4, 2:4, 2:4].eq(1).all() and x[2, 4, 5, 5] == 0  # job 1's: the hole 16..32 = latent 2..3
    # Job 1 cancelled after step 2: its latents and image_cond rows leave; job 0 still equals alone.
    spy = DecodeSpy(engine)
    progress: dict[int, list[int]] = {0: [], 1: []}
    inputs.clear()
    together = engine.generate_batch(
        jobs,
        on_progress=lambda i, p: progress[i].append(p.step),
        should_cancel=lambda i: i == 1 and len(progress[1]) >= 2,
    )
    assert isinstance(together[1], GenerationCancelled) and progress == {0: [1, 2, 3, 4], 1: [1, 2]}
    assert together[0].timings["batch_jobs"] == 2.0
    # the sampler reports after a step's model call: job 1's rows leave from the fourth call on
    assert [tuple(x.shape[:2]) for x in inputs] == [(8, 9), (8, 9), (8, 9), (2, 9)]
    assert inputs[-1][0, 4, 3:5, 3:5].eq(1).all() and inputs[-1][0, 4, 2, 2] == 0  # job 0's own mask
    assert_as_alone(engine, alone[:1], together[:1], spy.latents[-1], "inpaint, 9-channel UNet, cancel")
    engine.close()


@pytest.mark.parametrize(("upscaler", "sampler"), [("Latent", "Euler a"), ("Lanczos", "DPM++ 2M")])
def test_hires_jobs_batch_both_passes(engine, upscaler, sampler) -> None:
    jobs = [job.replace(sampler=sampler, hr_upscaler=upscaler) for job in HIRES]
    progress: dict[int, list[tuple[int, int]]] = {0: [], 1: [], 2: []}
    first_passes = []  # each job's first pass alone: Lanczos decodes it before the final decode
    spy = DecodeSpy(engine)
    alone = []
    for job in jobs:
        spy.latents.clear()
        alone.append((engine.generate(job), spy.latents[-1]))
        first_passes.extend(spy.latents[:-1])
    spy.latents.clear()
    together = engine.generate_batch(jobs, on_progress=lambda i, p: progress[i].append((p.step, p.total)))
    calls = list(spy.latents)
    assert len(calls) == (1 if upscaler == "Latent" else 4)  # Lanczos decodes each first pass, as alone
    assert calls[-1].shape == (4, 4, 12, 12) and together[0].timings["batch_jobs"] == 3.0
    tolerance = TOLERANCE
    if upscaler != "Latent":
        # The first passes agree as every loop does. Then A1111's image upscaler rounds each first pass to
        # 8-bit pixels: a latent difference of a few float32 ulps (the UNet's batched kernels) can move a
        # pixel lying on a rounding edge by one level, which the second pass carries into its image.
        for first_alone, first_batched in zip(first_passes, calls[:3], strict=True):
            delta = float((decoded(engine, first_alone) - decoded(engine, first_batched)).abs().max())
            assert delta <= TOLERANCE, f"first pass: {delta}"
        tolerance = PIXEL_ROUNDING_TOLERANCE
    assert_as_alone(engine, alone, together, calls[-1], f"hires {upscaler} {sampler}", tolerance)
    assert progress[0] == progress[1] == [(i, 7) for i in range(1, 8)]  # 4 first-pass + 3 hires steps
    assert pixels(together[1].images[1].png).shape == (96, 96, 3)


def test_group_requests_keeps_apart_what_shapes_the_loop(sd15_engine) -> None:
    i2i, inpaint, hires = IMG2IMG[0], INPAINT[0], HIRES[0]
    jobs = [
        i2i,  # 0
        IMG2IMG[1],  # 1: other source, prompt, seed, CFG, count, resize mode: the same loop
        i2i.replace(denoising_strength=0.5),  # 2: another strength
        inpaint,  # 3: inpaint, not img2img
        INPAINT[2].replace(seed=5),  # 4: other mask, fill, masked-only: the same loop as 3
        inpaint.replace(denoising_strength=0.5),  # 5
        hires,  # 6
        HIRES[1].replace(hr_prompt="a fox"),  # 7: other prompts: the same loops as 6
        hires.replace(hr_resize_x=128, hr_resize_y=80),  # 8: another hires size
        hires.replace(hr_upscaler="Lanczos"),  # 9: another upscaler
        hires.replace(hr_denoising_strength=0.5),  # 10
        hires.replace(hr_second_pass_steps=0),  # 11: 4 hires steps, not 3
        hires.replace(hr_prompt="a fox <lora:other:1>"),  # 12: another hires LoRA set
        hires.replace(enable_hr=False, hr_prompt=""),  # 13: plain txt2img
        i2i.replace(denoising_strength=1.5),  # 14: invalid: alone, to fail with generate()'s message
    ]
    groups = grouping.group_requests(sd15_engine.settings, jobs)
    assert groups == [[0, 1], [2], [3, 4], [5], [6, 7], [8], [9], [10], [11], [12], [13], [14]]
    assert grouping.batch_key(sd15_engine.settings, jobs[14]) is None
    # With a resize box the scale plays no part; 0 hires steps means the first pass's 4.
    box = hires.replace(hr_resize_x=96, hr_resize_y=96)
    assert grouping.group_requests(sd15_engine.settings, [box, box.replace(hr_scale=2.0, seed=2)]) == [[0, 1]]
    four = [hires.replace(hr_second_pass_steps=0), hires.replace(hr_second_pass_steps=4)]
    assert grouping.group_requests(sd15_engine.settings, four) == [[0, 1]]


def test_a_bad_source_or_mask_fails_only_its_job(engine) -> None:
    data = IMG2IMG[0].init_image
    jobs = [
        IMG2IMG[0].replace(steps=2),
        IMG2IMG[0].replace(steps=2, init_image=data[: len(data) // 2]),  # truncated PNG
        IMG2IMG[2].replace(steps=2),
        IMG2IMG[0].replace(steps=2, init_image=b"\x89PNG\r\n\x1a\n garbage"),
    ]
    inpaint = [
        INPAINT[0].replace(steps=2),
        INPAINT[0].replace(steps=2, mask_image=png(Image.new("L", (64, 64)))),  # empty mask
        INPAINT[0].replace(steps=2, mask_image=b"nope"),
        INPAINT[1].replace(steps=2, init_image=png(noise_image())),  # no mask, nothing transparent
        INPAINT[1].replace(steps=2),
    ]
    assert grouping.group_requests(engine.settings, jobs + inpaint) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    results = engine.generate_batch(jobs + inpaint)
    for index in (1, 3, 5, 6, 7):
        request = (jobs + inpaint)[index]
        with pytest.raises(GenerationError) as alone:
            engine.generate(request)
        assert isinstance(results[index], GenerationError)
        assert str(results[index]) == str(alone.value), index
    assert "corrupt or truncated" in str(results[1]) and "mask is empty" in str(results[5])
    for index in (0, 2, 4, 8):
        assert isinstance(results[index], GenerationResult)
        assert results[index].timings["batch_jobs"] == 2.0  # the two good jobs of each group, one loop


@pytest.mark.parametrize(
    ("jobs", "sampler", "cancel_at", "steps"),
    [(INPAINT, "DPM++ 2M", 2, 4), (HIRES, "Euler a", 5, 7)],  # hires: in the second pass
    ids=["inpaint", "hires"],
)
def test_a_cancelled_job_leaves_and_the_others_equal_alone(engine, jobs, sampler, cancel_at, steps) -> None:
    jobs = [job.replace(sampler=sampler) for job in jobs]
    spy = DecodeSpy(engine)
    alone = []
    for job in (jobs[0], jobs[2]):
        spy.latents.clear()
        alone.append((engine.generate(job), spy.latents[-1]))
    spy.latents.clear()
    progress: dict[int, list[int]] = {0: [], 1: [], 2: []}
    together = engine.generate_batch(
        jobs,
        on_progress=lambda i, p: progress[i].append(p.step),
        should_cancel=lambda i: i == 1 and bool(progress[1]) and progress[1][-1] >= cancel_at,
    )
    assert isinstance(together[1], GenerationCancelled)
    assert progress[0] == progress[2] == list(range(1, steps + 1))
    assert progress[1] == list(range(1, cancel_at + 1))
    assert spy.latents[-1].shape[0] == 2  # job 1's two images left the batch
    assert together[0].timings["batch_jobs"] == together[2].timings["batch_jobs"] == 3.0  # one loop
    assert_as_alone(engine, alone, [together[0], together[2]], spy.latents[-1], f"cancel {sampler}")
