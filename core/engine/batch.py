"""Several compatible jobs in one denoising loop, each image as if its job ran alone.

txt2img, img2img, inpaint and hires-fix jobs all batch, with jobs of their own mode. A batch shares what
shapes the loop (``GenerationRequest.batch_key`` plus the LoRA sets and eta): model, size, sampler, schedule
type, steps, RNG source, eta; img2img/inpaint also the denoising strength; hires fix also the hires geometry,
upscaler, second-pass steps and strength, and the hires prompt's LoRA set. Everything else stays per job:
prompt schedule (editing and alternation at A1111's step counter), ``AND`` parts and weights, negative
prompt, CFG scale, seeds, variation seed, ENSD, and the source image, mask, mask blur, masked content, resize
mode and masked-only options.

Before the loop each job decodes and prepares its own source and mask (``DiffusersEngine.prepare_init``) and
gets its own start (``image_start``: its source latents, inpaint keep mask and masked content) and, for an
inpainting (9-channel) UNet, its own ``image_cond`` rows. Per step:

1. the latents of all jobs go through ``scheduler.scale_model_input`` together (one sigma for all); an
   inpainting UNet's input gets each job's own mask and masked-image latents appended;
2. each job asks the engine for its UNet inputs (``DiffusersEngine.unet_inputs``: [uncond, cond…] in one
   row block when their token lengths agree, separately otherwise), and all row blocks of equal token
   length go through the UNet in ONE call. Nothing is padded that a job alone would not pad, so
   every row sees exactly the conditioning it sees alone;
3. each job's CFG (uncond + Σ wᵢ·s·(condᵢ − uncond)) is computed on its own rows;
4. one ``scheduler.step`` for the whole batch: diffusers' schedulers work per element, and their per-sample
   state (multistep histories, Heun's first-stage sample, Brownian trees) is sliced when a job leaves;
5. inpaint: each job's rows are reset outside its own mask to its source, noised with its own first noise
   (``diffusers_engine.keep_source``; after the last step ``keep_final``), as ``DiffusersEngine.denoise``.

The loop's parts are the single job's (``diffusers_engine.schedule`` / ``start_latents`` / ``keep_source``):
img2img starts every job at the same step of the same schedule, from its own source latents noised with its
own seed's noise. Hires fix: one loop for the first passes; each job's latents upscaled on its own (latent
interpolation, or decode, PIL resize and encode); one loop for the second passes, each job with its own
hires prompt schedule. After the decode each inpaint job's images are pasted
back and composited over its own source (``image_modes.apply_overlay``), as ``_generate`` does.

Step noise comes from each job's own :class:`~core.engine.rng.ImageRNG` (:class:`BatchNoise`), so ancestral
and SDE samplers draw what each job draws alone. A cancelled job's rows (latents, scheduler state, and its
source latents, noise and keep mask) leave the batch before the next step; a job whose prompt, source image
or mask is bad fails alone, with the message it gets alone, before the loop starts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from core.engine import models
from core.types import (
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    Progress,
)

log = logging.getLogger(__name__)

Outcome = GenerationResult | BaseException


@dataclasses.dataclass
class _Job:
    index: int  # position in the caller's list
    plan: Any  # diffusers_engine._Plan
    init: Any = None  # image_modes.PreparedInit: img2img / inpaint source (its overlay is applied at the end)
    start: Any = None  # diffusers_engine._Start: where this job's loop starts (None: from noise)
    image_rng: Any = None  # rng.ImageRNG
    noise: torch.Tensor | None = None  # the first noise (img2img / inpaint: what its source is noised with)
    source: torch.Tensor | None = None  # inpaint: the source latents (masked content applied) it keeps
    keep: torch.Tensor | None = None  # inpaint: 1 where the source is kept, (1, 1, h, w)
    latents: torch.Tensor | None = None  # final latents once the loop is done
    cancelled: bool = False  # cancelled, but its rows could not leave the batch

    @property
    def count(self) -> int:
        return len(self.plan.seeds)


class BatchNoise:
    """The step noise of several jobs' :class:`ImageRNG`\\ s, stacked in batch order (active jobs only)."""

    def __init__(self, jobs: list[_Job]) -> None:
        self.jobs = jobs

    def first(self) -> torch.Tensor:
        return torch.cat([job.image_rng.first() for job in self.jobs])

    def next(self) -> torch.Tensor:
        return torch.cat([job.image_rng.next() for job in self.jobs])


# -- grouping -------------------------------------------------------------------------------------------


def batch_key(engine, request: GenerationRequest) -> tuple | None:
    """Jobs with equal keys share one loop; None: this job runs alone (bad options or a bad prompt).

    ``request.batch_key()`` (mode, size, steps, …, img2img's strength, the hires geometry) plus the LoRA
    set, eta and, for hires fix, the hires prompt's LoRA set. Source images and masks are not read here:
    a bad one fails its job alone in ``run_group``.
    """
    from core.engine.networks import networks_key

    try:
        engine.check_inputs(request)
        positive, _ = engine.interpret(request)
        hires = None
        if request.enable_hr:
            hires = networks_key(engine.hires_interpret(request)[0].networks)
    except (GenerationError, ValueError):
        return None  # it fails alone, with the message generate() gives
    return (*request.batch_key(), networks_key(positive.networks), request.eta, hires)


def group_requests(
    engine,
    requests: Sequence[GenerationRequest],
    max_images: int | Callable[[GenerationRequest], int] | None = None,
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
        key = batch_key(engine, request)
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


def generate_batch(
    engine,
    requests: Sequence[GenerationRequest],
    on_progress: Callable[[int, Progress], None] | None = None,
    should_cancel: Callable[[int], bool] | None = None,
) -> list[Outcome]:
    """``DiffusersEngine.generate_batch``: compatible jobs together, the others one by one."""
    results: list[Outcome | None] = [None] * len(requests)
    for group in group_requests(engine, requests, engine.batch_capacity):
        if len(group) > 1:
            try:
                with engine._lock:
                    outcomes = run_group(
                        engine, [requests[i] for i in group], group, on_progress, should_cancel
                    )
            except torch.OutOfMemoryError:
                models._free_memory()
                log.warning("a batch of %d jobs ran out of memory; running them one by one", len(group))
                outcomes = None
            except Exception:  # an unexpected failure: find out alone which job it was
                log.exception("a batch of %d jobs failed; running them one by one", len(group))
                outcomes = None
            if outcomes is not None:
                for index, outcome in zip(group, outcomes, strict=True):
                    results[index] = outcome
                continue
        for index in group:
            results[index] = _alone(engine, requests[index], index, on_progress, should_cancel)
    return results  # type: ignore[return-value]


def _alone(engine, request, index, on_progress, should_cancel) -> Outcome:
    progress = (lambda p: on_progress(index, p)) if on_progress else None
    cancel = (lambda: should_cancel(index)) if should_cancel else None
    try:
        return engine.generate(request, on_progress=progress, should_cancel=cancel)
    except Exception as exc:  # one failed job must not take the others with it
        if not isinstance(exc, (GenerationError, GenerationCancelled)):
            log.exception("job %d of a batch failed", index)
        return exc


# -- one group --------------------------------------------------------------------------------------------


def load_model(engine, request: GenerationRequest) -> models.LoadedModel:
    """As ``DiffusersEngine._generate`` step 2: the request's model (LRU) with its VAE and VAE switches."""
    source = models.resolve_model(engine.settings, request.model, allow_paths=engine.allow_paths)
    if request.vae:
        source = dataclasses.replace(source, vae=models.resolve_vae(engine.settings, request.vae))
    model = engine.models.get(source, engine.device, engine.dtype)
    if engine.settings.vae_tiling:
        model.pipe.vae.enable_tiling()
    if engine.settings.vae_slicing:
        model.pipe.vae.enable_slicing()
    return model


def run_group(
    engine,
    requests: Sequence[GenerationRequest],
    indices: Sequence[int],
    on_progress: Callable[[int, Progress], None] | None = None,
    should_cancel: Callable[[int], bool] | None = None,
) -> list[Outcome]:
    """Run compatible ``requests`` (caller's ``indices``) in one loop; the engine lock must be held."""
    from core.engine.diffusers_engine import RunStats

    stats = RunStats()
    start = time.perf_counter()
    outcomes: dict[int, Outcome] = {}
    valid: list[tuple[int, GenerationRequest, Any, Any]] = []  # (index, request, interpretations, init)
    for index, request in zip(indices, requests, strict=True):
        try:  # in generate()'s order, so a job fails with the message it gets alone
            engine.check_inputs(request)
            init = engine.prepare_init(request)  # img2img / inpaint: the source (and mask) decoded
            valid.append((index, request, engine.interpret(request), init))
        except GenerationError as exc:
            outcomes[index] = exc
    if valid:
        try:
            _run_valid(engine, valid, stats, start, outcomes, on_progress, should_cancel)
        except GenerationError as exc:  # shared by all: the model, the LoRA set
            for index, *_ in valid:
                outcomes.setdefault(index, exc)
    return [outcomes[i] for i in indices]


def _run_valid(engine, valid, stats, start, outcomes, on_progress, should_cancel) -> None:
    model = load_model(engine, valid[0][1])
    in_channels = model.pipe.unet.config.in_channels
    if any(init is not None for *_, init in valid) and in_channels not in (4, 9):
        raise GenerationError(  # as _generate
            f"this model's UNet takes {in_channels} input channels; img2img and inpaint work with "
            "regular (4) and inpainting (9) models"
        )
    stats.load = time.perf_counter() - start
    t = time.perf_counter()
    jobs: list[_Job] = []
    first = valid[0][1]
    with engine.extra_networks(model, valid[0][2][0].networks):
        for index, request, interpretations, init in valid:
            try:
                jobs.append(_Job(index, engine.encode_prompt(request, model, interpretations), init=init))
            except GenerationError as exc:
                outcomes[index] = exc
        engine._sync()
        stats.encode = time.perf_counter() - t
        if not jobs:
            return
        for job in jobs:  # each job's source latents, keep mask and (inpainting UNets) image_cond
            if job.init is not None:
                job.start = engine.image_start(model, job.init, job.plan.request)
                if in_channels == 9:
                    job.plan.image_cond = engine.inpainting_conditioning(model, job.init, job.count)
        progress = None
        if first.enable_hr:
            progress = (0, first.steps + (first.hr_second_pass_steps or first.steps))
        finished = denoise_batch(engine, jobs, stats, outcomes, on_progress, should_cancel, progress=progress)
    if finished and first.enable_hr:
        finished = hires_batch(engine, model, finished, stats, outcomes, on_progress, should_cancel)
    if not finished:
        return
    t = time.perf_counter()
    images = engine.decode(model, torch.cat([job.latents for job in finished]))
    images = overlays(finished, images)  # inpaint: each job pasted back onto its own source
    engine._sync()
    stats.decode = time.perf_counter() - t
    t = time.perf_counter()
    pool, futures = engine._png_pool(), []
    for job in finished:  # every image of every job encoded in parallel
        mine, images = images[: job.count], images[job.count :]
        futures.append([pool.submit(engine._png, job.plan, i, image) for i, image in enumerate(mine)])
    pngs = [tuple(f.result() for f in job_futures) for job_futures in futures]
    stats.png = time.perf_counter() - t
    stats.total = time.perf_counter() - start
    engine.last_stats = stats
    timings = {
        "load": stats.load,
        "encode": stats.encode,
        "denoise": sum(stats.steps),
        "decode": stats.decode,
        "png": stats.png,
        "total": stats.total,
        "batch_jobs": float(len(jobs)),
    }
    for job, generated in zip(finished, pngs, strict=True):
        outcomes[job.index] = GenerationResult(
            images=generated, model_name=model.name, model_hash=model.hash, timings=dict(timings)
        )


@torch.no_grad()
def hires_batch(
    engine,
    model: models.LoadedModel,
    jobs: list[_Job],
    stats,
    outcomes: dict[int, Outcome],
    on_progress: Callable[[int, Progress], None] | None = None,
    should_cancel: Callable[[int], bool] | None = None,
) -> list[_Job]:
    """Hires fix for jobs whose first passes are done (as ``DiffusersEngine.hires_pass``): each job
    upscaled on its own, then one second-pass loop, each job with its own hires prompt schedule.
    Returns the jobs that finished, their ``latents`` now the second pass's."""
    from core.engine.diffusers_engine import hires_start

    interpreted = []
    for job in jobs:
        try:
            interpretations = engine.hires_interpret(job.plan.request)
        except GenerationError as exc:
            outcomes[job.index] = exc
            continue
        # Each job upscaled on its own, as alone (a pixel upscaler decodes, resizes and encodes its
        # images); the hires size is the batch's.
        interpreted.append((job, interpretations, engine.hires_upscale(model, job.plan.request, job.latents)))
    if not interpreted:
        return []
    second: list[_Job] = []
    with engine.extra_networks(model, interpreted[0][1][0].networks):  # equal for all (batch_key)
        for job, interpretations, upscaled in interpreted:
            try:
                plan = engine.hires_plan(job.plan, interpretations)
            except GenerationError as exc:
                outcomes[job.index] = exc
                continue
            start, progress = hires_start(job.plan.request, upscaled)
            second.append(_Job(job.index, plan, init=job.init, start=start))
        if not second:
            return []
        done = denoise_batch(engine, second, stats, outcomes, on_progress, should_cancel, progress=progress)
    finished = {job.index: job for job in done}
    for job in jobs:  # the first pass's plans write the PNGs, as generate() does
        if job.index in finished:
            job.latents = finished[job.index].latents
    return [job for job in jobs if job.index in finished]


def overlays(jobs: list[_Job], images: list) -> list:
    """``images`` (every job's, in batch order) with each inpaint job's own overlay applied: a masked-only
    result pasted back into its box, the original's kept pixels composited over it (as ``_generate``)."""
    from core.engine import image_modes

    out, row = [], 0
    for job in jobs:
        mine = list(images[row : row + job.count])
        row += job.count
        init = job.init
        if init is not None and init.overlay is not None:
            mine = [image_modes.apply_overlay(image, init.paste_to, init.overlay) for image in mine]
        out.extend(mine)
    return out


@torch.no_grad()
def denoise_batch(
    engine,
    jobs: list[_Job],
    stats,
    outcomes: dict[int, Outcome],
    on_progress: Callable[[int, Progress], None] | None = None,
    should_cancel: Callable[[int], bool] | None = None,
    *,
    progress: tuple[int, int] | None = None,
) -> list[_Job]:
    """The shared loop (as ``DiffusersEngine.denoise`` for one job); returns the jobs that finished.

    Each job starts from noise (``job.start`` None) or from its own ``job.start`` (img2img, inpaint, hires
    second pass: equal strength and steps in a batch, its own latents, keep mask and masked content).
    ``progress``: (steps done before this loop, total steps reported), equal for all jobs.
    """
    from core.engine import rng
    from core.engine.diffusers_engine import (
        keep_final,
        keep_source,
        latent_shape,
        schedule,
        start_latents,
        step_arguments,
    )

    first = jobs[0].plan
    model, request = first.model, first.request
    start = jobs[0].start  # strength and steps: the batch's (batch_key); latents, keep, fill: per job
    if any((job.start is None) != (start is None) for job in jobs):
        raise GenerationError("a batch cannot mix jobs from noise and from a source image")
    # 5. Initial noise: each job's own ImageRNG (seeds, variation seed, ENSD, source)
    shape = latent_shape(model, request, start)
    active: list[_Job] = []
    for job in jobs:
        try:
            job.image_rng = engine.image_rng(job.plan, shape)
            active.append(job)
        except ValueError as exc:
            outcomes[job.index] = GenerationError(str(exc))
    if not active:
        return []
    # 4. Timesteps: one scheduler; per-image state (Brownian trees) seeded with every image's seed
    scheduler = engine.make_scheduler(
        dataclasses.replace(first, seeds=[s for j in active for s in j.plan.seeds])
    )
    timesteps, run_steps = schedule(scheduler, request.steps, start, engine.device)
    pieces = []
    for job in active:  # each job's first noise; img2img: its source noised with it to the first step
        job.noise = job.image_rng.first().to(engine.device, model.dtype)
        latents, job.source, job.keep = start_latents(
            scheduler, job.start, job.noise, timesteps, engine.device, model.dtype
        )
        pieces.append(latents)
    latents = torch.cat(pieces)
    kept = _kept(active)
    noise = BatchNoise(active)
    # 6. Extra step arguments (eta, equal in a batch) and SDXL's added conditioning
    step_kwargs = step_arguments(scheduler, request)
    time_ids = engine.time_ids(model, shape)
    # 7. Denoising loop
    total = len(timesteps)
    done_before, report_total = progress or (0, run_steps)
    preview_every = engine.settings.preview_every
    with rng.scheduler_noise(scheduler, noise):
        for i, t in enumerate(timesteps):
            if should_cancel is not None:
                keep = [job for job in active if not job.cancelled and not should_cancel(job.index)]
                if len(keep) < len(active):
                    for job in active:
                        if job not in keep:
                            outcomes[job.index] = GenerationCancelled("cancelled")
                    if not keep:
                        return []
                    try:
                        latents = drop_rows(scheduler, latents, _rows(active, keep))
                        active[:] = keep  # BatchNoise sees the same list
                        kept = _kept(active)
                    except GenerationError:  # state we cannot slice: the rows run on, unused
                        for job in active:
                            job.cancelled = job.cancelled or job not in keep
            step_start = time.perf_counter()
            noise_pred = guided_noise_batch(
                engine, active, latents, scheduler, t, counter=i, time_ids=time_ids
            )
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            if kept is not None and i + 1 < total:
                # Inpaint: outside its mask each job's rows follow its source, noised to the next step.
                latents = keep_source(scheduler, latents, *kept, timesteps[i + 1 : i + 2])
            engine._sync()
            stats.steps.append(time.perf_counter() - step_start)
            if on_progress is not None:
                done = min(run_steps, max(1, round((i + 1) * run_steps / total)))
                want_preview = preview_every and (done % preview_every == 0) and i + 1 < total
                row = 0
                for job in active:
                    rows = latents[row : row + job.count]
                    row += job.count
                    if job.cancelled:
                        continue
                    preview = engine._preview(model, rows) if want_preview else None
                    step = Progress(step=done_before + done, total=report_total, preview_png=preview)
                    on_progress(job.index, step)
    if kept is not None:
        source, _, keep_mask = kept
        latents = keep_final(latents, source, keep_mask)
    row = 0
    for job in active:
        job.latents = latents[row : row + job.count]
        row += job.count
    return [job for job in active if not job.cancelled]


def _kept(jobs: list[_Job]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Inpaint: (source latents, first noise, keep mask) of ``jobs`` stacked row by row, for
    ``keep_source`` / ``keep_final``; None when no job keeps anything. A job without a keep mask gets
    keep 0 (x·1 + source·0 is x exactly)."""
    if all(job.keep is None for job in jobs):
        return None
    sources, noises, keeps = [], [], []
    for job in jobs:
        sources.append(job.noise if job.source is None else job.source)
        noises.append(job.noise)
        keep = torch.zeros_like(job.noise[:1, :1]) if job.keep is None else job.keep
        keeps.append(keep.expand(job.count, -1, -1, -1))
    return torch.cat(sources), torch.cat(noises), torch.cat(keeps)


def guided_noise_batch(engine, jobs: list[_Job], latents, scheduler, t, *, counter: int, time_ids=None):
    """Every job's A1111 CFG with ``AND``; UNet rows of equal token length share one call."""
    unet = jobs[0].plan.model.pipe.unet
    model_input = scheduler.scale_model_input(latents, t)
    # (job, call) row blocks, grouped by token length
    blocks: list[tuple[int, torch.Tensor, torch.Tensor, dict | None]] = []
    owner: list[int] = []
    row = 0
    for position, job in enumerate(jobs):
        x = model_input[row : row + job.count]
        row += job.count
        if job.plan.image_cond is not None:  # inpainting UNet: [latents, mask, masked-image latents]
            x = torch.cat([x, job.plan.image_cond.to(x.dtype)], dim=1)
        for repeats, embeds, added in engine.unet_inputs(job.plan, counter, job.count, time_ids):
            blocks.append((embeds.shape[1], torch.cat([x] * repeats) if repeats > 1 else x, embeds, added))
            owner.append(position)
    outputs: list[torch.Tensor | None] = [None] * len(blocks)
    for length in dict.fromkeys(b[0] for b in blocks):
        members = [k for k, b in enumerate(blocks) if b[0] == length]
        x = torch.cat([blocks[k][1] for k in members])
        embeds = torch.cat([blocks[k][2] for k in members])
        added = None
        if blocks[members[0]][3] is not None:
            added = {name: torch.cat([blocks[k][3][name] for k in members]) for name in blocks[members[0]][3]}
        out = _unet_call(unet, x, t, embeds, added, getattr(engine, "unet_row_buckets", ()))
        for k, piece in zip(members, out.split([blocks[k][1].shape[0] for k in members]), strict=True):
            outputs[k] = piece
    results = []
    for position, job in enumerate(jobs):
        out = torch.cat([o for o, p in zip(outputs, owner, strict=True) if p == position])
        count = job.count
        out_uncond, out_conds = out[:count], out[count:]
        result = out_uncond
        s = job.plan.request.cfg_scale
        for index, part in enumerate(job.plan.positive):
            cond = out_conds[index * count : (index + 1) * count]
            result = result + (part.weight * s) * (cond - out_uncond)
        results.append(result)
    return torch.cat(results)


def _unet_call(unet, x, t, embeds, added, buckets: Sequence[int]):
    """One UNet call; with ``buckets`` (compiled UNet) the rows are padded up to the next bucket.

    Padding repeats the last row and is cut off again: rows do not see each other, so the real rows'
    outputs do not change, and a compiled UNet (CUDA graphs) meets only the shapes it was warmed up for.
    """
    rows = x.shape[0]
    target = next((b for b in sorted(buckets) if b >= rows), rows)
    if target > rows:

        def pad(tensor):
            return torch.cat([tensor, tensor[-1:].expand(target - rows, *tensor.shape[1:])])

        x, embeds = pad(x), pad(embeds)
        added = None if added is None else {name: pad(value) for name, value in added.items()}
    out = unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
    return out[:rows]


# -- leaving the batch --------------------------------------------------------------------------------------


def _rows(active: list[_Job], keep: list[_Job]) -> list[int]:
    rows, row = [], 0
    for job in active:
        if job in keep:
            rows.extend(range(row, row + job.count))
        row += job.count
    return rows


def drop_rows(scheduler, latents: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``latents[rows]``, and the same rows of every per-sample tensor the scheduler keeps between steps.

    Per-sample state is what has the latents' shape (DPM-Solver/UniPC histories, Heun/DPM2's first-stage
    sample, LMS derivatives) plus the Brownian trees of the SDE samplers (one per image).
    """
    index = torch.tensor(rows, device=latents.device)
    shape = latents.shape
    sampler = getattr(scheduler, "noise_sampler", None)
    tree = getattr(sampler, "tree", sampler)
    if sampler is not None and (
        not getattr(tree, "batched", False) or len(getattr(tree, "trees", ())) != shape[0]
    ):
        raise GenerationError("this sampler cannot drop images from a running batch")

    def cut(value):
        if isinstance(value, torch.Tensor) and value.shape == shape:
            return value.index_select(0, index)
        if isinstance(value, list):
            return [cut(v) for v in value]
        if isinstance(value, tuple):
            return tuple(cut(v) for v in value)
        return value

    for name, value in list(vars(scheduler).items()):
        if name == "noise_sampler" and value is not None:  # BrownianTreeNoiseSampler(BatchedBrownianTree)
            tree.trees = [tree.trees[r] for r in rows]
            continue
        new = cut(value)
        if new is not value:
            setattr(scheduler, name, new)
    return latents.index_select(0, index)
