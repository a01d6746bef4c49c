"""A1111's hires fix, around the second pass: the hires prompt, the upscale, the second pass's start.

"Latent*" upscalers interpolate the latents; "Lanczos"/"Nearest"/"None" decode, resize with PIL and encode
again; any other name is an upscaler model (``core.engine.postprocess``: ESRGAN, DAT, … by A1111's names),
run on the decoded image as A1111 does, then encoded again. The second pass is img2img at the hires size with the hires prompt (or the prompt) scheduled with
A1111's hires rebasing, the first pass's seeds (fresh noise at the new size), ``hr_second_pass_steps``
(0 = steps) steps at ``hr_denoising_strength``. ``Pipeline.hires_fix`` runs it for every job of a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from core.config import EngineSettings
from core.engine import image_modes, models, prompts, samplers
from core.engine.job import Start
from core.types import GenerationError, GenerationRequest


def hires_request(request: GenerationRequest) -> GenerationRequest:
    """The request with the hires prompt and negative prompt (each defaulting to the first pass's)."""
    return request.replace(
        prompt=request.hr_prompt or request.prompt,
        negative_prompt=request.hr_negative_prompt or request.negative_prompt,
    )


def hires_steps(request: GenerationRequest) -> int:
    """The second pass's step count (0 = the first pass's)."""
    return request.hr_second_pass_steps or request.steps


def interpret(request: GenerationRequest, settings: EngineSettings):
    """The hires pass's (positive, negative) interpretations: the hires prompt (or the prompt),
    scheduled with A1111's hires rebasing."""
    steps = hires_steps(request)
    total = steps * 2 if samplers.is_second_order(request.sampler) else steps
    return prompts.interpret(hires_request(request), settings, hires_steps=total)


def upscale(
    model: models.LoadedModel,
    request: GenerationRequest,
    latents: torch.Tensor,
    *,
    decode: Callable[[models.LoadedModel, torch.Tensor], list],
    encode: Callable[[models.LoadedModel, Sequence[Any]], torch.Tensor],
    upscale_model: Callable[[Any, str, int, int], Any] | None = None,
) -> torch.Tensor:
    """The first pass's latents (any number of rows of jobs with ``request``'s hires geometry and
    upscaler) upscaled to the hires size and cropped to the hires resize box. ``decode`` / ``encode``:
    the engine's VAE (image upscalers); ``upscale_model(image, name, width, height)``: an upscaler model
    (``Upscalers.upscale_to``, A1111's ``resize_image`` with a model)."""
    factor = model.vae_scale_factor
    to_x, to_y, tx, ty = image_modes.hires_target(
        request.width, request.height, request.hr_scale, request.hr_resize_x, request.hr_resize_y
    )
    if request.hr_upscaler in image_modes.LATENT_UPSCALERS:
        mode, antialias = image_modes.LATENT_UPSCALERS[request.hr_upscaler]
        kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
        upscaled = torch.nn.functional.interpolate(
            latents.float(), size=(to_y // factor, to_x // factor), mode=mode, **kwargs
        ).to(latents.dtype)
    elif request.hr_upscaler in image_modes.IMAGE_UPSCALERS:
        images = decode(model, latents)
        images = [image_modes.upscale_image(image, to_x, to_y, request.hr_upscaler) for image in images]
        upscaled = encode(model, images)
    else:
        if upscale_model is None:
            raise GenerationError(f"unknown hires upscaler {request.hr_upscaler!r}")
        images = decode(model, latents)
        images = [upscale_model(image, request.hr_upscaler, to_x, to_y) for image in images]
        upscaled = encode(model, images)
    if tx or ty:
        h, w = upscaled.shape[2], upscaled.shape[3]
        upscaled = upscaled[:, :, ty // 2 : h - (ty + 1) // 2, tx // 2 : w - (tx + 1) // 2]
    return upscaled


def start(request: GenerationRequest, upscaled: torch.Tensor) -> Start:
    """The second pass's start: the upscaled latents, exactly ``hires_steps`` steps at the hires strength."""
    return Start(latents=upscaled, strength=request.hr_denoising_strength, steps=hires_steps(request))


def progress(request: GenerationRequest, *, second_pass: bool) -> tuple[int, int]:
    """A pass's progress as (steps done before it, steps reported in all): one count from the first
    pass's first step to the second pass's last."""
    total = request.steps + hires_steps(request)
    return (request.steps, total) if second_pass else (0, total)
