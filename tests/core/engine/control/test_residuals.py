"""The residual function in a plain denoising loop equals diffusers' ControlNet pipelines.

Same tiny random-weight components, same Euler scheduler, same starting latents: our loop (CFG rows
[negative, prompt], :func:`controlnet_residuals` before every UNet call) against
``StableDiffusionControlNetPipeline`` / ``StableDiffusionXLControlNetPipeline`` /
``StableDiffusionXLControlNetUnionPipeline``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine.control.models import LoadedControlNet
from core.engine.control.residuals import (
    ControlRows,
    control_tensor,
    controlnet_residuals,
    gather_rows,
    scales_tensor,
)
from core.engine.control.units import ControlUnit, a1111_sampling_step, row_scales

SIZE = 64  # pixels; latents 8x8
CFG = 7.0
ATOL = 1e-5  # parity tolerance on the final latents (the engine's image tolerance is 1e-4)


def _net(model, kind: str = "sd1") -> LoadedControlNet:
    return LoadedControlNet(name="tiny", path=None, kind=kind, model=model, label="tiny", device="cpu", dtype=torch.float32)


def _map(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _latents(seed: int = 0) -> torch.Tensor:
    return torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(seed))


def _euler(pipe):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(pipe.scheduler.config)


def _embeds(pipe):
    if hasattr(pipe, "text_encoder_2"):
        pe, ne, pooled, npooled = pipe.encode_prompt("a red boat", negative_prompt="blurry", device="cpu")
        return pe, ne, pooled, npooled
    pe, ne = pipe.encode_prompt("a red boat", "cpu", 1, True, negative_prompt="blurry")
    return pe, ne, None, None


def _xl_added(pipe, pooled, npooled):
    time_ids = pipe._get_add_time_ids(
        (SIZE, SIZE), (0, 0), (SIZE, SIZE), dtype=pooled.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )  # fmt: skip
    return {"text_embeds": torch.cat([npooled, pooled]), "time_ids": torch.cat([time_ids, time_ids])}


def our_loop(pipe, units, steps: int, latents: torch.Tensor) -> torch.Tensor:
    """``units``: (LoadedControlNet, ControlUnit, control map, union type index or None)."""
    scheduler = _euler(pipe)
    pe, ne, pooled, npooled = _embeds(pipe)
    context = torch.cat([ne, pe])
    added = _xl_added(pipe, pooled, npooled) if pooled is not None else None
    images = [gather_rows([control_tensor(image)], [0, 0]) for _, _, image, _ in units]
    scheduler.set_timesteps(steps)
    x = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        controls = []
        for (net, unit, _, union), rows_images in zip(units, images, strict=True):
            per_row = [
                row_scales(unit, net.n_residuals, sampling_step=a1111_sampling_step(i), sampling_steps=steps,
                           conditional=conditional)
                for conditional in (False, True)
            ]  # fmt: skip
            union_types = None if union is None else (union, union)
            controls.append(ControlRows(net, rows_images, scales_tensor(per_row, net.n_residuals), union_types))
        residuals = controlnet_residuals(controls, x_in, t, context, added)
        extra = {} if residuals is None else {
            "down_block_additional_residuals": residuals[0], "mid_block_additional_residual": residuals[1]
        }  # fmt: skip
        with torch.no_grad():
            noise = pipe.unet(x_in, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False, **extra)[0]
        uncond, cond = noise.chunk(2)
        x = scheduler.step(uncond + CFG * (cond - uncond), t, x).prev_sample
    return x


def _sd15_reference(sd15_pipe, controlnet, images, steps, latents, **kwargs) -> torch.Tensor:
    from diffusers import StableDiffusionControlNetPipeline

    p = sd15_pipe
    ref = StableDiffusionControlNetPipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet, controlnet=controlnet,
        scheduler=_euler(p), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    pe, ne, _, _ = _embeds(p)
    pil = [Image.fromarray(image) for image in images]
    return ref(
        prompt_embeds=pe, negative_prompt_embeds=ne, image=pil if len(pil) > 1 else pil[0], height=SIZE, width=SIZE,
        num_inference_steps=steps, guidance_scale=CFG, latents=latents.clone(), output_type="latent", **kwargs,
    ).images  # fmt: skip


def test_sd15_balanced_unit_equals_diffusers_controlnet_pipeline(sd15_pipe, sd15_controlnet) -> None:
    net, image, latents = _net(sd15_controlnet), _map(1), _latents()
    ours = our_loop(sd15_pipe, [(net, ControlUnit(model="tiny", weight=0.8), image, None)], 4, latents)
    theirs = _sd15_reference(sd15_pipe, sd15_controlnet, [image], 4, latents, controlnet_conditioning_scale=0.8)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    plain = our_loop(sd15_pipe, [], 4, latents)
    assert (ours - plain).abs().max() > 1e-2  # the control changes the result


def test_weight_zero_is_no_controlnet(sd15_pipe, sd15_controlnet) -> None:
    latents = _latents(3)
    ours = our_loop(sd15_pipe, [(_net(sd15_controlnet), ControlUnit(model="tiny", weight=0.0), _map(2), None)], 3, latents)
    scheduler = _euler(sd15_pipe)
    sd15_pipe.scheduler, old = scheduler, sd15_pipe.scheduler
    try:
        pe, ne, _, _ = _embeds(sd15_pipe)
        plain = sd15_pipe(prompt_embeds=pe, negative_prompt_embeds=ne, height=SIZE, width=SIZE, num_inference_steps=3,
                          guidance_scale=CFG, latents=latents.clone(), output_type="latent").images  # fmt: skip
    finally:
        sd15_pipe.scheduler = old
    assert torch.equal(ours, plain)


@pytest.mark.slow
def test_guidance_end_half_stops_after_a1111s_step(sd15_pipe, sd15_controlnet) -> None:
    # 10 steps, end 0.5: A1111 steps 0..5 are <= 0.5; the sampler's steps 0..6 see them (7 steps).
    # diffusers keeps step i while (i + 1) / 10 <= end: end 0.7 keeps the same 7 steps, 0.6 one fewer.
    net, image, latents = _net(sd15_controlnet), _map(4), _latents(5)
    ours = our_loop(sd15_pipe, [(net, ControlUnit(model="tiny", guidance_end=0.5), image, None)], 10, latents)
    same = _sd15_reference(sd15_pipe, sd15_controlnet, [image], 10, latents, control_guidance_end=0.7)
    one_fewer = _sd15_reference(sd15_pipe, sd15_controlnet, [image], 10, latents, control_guidance_end=0.6)
    torch.testing.assert_close(ours, same, atol=ATOL, rtol=0)
    assert (ours - one_fewer).abs().max() > 1e-3


def test_two_units_add_like_multi_controlnet(sd15_pipe, sd15_controlnet) -> None:
    from core.testing.tiny_control import tiny_controlnet

    second = tiny_controlnet(sd15_pipe.unet, seed=7)
    a, b, latents = _map(8), _map(9), _latents(6)
    units = [
        (_net(sd15_controlnet), ControlUnit(model="one", weight=0.6), a, None),
        (_net(second), ControlUnit(model="two", weight=1.3), b, None),
    ]
    ours = our_loop(sd15_pipe, units, 4, latents)
    theirs = _sd15_reference(
        sd15_pipe, [sd15_controlnet, second], [a, b], 4, latents, controlnet_conditioning_scale=[0.6, 1.3]
    )
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def _direct(net, sample, t, context, image):
    with torch.no_grad():
        down, mid = net.model(sample, t, encoder_hidden_states=context, controlnet_cond=image, return_dict=False)
    return [*down, mid]


def test_control_modes_scale_residuals_per_row(sd15_pipe, sd15_controlnet) -> None:
    net = _net(sd15_controlnet)
    torch.manual_seed(0)
    sample, t = torch.randn(2, 4, 8, 8), torch.tensor(500.0)
    pe, ne, _, _ = _embeds(sd15_pipe)
    context = torch.cat([ne, pe])
    image = gather_rows([control_tensor(_map(10))], [0, 0])
    full = _direct(net, sample, t, context, image)
    n = net.n_residuals
    for mode in ("My prompt is more important", "ControlNet is more important"):
        unit = ControlUnit(model="tiny", weight=1.5, control_mode=mode)
        rows = [row_scales(unit, n, sampling_step=0, sampling_steps=10, conditional=c) for c in (False, True)]
        down, mid = controlnet_residuals([ControlRows(net, image, scales_tensor(rows, n))], sample, t, context)
        for i, (ours, plain) in enumerate(zip([*down, mid], full, strict=True)):
            factor = 1.5 * 0.825 ** (12 - i)
            torch.testing.assert_close(ours[1], plain[1] * factor, atol=ATOL, rtol=0)  # 1 row vs 2: other kernels
            if mode == "ControlNet is more important":
                assert torch.equal(ours[0], torch.zeros_like(ours[0]))  # the negative prompt's row
            else:
                torch.testing.assert_close(ours[0], plain[0] * factor, atol=1e-6, rtol=1e-6)


def test_rows_without_the_unit_skip_it_and_others_equal_a_run_alone(sd15_pipe, sd15_controlnet) -> None:
    # Two jobs in one batch, rows [job0 cond, job1 cond, job0 uncond, job1 uncond]; only job 1 has control.
    net = _net(sd15_controlnet)
    torch.manual_seed(1)
    sample, t = torch.randn(4, 4, 8, 8), torch.tensor([700.0, 700.0, 700.0, 700.0])
    pe, ne, _, _ = _embeds(sd15_pipe)
    context = torch.cat([pe, pe, ne, ne])
    job1 = control_tensor(_map(11))
    images = gather_rows([None, job1], [0, 1, 0, 1])
    n = net.n_residuals
    scales = scales_tensor([None, (0.9,) * n, None, (0.9,) * n], n)
    down, mid = controlnet_residuals([ControlRows(net, images, scales)], sample, t, context)
    alone = _direct(net, sample[[1, 3]], t[[1, 3]], context[[1, 3]], images[[1, 3]])
    for ours, ref in zip([*down, mid], alone, strict=True):
        assert torch.equal(ours[[0, 2]], torch.zeros_like(ours[[0, 2]]))
        torch.testing.assert_close(ours[[1, 3]], ref * 0.9, atol=1e-6, rtol=1e-6)
    assert controlnet_residuals([ControlRows(net, images, torch.zeros(4, n))], sample, t, context) is None


def test_bad_rows_are_named(sd15_controlnet) -> None:
    net = _net(sd15_controlnet)
    with pytest.raises(ValueError, match=r"control rows \(1\) differ from the UNet batch \(2\)"):
        controlnet_residuals(
            [ControlRows(net, torch.zeros(1, 3, 64, 64), torch.ones(1, 7))],
            torch.zeros(2, 4, 8, 8), torch.tensor(1.0), torch.zeros(2, 77, 32),
        )  # fmt: skip
    with pytest.raises(ValueError, match="uint8"):
        control_tensor(np.zeros((8, 8, 3), dtype=np.float32))


def _sdxl_reference(sdxl_pipe, controlnet, image, steps, latents, *, union_mode=None, **kwargs):
    from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLControlNetUnionPipeline

    p = sdxl_pipe
    parts = dict(vae=p.vae, text_encoder=p.text_encoder, text_encoder_2=p.text_encoder_2, tokenizer=p.tokenizer,
                 tokenizer_2=p.tokenizer_2, unet=p.unet, controlnet=controlnet, scheduler=_euler(p))  # fmt: skip
    cls = StableDiffusionXLControlNetPipeline if union_mode is None else StableDiffusionXLControlNetUnionPipeline
    ref = cls(**parts, force_zeros_for_empty_prompt=True)
    ref.set_progress_bar_config(disable=True)
    pe, ne, pooled, npooled = _embeds(p)
    image_kwargs = {"image": Image.fromarray(image)} if union_mode is None else {
        "control_image": [Image.fromarray(image)], "control_mode": [union_mode]
    }  # fmt: skip
    return ref(
        prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=npooled, height=SIZE, width=SIZE, num_inference_steps=steps,
        guidance_scale=CFG, latents=latents.clone(), output_type="latent", **image_kwargs, **kwargs,
    ).images  # fmt: skip


def test_sdxl_unit_equals_diffusers_xl_controlnet_pipeline(sdxl_pipe, sdxl_controlnet) -> None:
    image, latents = _map(12), _latents(7)
    ours = our_loop(sdxl_pipe, [(_net(sdxl_controlnet, "sdxl"), ControlUnit(model="xl", weight=0.7), image, None)], 3, latents)
    theirs = _sdxl_reference(sdxl_pipe, sdxl_controlnet, image, 3, latents, controlnet_conditioning_scale=0.7)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_sdxl_union_unit_equals_diffusers_union_pipeline(sdxl_pipe) -> None:
    from core.testing.tiny_control import tiny_controlnet

    union = tiny_controlnet(sdxl_pipe.unet, seed=4, union=True)
    image, latents = _map(13), _latents(8)
    unit = ControlUnit(model="union", weight=0.9, union_control_type="Hard Edge")
    ours = our_loop(sdxl_pipe, [(_net(union, "sdxl"), unit, image, 3)], 3, latents)
    theirs = _sdxl_reference(sdxl_pipe, union, image, 3, latents, union_mode=3, controlnet_conditioning_scale=0.9)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    other_type = our_loop(sdxl_pipe, [(_net(union, "sdxl"), unit, image, 1)], 3, latents)
    assert (ours - other_type).abs().max() > 1e-4  # the control type matters
