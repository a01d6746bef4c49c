"""Step 10 of the pipeline: each job's images pasted back onto its own source (inpaint), then written as PNGs
with A1111's parameters (infotext), encoded in parallel."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from core.config import EngineSettings
from core.engine import image_modes, infotext, samplers
from core.engine.job import Job, Plan
from core.types import GeneratedImage, GenerationRequest, Mode


def apply_overlays(jobs: list[Job], images: list) -> list:
    """``images`` (every job's, in batch order) with each inpaint job's own overlay applied: a masked-only
    result pasted back into its box, the original's kept pixels composited over it."""
    out, row = [], 0
    for job in jobs:
        mine = list(images[row : row + job.count])
        row += job.count
        init = job.init
        if init is not None and init.overlay is not None:
            mine = [image_modes.apply_overlay(image, init.paste_to, init.overlay) for image in mine]
        out.extend(mine)
    return out


def write_pngs(
    jobs: list[Job], images: list, settings: EngineSettings, pool: Executor | None
) -> list[tuple[GeneratedImage, ...]]:
    """Every image of every job as a PNG with its parameters, per job. With a ``pool`` they are encoded in
    parallel (Pillow's zlib releases the GIL): a batch of 16 images costs about one encode, not sixteen,
    of GPU idle time."""
    per_job, row = [], 0
    for job in jobs:
        per_job.append([(job.plan, i, image) for i, image in enumerate(images[row : row + job.count])])
        row += job.count
    if pool is None:
        return [tuple(png(settings, *item) for item in items) for items in per_job]
    futures = [[pool.submit(png, settings, *item) for item in items] for items in per_job]
    return [tuple(future.result() for future in job_futures) for job_futures in futures]


def png(settings: EngineSettings, plan: Plan, index: int, image) -> GeneratedImage:
    """Image ``index`` of ``plan`` as a PNG with A1111's infotext."""
    request, spec = plan.request, plan.sampler
    seed, subseed = plan.seeds[index], plan.subseeds[index]
    text = infotext.infotext_for_request(
        request.replace(sampler=spec.name),
        seed=seed,
        subseed=subseed,
        schedule_type=spec.schedule_label,
        model_name=plan.model.name.rsplit("/", 1)[-1],  # A1111 writes a checkpoint's file stem, not its folder
        model_hash=plan.model.hash or None,
        clip_skip=request.clip_skip or plan.model.source.clip_skip,
        ensd=plan.ensd if samplers.uses_ensd(spec, request.eta) else None,
        rng=plan.rng_source,
        extra={
            **image_mode_infotext(request),
            **plan.hashes,
            **plan.after,
            **samplers.eta_infotext(spec, request.eta),
            "CFG Rescale": request.cfg_rescale or None,
            "Noise Schedule": "Zero Terminal SNR" if plan.model.noise.zero_terminal_snr else None,
            "Emphasis": None if settings.emphasis == "Original" else settings.emphasis,
            **plan.guide_params,
        },
    )
    return GeneratedImage(
        png=infotext.png_with_infotext(image, text), seed=seed, subseed=subseed, infotext=text
    )


def image_mode_infotext(request: GenerationRequest) -> dict[str, Any]:
    """A1111's extra parameters for inpaint and hires fix (None values are left out)."""
    extra: dict[str, Any] = {}
    if request.mode == Mode.INPAINT:
        extra["Mask blur"] = request.mask_blur or None
        if request.inpaint_full_res:
            extra["Inpaint area"] = "Only masked"
            extra["Masked area padding"] = request.inpaint_full_res_padding
    if request.enable_hr:
        if request.hr_prompt and request.hr_prompt != request.prompt:
            extra["Hires prompt"] = request.hr_prompt
        if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
            extra["Hires negative prompt"] = request.hr_negative_prompt
    return extra
