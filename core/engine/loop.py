"""Steps 5–7 of the pipeline: the denoising loop over the rows of 1..N jobs.

Each job starts from noise (``job.start`` None) or from its own start (img2img, inpaint, hires second pass:
equal strength and steps in a batch; its own latents, keep mask and masked content). Per step:

1. hooks, before: a cancelled job's rows leave the batch (:class:`Cancel`);
2. the sampler's model input (:class:`~core.engine.stepping.SchedulerStepper`, today a diffusers
   scheduler), through the CFG denoiser (:class:`~core.engine.cfg.CFGDenoiser`: every job's UNet rows and
   its ``AND``/CFG combination, at A1111's step counter);
3. one step for the whole batch (the stepper);
4. hooks, after: inpaint's kept area reset to each job's source (:class:`Keep`), progress and previews
   (:class:`Report`).

The model side, the stepping and the hooks meet only here, so another sampler (a k-diffusion-style
function over the denoiser and sigmas) replaces step 2–3's stepper without touching the others.
Step noise comes from each job's own :class:`~core.engine.rng.ImageRNG` (:class:`BatchNoise`), so ancestral
and SDE samplers draw what each job draws alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from core.engine import cfg, models, rng
from core.engine.job import Job, Outcome, RunStats, Start
from core.engine.runtime import Runtime
from core.engine.stepping import SchedulerStepper
from core.types import GenerationCancelled, GenerationError, GenerationRequest, Progress

log = logging.getLogger(__name__)


class BatchNoise:
    """The step noise of several jobs' :class:`ImageRNG`\\ s, stacked in batch order (active jobs only)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def first(self) -> torch.Tensor:
        return torch.cat([job.image_rng.first() for job in self.jobs])

    def next(self) -> torch.Tensor:
        return torch.cat([job.image_rng.next() for job in self.jobs])


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
    start = jobs[0].start  # strength and steps: the batch's (batch_key); latents, keep, fill: per job
    if any((job.start is None) != (start is None) for job in jobs):
        raise GenerationError("a batch cannot mix jobs from noise and from a source image")
    # 5. Initial noise: each job's own ImageRNG (A1111: image i uses seed + i, shape (C, H/8, W/8))
    shape = latent_shape(model, request, start)
    active = with_image_rngs(jobs, shape, runtime.device, outcomes)
    if not active:
        return []
    # 6. Timesteps (img2img: the tail of the full schedule) and each job's first latents
    stepper = SchedulerStepper.for_batch(model, request, [s for job in active for s in job.plan.seeds])
    timesteps, run_steps = stepper.set_timesteps(request.steps, start, runtime.device)
    latents = first_latents(stepper, active, timesteps, runtime.device, model.dtype)
    time_ids = cfg.time_ids(model, shape, runtime.device)
    denoiser = cfg.CFGDenoiser(
        cfg.UNetModel(model.pipe.unet, runtime.unet_row_buckets),
        [cfg.JobCond.of(job.plan, time_ids) for job in active],
    )
    # 7. Denoising loop
    total = len(timesteps)
    keep = Keep.of(active)
    cancel = Cancel(active, stepper, denoiser, outcomes, should_cancel)
    report = Report(runtime, model, active, run_steps, total, progress, on_progress)
    with stepper.noise_from(BatchNoise(active)):  # BatchNoise sees ``active`` shrink
        for i, t in enumerate(timesteps):
            jobs_before = len(active)
            latents = cancel(latents)
            if latents is None:
                return []
            if len(active) < jobs_before:
                keep = Keep.of(active)
            step_start = time.perf_counter()
            latents = stepper.step(denoiser(stepper.scale(latents, t), t), t, latents)
            if keep is not None and i + 1 < total:
                # Inpaint: outside its mask each job's rows follow its source, noised to the next step.
                latents = keep.blend(stepper, latents, timesteps[i + 1 : i + 2])
            runtime.sync()
            stats.steps.append(time.perf_counter() - step_start)
            report(i, latents)
    if keep is not None:
        latents = keep.final(latents)
    for job, rows in zip(active, split_rows(active, latents), strict=True):
        job.latents = rows
    return [job for job in active if not job.cancelled]


def latent_shape(model: models.LoadedModel, request: GenerationRequest, start: Start | None) -> tuple:
    """One image's noise shape: (UNet channels, H/8, W/8), or the start latents' shape."""
    if start is not None:
        return tuple(start.latents.shape[1:])
    factor = model.vae_scale_factor
    return (model.pipe.unet.config.in_channels, request.height // factor, request.width // factor)


def with_image_rngs(jobs: list[Job], shape, device, outcomes: dict[int, Outcome]) -> list[Job]:
    """The jobs whose :class:`~core.engine.rng.ImageRNG` (seeds, variation seed, ENSD, source) could be
    made; the others fail (seeds it cannot take)."""
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


def first_latents(stepper: SchedulerStepper, jobs: list[Job], timesteps, device, dtype) -> torch.Tensor:
    """Every job's first noise; img2img: its source noised with it to the first step."""
    pieces = []
    for job in jobs:
        job.noise = job.image_rng.first().to(device, dtype)
        latents, job.source, job.keep = stepper.first_latents(job.start, job.noise, timesteps, device, dtype)
        pieces.append(latents)
    return torch.cat(pieces)


def split_rows(jobs: Sequence[Job], latents: torch.Tensor) -> list[torch.Tensor]:
    """``latents`` cut into each job's rows, in batch order."""
    return list(latents.split([job.count for job in jobs]))


class Keep:
    """Inpaint: every job's source latents, first noise and keep mask, stacked row by row.

    After every step but the last the kept area is reset to the source latents noised to the next step
    (as diffusers' inpaint pipeline does), after the last to the clean source latents (A1111's
    ``samples * nmask + init_latent * mask``). A1111 blends the model's x0 prediction instead of x; that
    needs per-scheduler x0 algebra (sigma vs alpha space, eps vs v), while the noised blend works for
    every diffusers scheduler alike. The kept area ends identical either way; only the repainted area's
    view of its border differs slightly.
    """

    def __init__(self, source: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor) -> None:
        self.source, self.noise, self.keep = source, noise, keep

    @classmethod
    def of(cls, jobs: list[Job]) -> Keep | None:
        """None when no job keeps anything. A job without a keep mask gets keep 0 (x·1 + source·0 is x)."""
        if all(job.keep is None for job in jobs):
            return None
        sources, noises, keeps = [], [], []
        for job in jobs:
            sources.append(job.noise if job.source is None else job.source)
            noises.append(job.noise)
            keep = torch.zeros_like(job.noise[:1, :1]) if job.keep is None else job.keep
            keeps.append(keep.expand(job.count, -1, -1, -1))
        return cls(torch.cat(sources), torch.cat(noises), torch.cat(keeps))

    def blend(self, stepper: SchedulerStepper, latents: torch.Tensor, next_timestep) -> torch.Tensor:
        source = stepper.add_noise(self.source, self.noise, next_timestep)
        return source * self.keep + latents * (1 - self.keep)

    def final(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * (1 - self.keep) + self.source * self.keep


class Cancel:
    """Before each step: a job the caller cancelled leaves the batch (its latents, the stepper's state, its
    CFG rows, its noise and keep rows), or, where the stepper's state cannot be cut, runs on unseen."""

    def __init__(
        self, active: list[Job], stepper, denoiser: cfg.CFGDenoiser, outcomes, should_cancel
    ) -> None:
        self.active, self.stepper, self.denoiser = active, stepper, denoiser
        self.outcomes, self.should_cancel = outcomes, should_cancel

    def __call__(self, latents: torch.Tensor) -> torch.Tensor | None:
        """The latents without the cancelled jobs' rows; None when no job is left."""
        if self.should_cancel is None:
            return latents
        active = self.active
        stay = [job for job in active if not job.cancelled and not self.should_cancel(job.index)]
        if len(stay) == len(active):
            return latents
        for job in active:
            if job not in stay:
                self.outcomes[job.index] = GenerationCancelled("cancelled")
        if not stay:
            return None
        rows, positions, row = [], [], 0
        for position, job in enumerate(active):
            if job in stay:
                rows.extend(range(row, row + job.count))
                positions.append(position)
            row += job.count
        try:
            latents = self.stepper.drop_rows(latents, rows)
        except GenerationError:  # state we cannot slice: the rows run on, unused
            for job in active:
                job.cancelled = job.cancelled or job not in stay
            return latents
        self.denoiser.keep(positions)
        active[:] = stay  # BatchNoise and Report see the same list
        return latents


class Report:
    """After each step: progress (and every ``preview_every`` steps a preview) for each job still wanted."""

    def __init__(
        self, runtime: Runtime, model, active: list[Job], run_steps, total, progress, on_progress
    ) -> None:
        self.runtime, self.model, self.active = runtime, model, active
        self.run_steps, self.total = run_steps, total
        self.done_before, self.report_total = progress or (0, run_steps)
        self.on_progress = on_progress

    def __call__(self, i: int, latents: torch.Tensor) -> None:
        if self.on_progress is None:
            return
        done = min(self.run_steps, max(1, round((i + 1) * self.run_steps / self.total)))
        every = self.runtime.settings.preview_every
        want_preview = every and (done % every == 0) and i + 1 < self.total
        for job, rows in zip(self.active, split_rows(self.active, latents), strict=True):
            if job.cancelled:
                continue
            preview = self.runtime.preview(self.model, rows) if want_preview else None
            step = Progress(step=self.done_before + done, total=self.report_total, preview_png=preview)
            self.on_progress(job.index, step)
