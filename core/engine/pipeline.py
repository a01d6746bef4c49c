"""The generation pipeline: txt2img, img2img, inpaint and hires fix for 1..N compatible jobs in one
denoising loop, with A1111's semantics, on diffusers' UNet, VAE and text encoders and A1111's samplers
(``core.engine.samplers``: k-diffusion's and A1111's own, over A1111's sigmas). A single job is a batch
of one; ``core.engine.grouping`` decides which jobs are compatible.

We use the diffusers pipelines' components but run our own loop, because A1111 needs things the pipelines
do not do: its samplers and schedule types (continuous timesteps, its sigma tables), per-step prompt
schedules (editing, alternation) counted in model calls, ``AND`` parts combined with their weights,
separate cond/uncond UNet calls when their lengths differ, A1111's noise (seeds, variation seeds, ENSD,
the ``nv`` source, Brownian trees per image), inpaint blended on the x₀ prediction, and several jobs in one
loop, each image as if its job ran alone.

Each job keeps its own prompt schedule, ``AND`` parts, negative prompt, CFG scale and rescale, seeds,
variation seed, ENSD, source image, mask and overlay; what shapes the loop (model, size, sampler, steps,
strength, hires geometry, LoRA set) is the batch's. A job whose inputs, prompt, source image or mask are
bad fails alone, with the message it gets alone, before the loop starts; a failure every job shares (the
model, the LoRA set) fails them all; a job whose latents or pixels come out NaN/inf fails alone after the
loop. A cancelled job's rows leave the loop (``core.engine.loop``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from core.engine import checks, guide, hires, loop, models, output, prompts, vae
from core.engine.job import Job, Outcome, RunStats, Start
from core.engine.runtime import Runtime
from core.types import (
    GeneratedImage,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    Mode,
    Progress,
)

NAN_LATENTS = (
    "the image came out broken (NaN/infinite values while sampling): usually a LoRA, embedding or "
    "hypernetwork with broken or extreme weights (try without it, or a lower weight), or an fp16 overflow "
    'in the UNet (the operator can set engine.dtype = "fp32")'
)
NAN_PIXELS = (
    "the image came out broken (the VAE decoded NaN/infinite pixels, in float32 too): the VAE is likely "
    "broken or does not fit this model; try another VAE (for SDXL in fp16: sdxl-vae-fp16-fix)"
)


class Pipeline:
    """One run: ``Pipeline(runtime, on_progress, should_cancel)(requests, indices)`` returns one result or
    exception per request. Callbacks take the caller's index of the job. The runtime's lock must be held."""

    def __init__(
        self,
        runtime: Runtime,
        on_progress: Callable[[int, Progress], None] | None = None,
        should_cancel: Callable[[int], bool] | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.stats = RunStats()
        self.outcomes: dict[int, Outcome] = {}

    def __call__(self, requests: Sequence[GenerationRequest], indices: Sequence[int]) -> list[Outcome]:
        start = time.perf_counter()
        everyone = list(indices)
        # 0. Upscale jobs, each on its own: an upscaler model, then optionally SD upscale's tiled img2img
        requests, indices = self.upscale_jobs(requests, indices)
        # 1. Check inputs; decode and prepare each job's source image and mask (img2img, inpaint)
        jobs = self.check_inputs(requests, indices)
        try:
            if jobs:
                self.run(jobs, start, batch=len(requests) > 1)
        except GenerationError as exc:  # shared by all: the model, the LoRA set, the sampler
            for job in jobs:
                self.outcomes.setdefault(job.index, exc)
        return [self.outcomes[index] for index in everyone]

    def run(self, jobs: list[Job], start: float, *, batch: bool) -> None:
        stats, runtime = self.stats, self.runtime
        # 2. Load the model (LRU) with its VAE; it must take the jobs' images
        model = runtime.load_model(jobs[0].request)
        self.check_model(model, jobs)
        jobs = self.load_guides(model, jobs)  # ControlNets, IP-Adapter and image tokens (each job's)
        if not jobs:
            return
        stats.load = time.perf_counter() - start
        # 3. Interpret the prompts; apply the extra networks (<lora:…>, <hypernet:…>: the batch's set)
        #    until the last step; encode each prompt (A1111 schedules, AND, emphasis, CLIP skip, embeddings)
        t = time.perf_counter()
        jobs = self.interpret(jobs)
        if not jobs:
            return
        first = jobs[0].request
        with runtime.extra_networks(model, jobs[0].interpretations[0].networks):
            jobs = self.encode_prompt(model, jobs)
            runtime.sync()
            stats.encode = time.perf_counter() - t
            if not jobs:
                return
            # 4. Prepare each job's start: its source's latents and repaint mask (img2img, inpaint), and an
            #    inpainting UNet's [mask, masked-image latents]
            self.prepare_starts(model, jobs)
            # 5.-7. Initial noise, timesteps, denoising loop
            progress = hires.progress(first, second_pass=False) if first.enable_hr else None
            finished = self.denoise(jobs, progress)
        # 8. Hires fix: upscale, then a second img2img pass with each job's hires prompt
        if finished and first.enable_hr:
            finished = self.hires_fix(model, finished)
        if not finished:
            return
        # 9. Decode (a job whose pixels are NaN/inf fails); inpaint: paste each job's images onto its source
        t = time.perf_counter()
        images = runtime.decode(model, torch.cat([job.latents for job in finished]))
        finished, images = self.drop_broken_images(finished, images)
        images = output.apply_overlays(finished, images)
        runtime.sync()
        stats.decode = time.perf_counter() - t
        # 9b. Face restoration, then the detailer (each job's own options; a failure fails that job)
        if any(job.request.face_restoration or job.request.detailer for job in finished):
            t = time.perf_counter()
            finished, images = self.after_decoding(finished, images)
            stats.after = time.perf_counter() - t
            if not finished:
                return
        # 10. PNGs with A1111's parameters
        self.write_results(model, finished, images, start, loop_jobs=len(jobs) if batch else None)

    # -- the steps ---------------------------------------------------------------------------------------

    def check_inputs(self, requests: Sequence[GenerationRequest], indices: Sequence[int]) -> list[Job]:
        """The jobs whose options are valid and whose source and mask decode; the others fail here."""
        jobs = []
        for index, request in zip(indices, requests, strict=True):
            try:
                checks.check_inputs(request, self.settings, self.runtime.postprocess)
                init = checks.prepare_init(request, self.settings)  # img2img / inpaint: the source (and mask)
                # ControlNet units (preprocessed) and reference images
                job_guide = guide.prepare(request, self.settings, str(self.runtime.device))
                jobs.append(Job(index, request, init=init, guide=job_guide))
            except GenerationError as exc:
                self.outcomes[index] = exc
        return jobs

    @staticmethod
    def check_model(model: models.LoadedModel, jobs: list[Job]) -> None:
        in_channels = model.pipe.unet.config.in_channels
        if any(job.init is not None for job in jobs) and in_channels not in (4, 9):
            raise GenerationError(
                f"this model's UNet takes {in_channels} input channels; img2img and inpaint work with "
                "regular (4) and inpainting (9) models"
            )

    def load_guides(self, model: models.LoadedModel, jobs: list[Job]) -> list[Job]:
        """Each guided job's ControlNets and IP-Adapter (``core.engine.guide.load``); one that fails fails alone."""
        runtime = self.runtime

        def load(job: Job) -> None:
            if job.guide is not None:
                guide.load(runtime.guide_models(), model.pipe.unet, job.guide, runtime.device, runtime.dtype)

        return self._each(jobs, load)

    def interpret(self, jobs: list[Job]) -> list[Job]:
        """Each job's (positive, negative) interpretations; a job whose prompt is unusable fails alone."""

        def interpret(job: Job) -> None:
            job.interpretations = prompts.interpret(job.request, self.settings)

        return self._each(jobs, interpret)

    def encode_prompt(self, model: models.LoadedModel, jobs: list[Job], first_pass=None) -> list[Job]:
        """Each job's plan (inside the batch's extra networks). ``first_pass`` (hires: the first pass's
        plans by job index): the hires prompt is encoded, with the first pass's seeds and ENSD."""

        def encode(job: Job) -> None:
            plan = None if first_pass is None else first_pass[job.index]
            job.plan = prompts.encode_prompt(
                job.request if plan is None else hires.hires_request(job.request),
                model,
                job.interpretations,
                settings=self.settings,
                embeddings=self.runtime.embeddings,
                first_pass=plan,
            )
            if job.guide is not None:
                job.plan.guide_params = job.guide.infotext()

        return self._each(jobs, encode)

    def prepare_starts(self, model: models.LoadedModel, jobs: list[Job]) -> None:
        """img2img / inpaint: each job's source latents, latent repaint mask and masked content; for a
        9-channel (inpainting) UNet also its ``image_cond`` rows (txt2img: A1111's all-masked grey)."""
        inpainting_unet = model.pipe.unet.config.in_channels == 9
        for job in jobs:
            init = job.init
            if init is None:
                if inpainting_unet:
                    size = (job.request.height, job.request.width)
                    job.plan.image_cond = vae.blank_inpainting_conditioning(
                        model, job.count, size, self.runtime.device
                    )
                continue
            latents = self.runtime.encode_images(model, [init.image]).repeat(job.count, 1, 1, 1)
            mask = None
            if init.mask is not None:  # A1111's nmask: 1 where the image is repainted
                mask = torch.from_numpy(init.mask)[None, None].to(self.runtime.device, torch.float32)
            strength = job.request.denoising_strength
            job.start = Start(latents=latents, strength=strength, mask=mask, fill=init.fill)
            if inpainting_unet:
                job.plan.image_cond = vae.inpainting_conditioning(model, init, job.count, self.runtime.device)

    def denoise(self, jobs: list[Job], progress: tuple[int, int] | None) -> list[Job]:
        """The loop (``core.engine.loop``); returns the jobs that finished with finite latents. A job
        whose latents came out NaN/inf fails alone, with the likely cause."""
        done = loop.denoise(
            self.runtime,
            jobs,
            self.stats,
            self.outcomes,
            self.on_progress,
            self.should_cancel,
            progress=progress,
        )
        finite = torch.stack([torch.isfinite(job.latents).all() for job in done]).tolist() if done else []
        for job, ok in zip(done, finite, strict=True):
            if not ok:
                self.outcomes[job.index] = GenerationError(NAN_LATENTS)
        return [job for job, ok in zip(done, finite, strict=True) if ok]

    def drop_broken_images(self, jobs: list[Job], images: list) -> tuple[list[Job], list]:
        """The jobs whose every image decoded to finite pixels, and their images; the others fail."""
        kept_jobs, kept_images, row = [], [], 0
        for job in jobs:
            mine = images[row : row + job.count]
            row += job.count
            if any(image is None for image in mine):
                self.outcomes[job.index] = GenerationError(NAN_PIXELS)
                continue
            kept_jobs.append(job)
            kept_images.extend(mine)
        return kept_jobs, kept_images

    def hires_fix(self, model: models.LoadedModel, jobs: list[Job]) -> list[Job]:
        """A1111's hires fix for jobs whose first passes are done: each job upscaled on its own, then one
        second-pass loop, each job with its own hires prompt schedule, seeds and ENSD. Returns the jobs
        that finished, their ``latents`` now the second pass's."""
        first = {job.index: job for job in jobs}

        def interpret(job: Job) -> None:
            job.interpretations = hires.interpret(job.request, self.settings)

        second = self._each(
            [Job(job.index, job.request, init=job.init, guide=job.guide) for job in jobs], interpret
        )
        if not second:
            return []
        runtime = self.runtime

        def decode(model, latents):  # a pixel upscaler's first-pass images; NaN/inf pixels fail the job
            images = runtime.decode(model, latents)
            if any(image is None for image in images):
                raise GenerationError(NAN_PIXELS)
            return images

        def upscale(job: Job) -> None:  # each as alone: a pixel upscaler decodes, resizes and encodes
            latents = first[job.index].latents
            upscaled = hires.upscale(
                model,
                job.request,
                latents,
                decode=decode,
                encode=runtime.encode_images,
                upscale_model=runtime.post.upscalers.upscale_to,
            )
            job.start = hires.start(job.request, upscaled)

        second = self._each(second, upscale)
        if not second:
            return []
        with runtime.extra_networks(model, second[0].interpretations[0].networks):  # equal for all
            second = self.encode_prompt(model, second, {index: job.plan for index, job in first.items()})
            if not second:
                return []
            if model.pipe.unet.config.in_channels == 9:  # A1111: the hires pass is all masked, too
                factor = model.vae_scale_factor
                for job in second:
                    size = (job.start.latents.shape[2] * factor, job.start.latents.shape[3] * factor)
                    job.plan.image_cond = vae.blank_inpainting_conditioning(
                        model, job.count, size, runtime.device
                    )
            done = self.denoise(second, hires.progress(second[0].request, second_pass=True))
        for job in done:  # the first pass's plans write the PNGs
            first[job.index].latents = job.latents
        return [first[job.index] for job in done]

    def upscale_jobs(
        self, requests: Sequence[GenerationRequest], indices: Sequence[int]
    ) -> tuple[list[GenerationRequest], list[int]]:
        """Run the upscale jobs among ``requests``; the others (and their indices) go on to the loop."""
        rest_requests, rest_indices = [], []
        for index, request in zip(indices, requests, strict=True):
            if request.mode != Mode.UPSCALE:
                rest_requests.append(request)
                rest_indices.append(index)
                continue
            try:
                self.outcomes[index] = self.upscale(index, request)
            except (GenerationError, GenerationCancelled) as exc:
                self.outcomes[index] = exc
        return rest_requests, rest_indices

    def upscale(self, index: int, request: GenerationRequest) -> GenerationResult:
        """One upscale job (``core.engine.postprocess.upscale_job``); its detail pass is this engine's
        img2img on each tile, at the job's seed plus the tile's index (A1111's SD upscale seeds a batch so)."""
        import io
        import random

        from PIL import Image

        from core.engine import image_modes, infotext
        from core.engine.postprocess import upscale_job
        from core.ranges import RANDOM_SEED, RANDOM_SEED_BOUND

        start = time.perf_counter()
        checks.check_inputs(request, self.settings, self.runtime.postprocess)
        try:
            source = image_modes.load_image(
                request.init_image, max_megapixels=self.settings.max_input_megapixels, what="image to upscale"
            )
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        seed = random.randrange(RANDOM_SEED_BOUND) if request.seed == RANDOM_SEED else request.seed
        subseed = seed + 1 if request.subseed == RANDOM_SEED else request.subseed
        post = self.runtime.postprocess

        def progress(done: int, total: int) -> None:
            if self.should_cancel is not None and self.should_cancel(index):
                raise GenerationCancelled("cancelled while upscaling")
            if self.on_progress is not None:
                self.on_progress(index, Progress(done, total))

        image = upscale_job.upscale_image(self.runtime.post, request, source, progress)
        model_name, model_hash = request.upscaler, ""
        if request.upscale_detail > 0:
            tiles = upscale_job.detail_tiles(image.width, image.height, post.detail_tile, post.detail_tile_overlap)
            cancel = (lambda _: self.should_cancel(index)) if self.should_cancel else None

            def img2img(tile, i: int):
                progress(i, len(tiles))
                r = request.replace(
                    mode=Mode.IMG2IMG,
                    init_image=infotext.png_with_infotext(tile, "", compress_level=1),
                    width=tile.width,
                    height=tile.height,
                    resize_mode=0,
                    denoising_strength=request.upscale_detail,
                    count=1,
                    seed=seed + i,
                    subseed=subseed + i,
                    upscaler="",
                    upscale_detail=0.0,
                    face_restoration="",
                    detailer="",
                    controls=(),  # SD upscale's tiles: the job's prompt and model, no guide images
                    references=(),
                )
                (outcome,) = Pipeline(self.runtime, None, cancel)([r], [0])
                if isinstance(outcome, BaseException):
                    raise outcome
                nonlocal model_name, model_hash
                model_name, model_hash = outcome.model_name, outcome.model_hash
                return Image.open(io.BytesIO(outcome.images[0].png)).convert("RGB")

            image = upscale_job.detail_pass(image, post.detail_tile, post.detail_tile_overlap, img2img)
        params = upscale_job.infotext_params(request, post.detail_tile_overlap)
        text = upscale_job.append_params(infotext.infotext_of_file(request.init_image) or "", params)
        png = infotext.png_with_infotext(image, text)
        total = time.perf_counter() - start
        return GenerationResult(
            images=(GeneratedImage(png=png, seed=seed, subseed=subseed, infotext=text),),
            model_name=model_name,
            model_hash=model_hash,
            timings={"upscale": total, "total": total},
        )

    def after_decoding(self, jobs: list[Job], images: list) -> tuple[list[Job], list]:
        """Each image of a job with face restoration or the detailer through them (``postprocess.run``);
        the jobs that got through, and their images."""
        from core.engine.postprocess.run import after_decoding

        kept_jobs, kept_images, row = [], [], 0
        for job in jobs:
            mine = list(images[row : row + job.count])
            row += job.count
            if not (job.request.face_restoration or job.request.detailer):
                kept_jobs.append(job)
                kept_images.extend(mine)
                continue
            try:
                for i, image in enumerate(mine):
                    inpaint = self.detailer_inpaint(job, i)
                    mine[i], params = after_decoding(self.runtime.post, job.request, image, inpaint)
                    job.plan.after.update(params)
            except (GenerationError, GenerationCancelled) as exc:
                self.outcomes[job.index] = exc
                continue
            kept_jobs.append(job)
            kept_images.extend(mine)
        return kept_jobs, kept_images

    def detailer_inpaint(self, job: Job, image_index: int):
        """The detailer's inpaint for image ``image_index`` of ``job``: this engine's inpaint "only masked"
        (A1111's inpaint_full_res), a run of its own with the job's model, prompt (or the detailer's),
        sampler, CFG and that image's seed, at the image's size (the working size of the region)."""
        import io

        from PIL import Image

        from core.engine.infotext import png_with_infotext

        request, plan = job.request, job.plan
        cancel = (lambda _: self.should_cancel(job.index)) if self.should_cancel else None

        def inpaint(image, mask, options):
            r = request.replace(
                mode=Mode.INPAINT,
                init_image=png_with_infotext(image, "", compress_level=1),
                mask_image=png_with_infotext(mask.convert("RGB"), "", compress_level=1),
                prompt=options.prompt or request.prompt,
                negative_prompt=options.negative_prompt or request.negative_prompt,
                denoising_strength=options.denoising_strength,
                steps=options.steps or request.steps,
                cfg_scale=request.cfg_scale if options.cfg_scale is None else options.cfg_scale,
                width=options.width or image.width // 8 * 8,
                height=options.height or image.height // 8 * 8,
                resize_mode=0,
                mask_blur=options.mask_blur,
                inpainting_fill=1,  # original
                inpaint_full_res=options.inpaint_full_res,
                inpaint_full_res_padding=options.inpaint_full_res_padding,
                enable_hr=False,
                count=1,
                seed=plan.seeds[image_index],
                subseed=plan.subseeds[image_index],
                face_restoration="",
                detailer="",
                controls=(),  # ADetailer repaints without the job's ControlNets unless told to
                references=(),
            )
            (outcome,) = Pipeline(self.runtime, None, cancel)([r], [0])
            if isinstance(outcome, BaseException):
                raise outcome
            return Image.open(io.BytesIO(outcome.images[0].png)).convert("RGB")

        return inpaint

    def write_results(
        self, model: models.LoadedModel, jobs: list[Job], images: list, start: float, *, loop_jobs: int | None
    ) -> None:
        """Every finished job's PNGs (encoded in parallel) and result, with the run's timings."""
        stats = self.stats
        t = time.perf_counter()
        pool = self.runtime.png_pool() if len(images) > 1 else None
        pngs = output.write_pngs(jobs, images, self.settings, pool)
        stats.png = time.perf_counter() - t
        stats.total = time.perf_counter() - start
        self.runtime.last_stats = stats
        timings = {
            "load": stats.load,
            "encode": stats.encode,
            "denoise": sum(stats.steps),
            "decode": stats.decode,
            "png": stats.png,
            "total": stats.total,
        }
        if stats.after:  # face restoration and the detailer (its inpaint runs included)
            timings["after_decoding"] = stats.after
        if loop_jobs is not None:  # a batch of several jobs: how many shared the loop
            timings["batch_jobs"] = float(loop_jobs)
        for job, generated in zip(jobs, pngs, strict=True):
            self.outcomes[job.index] = GenerationResult(
                images=generated,
                model_name=model.name,
                model_hash=model.hash,
                timings=dict(timings),
                control_maps=job.guide.detected_maps() if job.guide is not None else (),
            )

    # -- helpers -------------------------------------------------------------------------------------------

    def _each(self, jobs: list[Job], step: Callable[[Job], None]) -> list[Job]:
        """``step`` for each job; a job it fails for (``GenerationError``) gets that outcome and leaves."""
        kept = []
        for job in jobs:
            try:
                step(job)
                kept.append(job)
            except GenerationError as exc:
                self.outcomes[job.index] = exc
        return kept
