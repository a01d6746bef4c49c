"""Which jobs share one denoising loop.

txt2img, img2img, inpaint and hires-fix jobs all batch, with jobs of their own mode. A batch shares what
shapes the loop (``GenerationRequest.batch_key`` plus the LoRA sets and eta): model, size, sampler, schedule
type, steps, RNG source, eta; img2img/inpaint also the denoising strength; hires fix also the hires geometry,
upscaler, second-pass steps and strength, and the hires prompt's LoRA set. Everything else stays per job:
prompt schedule (editing and alternation at A1111's step counter), ``AND`` parts and weights, negative
prompt, CFG scale, seeds, variation seed, ENSD, and the source image, mask, mask blur, masked content, resize
mode and masked-only options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from core.config import EngineSettings, PostprocessSettings
from core.engine import checks, hires, prompts
from core.types import GenerationError, GenerationRequest


def batch_key(
    settings: EngineSettings, request: GenerationRequest, postprocess: PostprocessSettings | None = None
) -> tuple | None:
    """Jobs with equal keys share one loop; None: this job runs alone (bad options or a bad prompt).

    ``request.batch_key()`` (mode, size, steps, …, img2img's strength, the hires geometry) plus the LoRA
    set, eta and, for hires fix, the hires prompt's LoRA set. Source images and masks are not read here:
    a bad one fails its job alone in the pipeline's first step.
    """
    from core.engine.networks import networks_key

    try:
        checks.check_inputs(request, settings, postprocess)  # postprocess: hires fix's upscaler models
        if not prompts.resolve_sampler(request).sampler.batchable:
            return None  # DPM adaptive: its step sizes come from the whole batch, so it runs alone
        positive, _ = prompts.interpret(request, settings)
        hires_networks = None
        if request.enable_hr:
            hires_networks = networks_key(hires.interpret(request, settings)[0].networks)
    except (GenerationError, ValueError):
        return None  # it fails alone, with the message generate() gives
    return (*request.batch_key(), networks_key(positive.networks), request.eta, hires_networks)


def group_requests(
    settings: EngineSettings,
    requests: Sequence[GenerationRequest],
    max_images: int | Callable[[GenerationRequest], int] | None = None,
    postprocess: PostprocessSettings | None = None,
) -> list[list[int]]:
    """Indices of ``requests`` in groups of compatible jobs, first-seen order.

    A group holds at most ``max_images`` images (a number, or a function of the group's first request:
    ``engine.batch_capacity``); a job with more images than that runs alone.
    """
    groups: dict[Any, list[list[int]]] = {}
    order: list[list[int]] = []
    limits: dict[Any, int] = {}
    images: dict[int, int] = {}  # id(group) -> images in it
    for index, request in enumerate(requests):
        key = batch_key(settings, request, postprocess)
        if key is None:
            order.append([index])
            continue
        if key not in limits:
            limit = max_images(request) if callable(max_images) else max_images
            limits[key] = limit or 10**9
        runs = groups.setdefault(key, [])
        if not runs or images[id(runs[-1])] + request.count > limits[key]:
            runs.append([])
            order.append(runs[-1])
            images[id(runs[-1])] = 0
        runs[-1].append(index)
        images[id(runs[-1])] += request.count
    return order
