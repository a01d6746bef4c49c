"""The cost of a job, defined once: how much GPU work a request asks for (torch-free).

The jobs table stores it (``jobs.cost``, in pixel-steps); the fair scheduler charges guilds with it,
the queue turns measured GPU seconds into a throughput with it, and the submit path estimates a job's
GPU seconds (for the quota) from it. Everything that weighs a job reads it from here, so the queue's
order, its ETAs and the quota's estimate never disagree about what a job costs.
"""

from __future__ import annotations

from core.types import GenerationRequest, Mode

STANDARD_PIXEL_STEPS = 512 * 512 * 20  # one standard image: 512², 20 steps = 1.0 standard image


def pixel_steps(r: GenerationRequest) -> float:
    """Pixels × sampler steps × images. img2img and inpaint run the strength's tail of the steps (as
    A1111 does); hires fix adds its second pass at the upscaled size."""
    steps = r.steps if r.mode == Mode.TXT2IMG else max(1, int(r.steps * r.denoising_strength))
    work = r.width * r.height * steps
    if r.enable_hr:
        if r.hr_resize_x and r.hr_resize_y:
            w, h = r.hr_resize_x, r.hr_resize_y
        else:
            w, h = int(r.width * r.hr_scale), int(r.height * r.hr_scale)
        second = r.hr_second_pass_steps or r.steps
        work += w * h * max(1, int(second * r.hr_denoising_strength))
    return float(work * r.count)


def standard_images(work: float) -> float:
    """Pixel-steps (as stored) in standard images, the unit of the fair scheduler and of throughput;
    never zero (the scheduler refuses free jobs)."""
    return max(work / STANDARD_PIXEL_STEPS, 1e-6)
