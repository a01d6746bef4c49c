"""Steps 5–7 of the pipeline: the denoising loop over the rows of 1..N jobs, with A1111's samplers.

The loop is ``core.engine.samplers``' three calls, as A1111 makes them: :func:`~core.engine.samplers.plan`
(A1111's sigmas or timesteps; img2img and the hires pass take the tail of the full schedule by A1111's
denoising-strength rule), :meth:`~core.engine.samplers.Plan.start` (each job's first x: its noise at the
first σ, or its source latents noised to it) and :func:`~core.engine.samplers.sample` over the batch's
:class:`~core.engine.cfg.CFGDenoiser`. Each job starts from noise (``job.start`` None) or from its own start
(img2img, inpaint, hires second pass: equal strength and steps in a batch; its own latents and mask).

Step noise comes from each job's own :class:`~core.engine.rng.ImageRNG` (:class:`BatchRNG`) and the SDE
samplers' Brownian trees are seeded per image with A1111's image seeds, so every image draws what its job
draws alone. After each step the sampler calls :class:`Steps`: a cancelled job's rows leave the batch
(the sampler cuts its state, the denoiser its conditioning), and each job gets its progress and preview.
Sigmas stay on the CPU, so nothing in the loop waits for the GPU.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import torch

from core.engine import cfg, guide, models, rng, samplers
from core.engine.job import Job, Outcome, RunStats, Start
from core.engine.runtime import Runtime
from core.engine.sampling import ScheduleOptions, Step
from core.types import GenerationCancelled, GenerationError, GenerationRequest, Progress

log = logging.getLogger(__name__)


class BatchRNG:
    """The jobs' :class:`~core.engine.rng.ImageRNG`\\ s stacked in batch order: what the samplers draw step
    noise from (``next()``), with the rows of the jobs still running (``select``)."""

    def __init__(self, rngs: Sequence[rng.ImageRNG]) -> None:
        self.rngs = list(rngs)
        self.source = self.rngs[0].source  # one source per batch (the batch key holds it)

    @property
    def seeds(self) -> list[int]:
        return [seed for image_rng in self.rngs for seed in image_rng.seeds]

    def next(self) -> torch.Tensor:
        return torch.cat([image_rng.next() for image_rng in self.rngs])

    def select(self, rows: Sequence[int]) -> BatchRNG:
        kept, start = [], 0
        for image_rng in self.rngs:
            count = len(image_rng.seeds)
            mine = [row - start for row in rows if start <= row < start + count]
            start += count
            if mine:
                kept.append(image_rng if len(mine) == count else image_rng.select(mine))
        return BatchRNG(kept)


class _AllCancelled(Exception):
    """Every job in the loop was cancelled: the sampler stops."""


@torch.no_grad()
def denoise(
    runtime: Runtime,
    jobs: list[Job],
    stats: RunStats,
    outcomes: dict[int, Outcome],
    on_progress: Callable[[int, Progress], None] | None = None,
    should_cancel: Callable[[int], bool] | None = None,
    *,
    progress: tuple[int, int] | None = None,
) -> list[Job]:
    """Run the loop for ``jobs`` (their plans encoded, their starts prepared); returns the jobs that
    finished, each with its final ``latents``. A job that fails or is cancelled gets its outcome in
    ``outcomes``. ``progress``: (steps done before this loop, total steps reported), equal for all jobs.

    From ``runtime`` (the engine): the device, a compiled UNet's row buckets, previews, stage syncs.
    """
    first = jobs[0].plan
    model, request = first.model, first.request
    start = jobs[0].start  # strength and steps: the batch's (batch_key); latents and mask: per job
    if any((job.start is None) != (start is None) for job in jobs):
        raise GenerationError("a batch cannot mix jobs from noise and from a source image")
    # 5. The sampler's plan: A1111's sigmas (timesteps), img2img / hires: the tail by denoising strength
    plan = sampling_plan(model, request, first.sampler, start)
    # 6. Each job's ImageRNG (A1111: image i uses its seed, shape (C, H/8, W/8)) and first x
    shape = latent_shape(model, request, start)
    active = with_image_rngs(jobs, shape, runtime.device, outcomes)
    if not active:
        return []
    x = torch.cat([first_x(plan, job, runtime.device) for job in active])
    time_ids = cfg.time_ids(model, shape, runtime.device)
    kind = plan.spec.sampler.kind
    # ControlNet units and reference images: what they add to each UNet call, per row (None: no job has any)
    size = (shape[2] * model.vae_scale_factor, shape[1] * model.vae_scale_factor)
    hires_pass = start is not None and start.steps is not None
    batch_guide = guide.batch_guide(active, size, plan.steps_run, runtime.device, hires_pass=hires_pass)
    denoiser = cfg.CFGDenoiser(
        cfg.UNetModel(model.pipe.unet, runtime.unet_row_buckets, guide=batch_guide),
        [cfg.JobCond.of(job.plan, time_ids, init=job.init_latents, nmask=job.nmask) for job in active],
        plan.schedule.to(runtime.device),
        timesteps=kind == "timesteps",
        cfgpp=plan.spec.sampler.cfgpp,
    )
    # 7. Denoising loop
    steps = Steps(
        runtime, model, active, denoiser, plan, stats, outcomes, should_cancel, on_progress, progress
    )
    steps.guide = batch_guide
    image_rng = BatchRNG([job.image_rng for job in active])
    try:
        with batch_guide.attached(model.pipe.unet) if batch_guide else contextlib.nullcontext():
            latents = samplers.sample(plan, denoiser, x, rng=image_rng, callback=steps, eta=request.eta)
    except _AllCancelled:
        return []
    for job, rows in zip(active, split_rows(active, latents), strict=True):
        if job.nmask is not None:  # inpaint: A1111's samples * nmask + init_latent * mask
            rows = rows * job.nmask + job.init_latents * (1.0 - job.nmask)
        job.latents = rows
    return active


def sampling_plan(model: models.LoadedModel, request: GenerationRequest, spec, start: Start | None):
    """A1111's sigmas (or timesteps) for the batch: the whole schedule, or img2img's tail by denoising
    strength; the hires pass passes its steps (``fixed_steps``: A1111's ``sample_img2img(steps=…)``)."""
    options = ScheduleOptions(sdxl=model.kind == "sdxl")
    try:
        if start is None:
            return samplers.plan(spec, request.steps, model.noise, options=options)
        steps = request.steps if start.steps is None else start.steps
        return samplers.plan(
            spec,
            steps,
            model.noise,
            options=options,
            denoising_strength=start.strength,
            fixed_steps=start.steps is not None,
        )
    except ValueError as exc:
        raise GenerationError(str(exc)) from None


def latent_shape(model: models.LoadedModel, request: GenerationRequest, start: Start | None) -> tuple:
    """One image's noise shape: (latent channels, H/8, W/8), or the start latents' shape."""
    if start is not None:
        return tuple(start.latents.shape[1:])
    factor = model.vae_scale_factor
    return (model.pipe.unet.config.out_channels, request.height // factor, request.width // factor)


def with_image_rngs(jobs: list[Job], shape, device, outcomes: dict[int, Outcome]) -> list[Job]:
    """The jobs whose :class:`~core.engine.rng.ImageRNG` (seeds, variation seed, ENSD, source) could be
    made; the others fail (seeds it cannot take). ENSD always goes to the ImageRNG, as A1111's: it
    re-seeds the step noise whenever it is not 0, whatever the sampler."""
    active = []
    for job in jobs:
        plan = job.plan
        try:
            job.image_rng = rng.ImageRNG(
                shape,
                plan.seeds,
                subseeds=plan.subseeds if plan.request.subseed_strength > 0 else None,
                subseed_strength=plan.request.subseed_strength,
                source=plan.rng_source,
                device=device,
                eta_noise_seed_delta=plan.ensd,
            )
            active.append(job)
        except ValueError as exc:
            outcomes[job.index] = GenerationError(str(exc))
    return active


def first_x(plan: samplers.Plan, job: Job, device) -> torch.Tensor:
    """One job's first x: its first noise at the first σ, or its source latents noised to it. Inpaint:
    "latent noise" / "latent nothing" replace the masked area of the source first (A1111's ``init``:
    the noise of the image seeds, without variation, or zeros); that source is what the sampler blends."""
    noise = job.image_rng.first().to(device, torch.float32)
    start = job.start
    job.init_latents = job.nmask = None
    if start is None:
        return plan.start(noise)
    init = start.latents.to(device, torch.float32)
    if start.mask is not None:
        job.nmask = start.mask.to(device, torch.float32)
        keep = 1.0 - job.nmask
        if start.fill == 2:
            fill = rng.ImageRNG(init.shape[1:], job.plan.seeds, source=job.plan.rng_source, device=device)
            init = init * keep + fill.first().to(device, torch.float32) * job.nmask
        elif start.fill == 3:
            init = init * keep
        job.init_latents = init
    return plan.start(noise, init)


def split_rows(jobs: Sequence[Job], latents: torch.Tensor) -> list[torch.Tensor]:
    """``latents`` cut into each job's rows, in batch order."""
    return list(latents.split([job.count for job in jobs]))


class Steps:
    """The sampler's callback, once per step: the step's time; a cancelled job's rows leave the batch (its
    latents, the sampler's state and noise, its CFG rows); progress and previews (from the step's x₀
    prediction) for each job still running."""

    def __init__(
        self, runtime: Runtime, model, active: list[Job], denoiser: cfg.CFGDenoiser, plan: samplers.Plan,
        stats: RunStats, outcomes, should_cancel, on_progress, progress,
    ) -> None:  # fmt: skip
        self.runtime, self.model, self.active, self.denoiser = runtime, model, active, denoiser
        self.stats, self.outcomes = stats, outcomes
        self.should_cancel, self.on_progress = should_cancel, on_progress
        self.run_steps = plan.steps_run
        self.total = plan.callbacks or plan.steps_run  # DPM adaptive: steps not known ahead
        self.done_before, self.report_total = progress or (0, self.run_steps)
        self.last = time.perf_counter()
        self.guide = None  # core.engine.guide.BatchGuide: counts A1111's sampling steps, drops rows

    def __call__(self, step: Step) -> list[int] | None:
        if self.guide is not None:  # the next model calls belong to the next step
            self.guide.step = step.i + 1
        self.runtime.sync()
        now = time.perf_counter()
        self.stats.steps.append(now - self.last)
        self.last = now
        rows = self.cancel()
        self.report(step, rows)
        return rows

    def cancel(self) -> list[int] | None:
        """None, or the rows of the jobs that stay (the others get ``GenerationCancelled``)."""
        if self.should_cancel is None:
            return None
        active = self.active
        stay = [job for job in active if not self.should_cancel(job.index)]
        if len(stay) == len(active):
            return None
        for job in active:
            if job not in stay:
                self.outcomes[job.index] = GenerationCancelled("cancelled")
        if not stay:
            raise _AllCancelled
        rows, positions, row = [], [], 0
        for position, job in enumerate(active):
            if job in stay:
                rows.extend(range(row, row + job.count))
                positions.append(position)
            row += job.count
        self.denoiser.keep(positions)
        if self.guide is not None:
            self.guide.keep(positions)
        active[:] = stay
        return rows

    def report(self, step: Step, rows: list[int] | None) -> None:
        """Progress (and every ``preview_every`` steps a preview of the x₀ prediction) for each job."""
        if self.on_progress is None:
            return
        done = min(self.run_steps, max(1, round((step.i + 1) * self.run_steps / self.total)))
        every = self.runtime.settings.preview_every
        want_preview = every and (done % every == 0) and step.i + 1 < self.total
        denoised = step.denoised if rows is None else step.denoised[rows]
        for job, predicted in zip(self.active, split_rows(self.active, denoised), strict=True):
            preview = self.runtime.preview(self.model, predicted) if want_preview else None
            event = Progress(step=self.done_before + done, total=self.report_total, preview_png=preview)
            self.on_progress(job.index, event)
