"""``DiffusersEngine``: txt2img, img2img, inpaint and hires fix with diffusers' UNet, VAE and schedulers
and A1111's semantics (the image preprocessing lives in ``core.engine.image_modes``).

We use the pipelines' components but run our own denoising loop, because A1111 needs things the
pipelines do not do: per-step prompt schedules (editing, alternation) counted in model calls,
``AND`` parts combined with their weights, separate cond/uncond UNet calls when their lengths differ,
A1111's noise (seeds, variation seeds, ENSD, the ``nv`` source) and, later, several jobs in one loop.
For a plain prompt the loop does exactly what ``StableDiffusionPipeline.__call__`` does (a test
compares the images).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from core import ranges
from core.config import EngineSettings
from core.engine import memory, models
from core.engine.conditioning import (
    Cond,
    EmbeddingLibrary,
    PromptEncoder,
    ScheduledPart,
    encode_interpretation,
    stack_conds,
)
from core.types import (
    GeneratedImage,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    Mode,
    OutOfMemory,
    Progress,
)

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    """Per-stage timings of the last run (seconds), read by ``chant bench engine``."""

    encode: float = 0.0
    steps: list[float] = field(default_factory=list)
    decode: float = 0.0
    png: float = 0.0
    total: float = 0.0
    load: float = 0.0


@dataclass
class _Plan:
    """Everything the loop needs for one request, resolved and encoded."""

    request: GenerationRequest
    model: models.LoadedModel
    seeds: list[int]
    subseeds: list[int]
    positive: list[ScheduledPart]
    negative: ScheduledPart
    sampler: Any
    schedule_steps: int
    interpretation: Any
    rng_source: str
    ensd: int
    empty: Cond | None = None  # the empty prompt's encoding, when pad_cond_uncond is on
    unet_cache: dict = field(default_factory=dict)
    image_cond: torch.Tensor | None = None  # inpainting UNets: [mask, masked-image latents] per image


@dataclass
class _Start:
    """img2img / inpaint / hires second pass: where the loop starts instead of pure noise."""

    latents: torch.Tensor  # the clean source latents, one row per image
    strength: float  # denoising strength: how far down the schedule the loop starts
    steps: int | None = None  # hires: run exactly this many steps (A1111 passes ``steps`` to sample_img2img)
    keep: torch.Tensor | None = None  # inpaint: 1 where the source is kept, (1, 1, h, w) at latent size
    fill: int = 1  # inpainting_fill: 2 latent noise, 3 latent nothing in the masked area


class DiffusersEngine:
    """The real engine. Thread-safe: one generation at a time per engine (a lock)."""

    def __init__(self, settings: EngineSettings, *, allow_paths: bool = False) -> None:
        self.settings = settings
        self.allow_paths = allow_paths
        self.models = models.ModelCache(settings.max_loaded_models, allow_pickle=settings.allow_pickle)
        self.embeddings = EmbeddingLibrary(settings.embedding_dirs)
        self.device, self.dtype = models.torch_device_and_dtype(settings)
        self.last_stats = RunStats()
        self._network_cache = None
        self.sync_stages = False  # benchmarks: wait for the GPU at every stage/step boundary
        self._lock = threading.Lock()
        self._pool = None  # PNG encoding threads, created on first use
        self._footprints: dict[tuple, memory.Footprint] = {}  # (model, width, height) -> batch memory
        if settings.threads:
            torch.set_num_threads(settings.threads)
        from core.engine import accel

        import_diffusers()
        accel.install(self)  # compile / warm-up / CPU offload, applied to each model when it loads

    # -- the Engine protocol ---------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return list(self.settings.models)

    def sampler_names(self) -> list[str]:
        from core.engine import samplers

        return samplers.sampler_names()

    def close(self) -> None:
        self.models.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def preload(self) -> dict[str, Any]:
        """Load the default model before the first job (the worker calls this when it starts): with
        ``engine.compile`` on, this is where the UNet compiles and warms up for ``warmup_sizes`` ×
        ``batch_buckets``; with ``max_batch = 0`` on CUDA, the batch memory of each warm-up size is
        measured too. Returns what it did, with times (logged by the worker)."""
        from core.engine import accel, batch

        start = time.perf_counter()
        request = GenerationRequest(prompt="")
        with self._lock:
            model = batch.load_model(self, request)
        report: dict[str, Any] = {"model": model.name, "load_s": round(time.perf_counter() - start, 3)}
        warmup = accel.last_warmup(model)
        if warmup is not None:
            report["warmup"] = warmup
        if self.settings.max_batch == 0 and self.device.type == "cuda":
            sizes = {}
            for size in self.settings.warmup_sizes:
                width, height = accel.parse_size(size)
                sizes[size] = self.batch_capacity(request.replace(width=width, height=height))
            report["batch_capacity"] = sizes
        return report

    def batch_capacity(self, request: GenerationRequest) -> int:
        """Most images one denoising loop of jobs like ``request`` takes: ``engine.max_batch``, or (0) what
        the free VRAM holds at that size (``core.engine.memory``; measured once per model and size).

        Any failure here (an unknown model, a failed probe) gives 1: the job then fails or runs alone.
        """
        if self.settings.max_batch > 0:
            return self.settings.max_batch
        if self.device.type != "cuda":
            return memory.CPU_AUTO
        from core.engine import batch, image_modes

        width, height = request.width, request.height
        if request.enable_hr:
            width, height, _, _ = image_modes.hires_target(
                width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y
            )
        try:
            with self._lock:
                model = batch.load_model(self, request)
                key = (id(model.pipe), width, height)
                footprint = self._footprints.get(key)
                if footprint is None:
                    footprint = self._footprints[key] = memory.measure(self, model, width, height)
                free = memory.free_bytes(self.device)
        except torch.OutOfMemoryError:
            models._free_memory()
            log.warning("no memory left to measure a batch at %dx%d; running jobs one at a time", width, height)
            return 1
        except Exception as exc:
            log.info("batch capacity unknown for this job (%s); it runs alone", exc)
            return 1
        buckets = self.settings.batch_buckets if self.settings.compile != "off" else ()
        return memory.capacity(free, footprint, buckets=buckets)

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: Callable[[int, Progress], None] | None = None,
        should_cancel: Callable[[int], bool] | None = None,
    ) -> list[GenerationResult | BaseException]:
        """Compatible jobs (txt2img, img2img, inpaint, hires fix) in one denoising loop
        (``core.engine.batch``), at most ``batch_capacity`` images per loop; others one by one.

        Each image equals its job run alone; a failing or cancelled job leaves the others running.
        """
        from core.engine import batch

        return batch.generate_batch(self, requests, on_progress, should_cancel)

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        with self._lock:
            try:
                return self._generate(request, on_progress, should_cancel)
            except torch.OutOfMemoryError:
                models._free_memory()
                raise OutOfMemory(
                    "the GPU ran out of memory: try a smaller size or fewer images per job"
                ) from None

    # -- the steps ---------------------------------------------------------------------------------

    def _generate(self, request, on_progress, should_cancel) -> GenerationResult:
        stats = RunStats()
        start = time.perf_counter()
        # 1. Check inputs; decode and prepare the source image and mask (img2img, inpaint)
        self.check_inputs(request)
        init = self.prepare_init(request)
        # 2. Load the model (LRU)
        source = models.resolve_model(self.settings, request.model, allow_paths=self.allow_paths)
        if request.vae:
            source = _replace(source, vae=models.resolve_vae(self.settings, request.vae))
        model = self.models.get(source, self.device, self.dtype)
        if self.settings.vae_tiling:
            model.pipe.vae.enable_tiling()
        if self.settings.vae_slicing:
            model.pipe.vae.enable_slicing()
        in_channels = model.pipe.unet.config.in_channels
        if init is not None and in_channels not in (4, 9):
            raise GenerationError(
                f"this model's UNet takes {in_channels} input channels; img2img and inpaint work with "
                "regular (4) and inpainting (9) models"
            )
        stats.load = time.perf_counter() - start
        # 3. Interpret the prompts; apply the job's extra networks (<lora:…>, <hypernet:…>) until the
        #    last step, and encode the prompt (A1111 schedules, AND, emphasis, CLIP skip, embeddings)
        t = time.perf_counter()
        interpretations = self.interpret(request)
        with self.extra_networks(model, interpretations[0].networks):
            plan = self.encode_prompt(request, model, interpretations)
            self._sync()
            stats.encode = time.perf_counter() - t
            # 4.-7. Noise (or the source image's latents), timesteps, denoising loop
            start_from = self.image_start(model, init, request) if init is not None else None
            if init is not None and in_channels == 9:
                plan.image_cond = self.inpainting_conditioning(model, init, request.count)
            hires_steps = (request.hr_second_pass_steps or request.steps) if request.enable_hr else 0
            progress = (0, request.steps + hires_steps) if request.enable_hr else None
            latents = self.denoise(
                plan, stats, on_progress, should_cancel, start=start_from, progress=progress
            )
        # 7b. Hires fix: upscale, then a second img2img pass with the hires prompt's schedule
        if request.enable_hr:
            latents = self.hires_pass(plan, latents, stats, on_progress, should_cancel)
        # 8. Decode (inpaint: paste back and composite the original) and write PNGs with A1111's parameters
        t = time.perf_counter()
        images = self.decode(model, latents)
        if init is not None and init.overlay is not None:
            from core.engine import image_modes

            images = [image_modes.apply_overlay(image, init.paste_to, init.overlay) for image in images]
        self._sync()
        stats.decode = time.perf_counter() - t
        t = time.perf_counter()
        generated = self.pngs(plan, images)
        stats.png = time.perf_counter() - t
        stats.total = time.perf_counter() - start
        self.last_stats = stats
        return GenerationResult(
            images=generated,
            model_name=model.name,
            model_hash=model.hash,
            timings={
                "load": stats.load,
                "encode": stats.encode,
                "denoise": sum(stats.steps),
                "decode": stats.decode,
                "png": stats.png,
                "total": stats.total,
            },
        )

    def _sync(self) -> None:
        if self.sync_stages and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def check_inputs(self, request: GenerationRequest) -> None:
        r = request
        self.check_image_inputs(r)
        for name, side in (("width", r.width), ("height", r.height)):
            if not ranges.MIN_SIDE <= side <= ranges.MAX_SIDE or side % ranges.SIDE_MULTIPLE:
                raise GenerationError(
                    f"{name} must be a multiple of {ranges.SIDE_MULTIPLE} between {ranges.MIN_SIDE} and "
                    f"{ranges.MAX_SIDE}, not {side}"
                )
        if not ranges.MIN_STEPS <= r.steps <= ranges.MAX_STEPS:
            raise GenerationError(f"steps must be between {ranges.MIN_STEPS} and {ranges.MAX_STEPS}, not {r.steps}")
        if not ranges.MIN_COUNT <= r.count <= ranges.MAX_COUNT:
            raise GenerationError(f"count must be between {ranges.MIN_COUNT} and {ranges.MAX_COUNT}, not {r.count}")
        if not ranges.MIN_CFG <= r.cfg_scale <= ranges.MAX_CFG:
            raise GenerationError(
                f"CFG scale must be between {ranges.MIN_CFG:g} and {ranges.MAX_CFG:g}, not {r.cfg_scale}"
            )
        if not (r.seed == ranges.RANDOM_SEED or 0 <= r.seed <= ranges.MAX_SEED):
            raise GenerationError(f"seed must be -1 (random) or between 0 and {ranges.MAX_SEED}, not {r.seed}")
        if not (r.subseed == ranges.RANDOM_SEED or 0 <= r.subseed <= ranges.MAX_SEED):
            raise GenerationError(
                f"variation seed must be -1 or between 0 and {ranges.MAX_SEED}, not {r.subseed}"
            )
        if not ranges.MIN_STRENGTH <= r.subseed_strength <= ranges.MAX_STRENGTH:
            raise GenerationError(f"variation strength must be between 0 and 1, not {r.subseed_strength}")
        if (r.rng or self.settings.rng) not in ranges.RNG_SOURCES:
            raise GenerationError(f"RNG source must be gpu, cpu or nv, not {r.rng!r}")
        if r.clip_skip is not None and not ranges.MIN_CLIP_SKIP <= r.clip_skip <= ranges.MAX_CLIP_SKIP:
            raise GenerationError(
                f"CLIP skip must be between {ranges.MIN_CLIP_SKIP} and {ranges.MAX_CLIP_SKIP}, not {r.clip_skip}"
            )

    def check_image_inputs(self, request: GenerationRequest) -> None:
        """img2img / inpaint / hires fix options (the images themselves are decoded by ``prepare_init``)."""
        from core.engine import image_modes

        r = request
        if r.mode not in (Mode.TXT2IMG, Mode.IMG2IMG, Mode.INPAINT):
            raise GenerationError(f"unknown mode {r.mode!r}")
        if r.mode != Mode.TXT2IMG:
            if r.init_image is None:
                raise GenerationError(f"{r.mode} needs a source image")
            if not ranges.MIN_STRENGTH <= r.denoising_strength <= ranges.MAX_STRENGTH:
                raise GenerationError(
                    f"denoising strength must be between 0 and 1, not {r.denoising_strength}"
                )
            if r.resize_mode not in ranges.RESIZE_MODES:
                raise GenerationError(
                    f"resize mode must be 0 (just resize), 1 (crop and resize) or 2 (resize and fill), not {r.resize_mode}"
                )
            if r.enable_hr:
                raise GenerationError(
                    "hires fix is a txt2img option; it cannot be combined with img2img/inpaint"
                )
        elif r.init_image is not None or r.mask_image is not None:
            raise GenerationError("txt2img takes no source image or mask; use img2img or inpaint")
        if r.mode == Mode.IMG2IMG and r.mask_image is not None:
            raise GenerationError("a mask needs the inpaint mode")
        if r.mode == Mode.INPAINT:
            if not ranges.MIN_MASK_BLUR <= r.mask_blur <= ranges.MAX_MASK_BLUR:
                raise GenerationError(
                    f"mask blur must be between {ranges.MIN_MASK_BLUR} and {ranges.MAX_MASK_BLUR}, not {r.mask_blur}"
                )
            if r.inpainting_fill not in ranges.FILL_MODES:
                raise GenerationError(
                    "masked content must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing), "
                    f"not {r.inpainting_fill}"
                )
            if not ranges.MIN_PADDING <= r.inpaint_full_res_padding <= ranges.MAX_PADDING:
                raise GenerationError(
                    f"masked-only padding must be between {ranges.MIN_PADDING} and {ranges.MAX_PADDING}, "
                    f"not {r.inpaint_full_res_padding}"
                )
        if r.enable_hr:
            if r.hr_upscaler not in ranges.UPSCALERS:
                raise GenerationError(
                    f"unknown hires upscaler {r.hr_upscaler!r}; use one of: {', '.join(ranges.UPSCALERS)}"
                )
            if not 0.0 < r.hr_denoising_strength <= 1.0:
                raise GenerationError(
                    f"hires denoising strength must be above 0 and at most 1, not {r.hr_denoising_strength}"
                )
            if not 0 <= r.hr_second_pass_steps <= ranges.MAX_HIRES_STEPS:
                raise GenerationError(
                    f"hires steps must be between 0 and {ranges.MAX_HIRES_STEPS}, not {r.hr_second_pass_steps}"
                )
            if not ranges.MIN_HIRES_SCALE <= r.hr_scale <= ranges.MAX_HIRES_SCALE:
                raise GenerationError(
                    f"hires upscale must be between {ranges.MIN_HIRES_SCALE:g} and {ranges.MAX_HIRES_SCALE:g}, "
                    f"not {r.hr_scale}"
                )
            if r.hr_resize_x < 0 or r.hr_resize_y < 0:
                raise GenerationError("hires resize width and height must not be negative")
            to_x, to_y, tx, ty = image_modes.hires_target(
                r.width, r.height, r.hr_scale, r.hr_resize_x, r.hr_resize_y
            )
            if max(to_x, to_y) > ranges.MAX_SIDE or min(to_x - 8 * tx, to_y - 8 * ty) < ranges.MIN_SIDE:
                raise GenerationError(
                    f"the hires size {to_x}x{to_y} must be between {ranges.MIN_SIDE} and {ranges.MAX_SIDE} a side"
                )
            steps = r.hr_second_pass_steps or r.steps
            if steps / min(r.hr_denoising_strength, 0.999) > 1000:
                raise GenerationError("hires denoising strength is too small for that many hires steps")

    def prepare_init(self, request: GenerationRequest):
        """The source image (and mask) decoded and prepared as A1111 does; None for txt2img."""
        if request.mode == Mode.TXT2IMG:
            return None
        from core.engine import image_modes

        limit = self.settings.max_input_megapixels
        try:
            source = image_modes.load_image(request.init_image, max_megapixels=limit, what="source image")
            mask = None
            if request.mask_image is not None:
                mask = image_modes.load_image(request.mask_image, max_megapixels=limit, what="mask image")
            return image_modes.prepare_init(
                source,
                request.width,
                request.height,
                resize_mode=request.resize_mode,
                mask=mask,
                inpaint=request.mode == Mode.INPAINT,
                mask_blur=request.mask_blur,
                inpainting_fill=request.inpainting_fill,
                full_res=request.inpaint_full_res,
                full_res_padding=request.inpaint_full_res_padding,
            )
        except ValueError as exc:
            raise GenerationError(str(exc)) from None

    def image_start(self, model: models.LoadedModel, init, request: GenerationRequest) -> _Start:
        """The source's latents (and the latent keep-mask) for the img2img / inpaint loop."""
        latents = self.encode_images(model, [init.image]).repeat(request.count, 1, 1, 1)
        keep = None
        if init.mask is not None:
            keep = (1.0 - torch.from_numpy(init.mask))[None, None].to(self.device, latents.dtype)
        return _Start(latents=latents, strength=request.denoising_strength, keep=keep, fill=init.fill)

    @torch.no_grad()
    def inpainting_conditioning(self, model: models.LoadedModel, init, count: int) -> torch.Tensor:
        """A1111's ``inpainting_image_conditioning`` for 9-channel UNets: the rounded repaint mask (all
        ones for img2img) at latent size, then the latents of the source with the masked area set to
        grey (0 in [-1, 1]; ``inpainting_mask_weight`` 1)."""
        import numpy as np

        width, height = init.image.size
        if init.work_mask is None:
            mask = torch.ones(1, 1, height, width)
        else:
            values = np.asarray(init.work_mask.convert("L"), dtype=np.float32) / 255.0
            mask = torch.round(torch.from_numpy(values))[None, None]
        pixels = _to_pixels([init.image])
        latents = self.encode_pixels(model, pixels * (1.0 - mask))
        small = torch.nn.functional.interpolate(mask, size=latents.shape[-2:])
        cond = torch.cat([small.to(latents.device, latents.dtype), latents], dim=1)
        return cond.repeat(count, 1, 1, 1)

    @torch.no_grad()
    def encode_images(self, model: models.LoadedModel, images: Sequence[Any]) -> torch.Tensor:
        """VAE-encode PIL images to latents (× the VAE's scaling factor).

        We take the latent distribution's mean: deterministic, where A1111's ``get_first_stage_encoding``
        samples it with the global torch RNG, so A1111 itself is not repeatable there (the posterior's
        std is small next to the noise the sampler adds).
        """
        return self.encode_pixels(model, _to_pixels(images))

    @torch.no_grad()
    def encode_pixels(self, model: models.LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
        """VAE-encode a [-1, 1] image batch (N, 3, H, W) to latents (the distribution's mean)."""
        vae = model.pipe.vae
        upcast = (
            model.kind == "sdxl" and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        )
        if upcast:
            vae.to(torch.float32)
        try:
            dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
            latents = dist.mean * vae.config.scaling_factor
        finally:
            if upcast:
                vae.to(torch.float16)
        return latents.to(model.dtype)

    def hires_pass(self, plan: _Plan, latents, stats: RunStats, on_progress=None, should_cancel=None):
        """A1111's hires fix second pass: upscale the first pass, then img2img at the hires size.

        "Latent*" upscalers interpolate the latents; "Lanczos"/"Nearest"/"None" decode, resize with PIL and
        encode again. The second pass uses the hires prompt (or the prompt) scheduled with A1111's hires
        rebasing, the same seeds (fresh noise at the new size), ``hr_second_pass_steps`` (0 = steps) steps
        at ``hr_denoising_strength``. (``core.engine.batch`` runs the same three parts for several jobs.)
        """
        request, model = plan.request, plan.model
        upscaled = self.hires_upscale(model, request, latents)
        interpretations = self.hires_interpret(request)
        with self.extra_networks(model, interpretations[0].networks):
            hr_plan = self.hires_plan(plan, interpretations)
            start, progress = hires_start(request, upscaled)
            return self.denoise(hr_plan, stats, on_progress, should_cancel, start=start, progress=progress)

    def hires_upscale(self, model: models.LoadedModel, request: GenerationRequest, latents) -> torch.Tensor:
        """The first pass's latents (any number of rows of jobs with ``request``'s hires geometry and
        upscaler) upscaled to the hires size and cropped to the hires resize box."""
        from core.engine import image_modes

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
        else:
            images = self.decode(model, latents)
            images = [image_modes.upscale_image(image, to_x, to_y, request.hr_upscaler) for image in images]
            upscaled = self.encode_images(model, images)
        if tx or ty:
            h, w = upscaled.shape[2], upscaled.shape[3]
            upscaled = upscaled[:, :, ty // 2 : h - (ty + 1) // 2, tx // 2 : w - (tx + 1) // 2]
        return upscaled

    def hires_interpret(self, request: GenerationRequest):
        """The hires pass's (positive, negative) interpretations: the hires prompt (or the prompt),
        scheduled with A1111's hires rebasing."""
        from core.engine import samplers

        hires_steps = request.hr_second_pass_steps or request.steps
        second_order = samplers.is_second_order(request.sampler)
        hires_total = hires_steps * 2 if second_order else hires_steps
        return self.interpret(_hires_request(request), hires_steps=hires_total)

    def hires_plan(self, plan: _Plan, interpretations) -> _Plan:
        """The hires pass's plan: its prompt encoded (inside the hires prompt's extra networks), the first
        pass's request, seeds and ENSD."""
        request = plan.request
        hr_plan = self.encode_prompt(_hires_request(request), plan.model, interpretations)
        return dataclasses.replace(
            hr_plan, request=request, seeds=plan.seeds, subseeds=plan.subseeds, ensd=plan.ensd
        )

    def interpret(self, request: GenerationRequest, *, hires_steps: int | None = None):
        """(positive, negative) ``core.prompt`` interpretations, scheduled in A1111's step counts.

        ``hires_steps`` (the hires pass's scheduling steps): the hires pass's schedule (A1111's rebasing).
        """
        from core.engine import samplers
        from core.prompt.errors import PromptError
        from core.prompt.interpret import interpret

        try:
            samplers.resolve(request.sampler, request.schedule_type)
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        schedule_steps = request.steps * 2 if samplers.is_second_order(request.sampler) else request.steps
        try:
            positive = interpret(
                request.prompt,
                schedule_steps,
                hires_steps=hires_steps,
                use_old_scheduling=self.settings.use_old_scheduling,
            )
            negative = interpret(
                request.negative_prompt,
                schedule_steps,
                negative=True,
                hires_steps=hires_steps,
                use_old_scheduling=self.settings.use_old_scheduling,
            )
        except PromptError as exc:
            raise GenerationError(f"prompt error at column {exc.column}: {exc.message}") from None
        return positive, negative

    @contextlib.contextmanager
    def extra_networks(self, model: models.LoadedModel, networks):
        """LoRA / hypernetwork tags active for one job, taken back exactly afterwards."""
        if not networks:
            yield
            return
        from core.engine.networks.activate import NetworkCache, activate_for_pipeline

        if self._network_cache is None:
            self._network_cache = NetworkCache()
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(
                activate_for_pipeline(model.pipe, networks, self.settings, self._network_cache)
            )
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        with stack:
            yield

    def encode_prompt(
        self, request: GenerationRequest, model: models.LoadedModel, interpretations=None
    ) -> _Plan:
        from core.engine import samplers

        positive, negative = interpretations or self.interpret(request)
        try:
            sampler = samplers.resolve(request.sampler, request.schedule_type)
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        schedule_steps = request.steps * 2 if samplers.is_second_order(request.sampler) else request.steps
        pipe = model.pipe
        text_encoder_2 = getattr(pipe, "text_encoder_2", None)
        widths = PromptEncoder.widths(model.kind, pipe.text_encoder, text_encoder_2)
        encoder = PromptEncoder(
            model.kind,
            pipe.text_encoder,
            text_encoder_2,
            emphasis=self.settings.emphasis,
            comma_padding_backtrack=self.settings.comma_padding_backtrack,
            clip_skip=request.clip_skip or model.source.clip_skip,
            embeddings=self.embeddings.for_widths(widths),
        )
        empty = encoder.encode([""])[0] if self.settings.pad_cond_uncond else None
        positive_parts = encode_interpretation(encoder, positive)
        negative_parts = encode_interpretation(encoder, negative, zero_if_empty=model.kind == "sdxl")
        # A1111 draws a random seed as random.randrange(4294967294), one short of the seeds it accepts.
        seed = request.seed if request.seed != ranges.RANDOM_SEED else random.randrange(ranges.RANDOM_SEED_BOUND)
        subseed = request.subseed
        if subseed == ranges.RANDOM_SEED:
            subseed = random.randrange(ranges.RANDOM_SEED_BOUND)
        ensd = self.settings.eta_noise_seed_delta
        if request.eta_noise_seed_delta is not None:
            ensd = request.eta_noise_seed_delta
        if not samplers.uses_ensd(request.sampler, request.eta):
            ensd = 0
        return _Plan(
            request=request,
            model=model,
            seeds=[seed + i for i in range(request.count)],
            subseeds=[subseed + i for i in range(request.count)],
            positive=positive_parts,
            negative=negative_parts[0],
            sampler=sampler,
            schedule_steps=schedule_steps,
            interpretation=positive,
            rng_source=request.rng or self.settings.rng,
            ensd=ensd,
            empty=empty,
        )

    def make_scheduler(self, plan: _Plan):
        from core.engine import samplers

        try:
            return samplers.make_scheduler(
                plan.model.scheduler_config,
                plan.request.sampler,
                plan.request.schedule_type,
                seeds=plan.seeds,
            )
        except ValueError as exc:
            raise GenerationError(str(exc)) from None

    @torch.no_grad()
    def denoise(
        self,
        plan: _Plan,
        stats: RunStats,
        on_progress=None,
        should_cancel=None,
        *,
        start: _Start | None = None,
        progress: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The sampling loop: txt2img from noise, or (``start``) img2img/inpaint/hires from latents.

        img2img as A1111's k-diffusion samplers: ``t_enc = int(min(strength, 0.999) * steps)`` and the last
        ``t_enc + 1`` steps of the full schedule run; with ``start.steps`` (hires) the schedule has
        ``int(steps / strength)`` steps and exactly ``start.steps`` run. The prompt schedule keeps the full
        step count and its counter starts at 0 on the first step that runs (A1111 §4.5). ``progress`` is
        (steps done before this loop, total steps reported).

        Inpaint (``start.keep``): after every step the kept area is reset to the source latents noised to
        the next step (``scheduler.add_noise``, as diffusers' inpaint pipeline does), and after the last
        step to the clean source latents (A1111's ``samples * nmask + init_latent * mask``). A1111 blends
        the model's x0 prediction instead of x; that needs per-scheduler x0 algebra (sigma vs alpha space,
        eps vs v), while the noised blend works for every diffusers scheduler alike. The kept area ends
        identical either way; only the repainted area's view of its border differs slightly.
        """
        from core.engine import rng

        model, request = plan.model, plan.request
        # 4. Timesteps (img2img: the tail of the full schedule)
        scheduler = self.make_scheduler(plan)
        timesteps, run_steps = schedule(scheduler, request.steps, start, self.device)
        # 5. Initial noise (A1111: image i uses seed + i, shape (4, H/8, W/8))
        shape = latent_shape(model, request, start)
        try:
            image_rng = self.image_rng(plan, shape)
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        noise = image_rng.first().to(self.device, model.dtype)
        latents, init, keep = start_latents(scheduler, start, noise, timesteps, self.device, model.dtype)
        # 6. Extra step arguments (eta) and SDXL's added conditioning
        step_kwargs = step_arguments(scheduler, request)
        time_ids = self.time_ids(model, shape)
        # 7. Denoising loop
        total = len(timesteps)
        done_before, report_total = progress or (0, run_steps)
        preview_every = self.settings.preview_every
        with rng.scheduler_noise(scheduler, image_rng):
            for i, t in enumerate(timesteps):
                if should_cancel is not None and should_cancel():
                    raise GenerationCancelled("cancelled")
                step_start = time.perf_counter()
                noise_pred = self.guided_noise(plan, latents, scheduler, t, counter=i, time_ids=time_ids)
                latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
                if keep is not None and i + 1 < total:
                    # Inpaint: outside the mask the latents follow the source, noised to the next step.
                    latents = keep_source(scheduler, latents, init, noise, keep, timesteps[i + 1 : i + 2])
                self._sync()
                stats.steps.append(time.perf_counter() - step_start)
                if on_progress is not None:
                    done = min(run_steps, max(1, round((i + 1) * run_steps / total)))
                    preview = None
                    if preview_every and (done % preview_every == 0) and i + 1 < total:
                        preview = self._preview(model, latents)
                    on_progress(Progress(step=done_before + done, total=report_total, preview_png=preview))
        if keep is not None:
            latents = keep_final(latents, init, keep)
        return latents

    def image_rng(self, plan: _Plan, shape: Sequence[int]):
        """The job's :class:`~core.engine.rng.ImageRNG` (seeds, variation seed, ENSD, source); ValueError
        for seeds it cannot take."""
        from core.engine import rng

        request = plan.request
        return rng.ImageRNG(
            shape,
            plan.seeds,
            subseeds=plan.subseeds if request.subseed_strength > 0 else None,
            subseed_strength=request.subseed_strength,
            source=plan.rng_source,
            device=self.device,
            eta_noise_seed_delta=plan.ensd,
        )

    def time_ids(self, model: models.LoadedModel, shape: Sequence[int]) -> torch.Tensor | None:
        """SDXL's added ``time_ids`` for latents of ``shape`` (C, h, w); None for other models."""
        if model.kind != "sdxl":
            return None
        factor = model.vae_scale_factor
        height, width = shape[1] * factor, shape[2] * factor
        return torch.tensor(
            [[height, width, 0, 0, height, width]],
            dtype=model.dtype,
            device=self.device,
        )

    def unet_inputs(self, plan: _Plan, counter: int, count: int, time_ids=None) -> list[tuple[int, Any, Any]]:
        """The UNet calls for the conditioning at ``counter``: (repeats, embeds, added_cond_kwargs).

        One call with [uncond, cond₁ … condₙ] when their lengths agree, else uncond and the conds
        separately (A1111's default). Cached per distinct conditioning: schedules switch rarely.
        """
        conds = [part.at(counter) for part in plan.positive]
        uncond = plan.negative.at(counter)
        key = (id(uncond), *map(id, conds))
        if key in plan.unet_cache:
            return plan.unet_cache[key]

        def expand(tensor: torch.Tensor | None) -> torch.Tensor | None:  # each row `count` times
            return None if tensor is None else tensor.repeat_interleave(count, dim=0)

        def added(pooled: torch.Tensor | None, rows: int):
            if time_ids is None:
                return None
            return {"text_embeds": pooled, "time_ids": time_ids.repeat(rows, 1)}

        cond_embeds = stack_conds([c.embeds for c in conds])  # [parts, tokens, channels]
        cond_pooled = torch.stack([c.pooled for c in conds]) if conds[0].pooled is not None else None
        uncond_embeds = uncond.embeds[None]
        if plan.empty is not None and uncond_embeds.shape[1] != cond_embeds.shape[1]:
            # A1111 pad_cond_uncond: the shorter side gets copies of the empty prompt's encoding.
            def pad(embeds: torch.Tensor, length: int) -> torch.Tensor:
                repeats = (length - embeds.shape[1]) // plan.empty.embeds.shape[0]
                filler = plan.empty.embeds[None].repeat(embeds.shape[0], repeats, 1)
                return torch.cat([embeds, filler], dim=1)

            longest = max(uncond_embeds.shape[1], cond_embeds.shape[1])
            cond_embeds = pad(cond_embeds, longest) if cond_embeds.shape[1] < longest else cond_embeds
            uncond_embeds = pad(uncond_embeds, longest) if uncond_embeds.shape[1] < longest else uncond_embeds
        uncond_pooled = uncond.pooled[None] if uncond.pooled is not None else None
        n = len(conds)
        if uncond_embeds.shape[1] == cond_embeds.shape[1]:
            pooled = None if cond_pooled is None else torch.cat([uncond_pooled, cond_pooled])
            calls = [
                (
                    n + 1,
                    expand(torch.cat([uncond_embeds, cond_embeds])),
                    added(expand(pooled), (n + 1) * count),
                )
            ]
        else:
            calls = [
                (1, expand(uncond_embeds), added(expand(uncond_pooled), count)),
                (n, expand(cond_embeds), added(expand(cond_pooled), n * count)),
            ]
        plan.unet_cache[key] = calls
        return calls

    def guided_noise(
        self, plan: _Plan, latents, scheduler, t, *, counter: int, time_ids=None
    ) -> torch.Tensor:
        """A1111's CFG with ``AND``: uncond + Σ wᵢ·s·(condᵢ − uncond), on ε predictions."""
        count = latents.shape[0]
        unet = plan.model.pipe.unet
        model_input = scheduler.scale_model_input(latents, t)
        if plan.image_cond is not None:  # inpainting UNet: [latents, mask, masked-image latents]
            model_input = torch.cat([model_input, plan.image_cond.to(model_input.dtype)], dim=1)
        outputs = []
        for repeats, embeds, added in self.unet_inputs(plan, counter, count, time_ids):
            x = torch.cat([model_input] * repeats) if repeats > 1 else model_input
            outputs.append(
                unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
            )
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        out_uncond, out_conds = out[:count], out[count:]
        result = out_uncond
        s = plan.request.cfg_scale
        for index, part in enumerate(plan.positive):
            cond = out_conds[index * count : (index + 1) * count]
            result = result + (part.weight * s) * (cond - out_uncond)
        return result

    @torch.no_grad()
    def decode(self, model: models.LoadedModel, latents: torch.Tensor) -> list:
        """Latents -> PIL images, ``vae_decode_batch`` latents per VAE call (a big batch's decode peak
        stays that of one chunk)."""
        return model.pipe.image_processor.postprocess(self.decode_latents(model, latents), output_type="pil")

    @torch.no_grad()
    def decode_latents(self, model: models.LoadedModel, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> image tensor in [-1, 1], in chunks of ``vae_decode_batch`` (0: all at once)."""
        vae = model.pipe.vae
        # As the pipelines do: only SDXL's VAE is decoded in fp32 (its fp16 decode overflows).
        upcast = (
            model.kind == "sdxl" and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        )
        if upcast:
            vae.to(torch.float32)
        try:
            latents = latents.to(vae.dtype) / vae.config.scaling_factor
            chunk = self.settings.vae_decode_batch or latents.shape[0]
            pieces = [
                vae.decode(latents[i : i + chunk], return_dict=False)[0]
                for i in range(0, latents.shape[0], chunk)
            ]
        finally:
            if upcast:
                vae.to(torch.float16)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _preview(self, model: models.LoadedModel, latents: torch.Tensor) -> bytes | None:
        try:
            from core.engine.preview import latent_preview

            return latent_preview(latents, model.kind)
        except Exception:  # a preview must never fail a job
            log.debug("preview failed", exc_info=True)
            return None

    def pngs(self, plan: _Plan, images: Sequence[Any]) -> tuple[GeneratedImage, ...]:
        """Every image of ``plan`` as a PNG with its parameters, encoded in parallel (Pillow's zlib
        releases the GIL): a batch of 16 images costs about one encode, not sixteen, of GPU idle time."""
        if len(images) == 1:
            return (self._png(plan, 0, images[0]),)
        return tuple(self._png_pool().map(lambda pair: self._png(plan, *pair), enumerate(images)))

    def _png_pool(self):
        if self._pool is None:
            import os
            from concurrent.futures import ThreadPoolExecutor

            workers = max(1, min(16, (os.cpu_count() or 2) - 1))
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="chant-png")
        return self._pool

    def _png(self, plan: _Plan, index: int, image) -> GeneratedImage:
        from core.engine import infotext

        request = plan.request
        seed, subseed = plan.seeds[index], plan.subseeds[index]
        text = infotext.infotext_for_request(
            request.replace(sampler=plan.sampler.name),
            seed=seed,
            subseed=subseed,
            schedule_type=plan.sampler.schedule_type,
            model_name=plan.model.name,
            model_hash=plan.model.hash or None,
            clip_skip=request.clip_skip or plan.model.source.clip_skip,
            ensd=plan.ensd,
            rng=plan.rng_source,
            extra={
                **_image_mode_infotext(request),
                "Eta": request.eta,
                "Emphasis": None if self.settings.emphasis == "Original" else self.settings.emphasis,
            },
        )
        return GeneratedImage(
            png=infotext.png_with_infotext(image, text), seed=seed, subseed=subseed, infotext=text
        )


# -- the loop's parts, shared with core.engine.batch ---------------------------------------------------


def schedule(scheduler, steps: int, start: _Start | None, device) -> tuple[torch.Tensor, int]:
    """Set ``scheduler``'s timesteps; returns (the timesteps that run, the steps they count as).

    txt2img: all ``steps``. img2img (``start``): A1111's ``t_enc = int(min(strength, 0.999) * steps)``, the
    last ``t_enc + 1`` steps of the full schedule; hires (``start.steps``): a schedule of
    ``int(start.steps / strength)`` steps of which the last ``start.steps`` run.
    """
    if start is None:
        total_steps = run_steps = steps
    else:
        strength = min(start.strength, 0.999)
        if start.steps is not None:
            run_steps = start.steps
            total_steps = int(run_steps / strength)
        else:
            total_steps = steps
            run_steps = int(strength * total_steps) + 1
    scheduler.set_timesteps(total_steps, device=device)
    timesteps = scheduler.timesteps
    if start is not None:
        begin = (total_steps - run_steps) * scheduler.order
        timesteps = timesteps[begin:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
    return timesteps, run_steps


def latent_shape(model: models.LoadedModel, request: GenerationRequest, start: _Start | None) -> tuple:
    """One image's noise shape: (UNet channels, H/8, W/8), or the start latents' shape."""
    if start is not None:
        return tuple(start.latents.shape[1:])
    factor = model.vae_scale_factor
    return (model.pipe.unet.config.in_channels, request.height // factor, request.width // factor)


def start_latents(scheduler, start: _Start | None, noise, timesteps, device, dtype):
    """The loop's first latents, plus (inpaint) the source latents and keep mask it blends back:
    ``(latents, init, keep)``; ``init`` and ``keep`` are None without ``start.keep``."""
    if start is None:
        return noise * scheduler.init_noise_sigma, None, None
    # A1111: the source latents, noised to the first step that runs; inpaint's "latent noise" /
    # "latent nothing" replace the masked area first (with the same seed's noise / zeros).
    init, keep = start.latents.to(device, dtype), start.keep
    if keep is not None and start.fill == 2:
        init = init * keep + noise * (1 - keep)
    elif keep is not None and start.fill == 3:
        init = init * keep
    latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(noise.shape[0]))
    return latents, init, keep


def keep_source(scheduler, latents, init, noise, keep, next_timestep) -> torch.Tensor:
    """Inpaint, after a step: the kept area set to the source latents noised to ``next_timestep``."""
    source = scheduler.add_noise(init, noise, next_timestep.repeat(noise.shape[0]))
    return source * keep + latents * (1 - keep)


def keep_final(latents, init, keep) -> torch.Tensor:
    """Inpaint, after the last step: A1111's ``samples * nmask + init_latent * mask``."""
    return latents * (1 - keep) + init * keep


def step_arguments(scheduler, request: GenerationRequest) -> dict[str, Any]:
    """Extra ``scheduler.step`` arguments: eta where the scheduler takes one."""
    if request.eta is not None and "eta" in _step_parameters(scheduler):
        return {"eta": request.eta}
    return {}


def _hires_request(request: GenerationRequest) -> GenerationRequest:
    """The request with the hires prompt and negative prompt (each defaulting to the first pass's)."""
    return request.replace(
        prompt=request.hr_prompt or request.prompt,
        negative_prompt=request.hr_negative_prompt or request.negative_prompt,
    )


def hires_start(request: GenerationRequest, upscaled: torch.Tensor) -> tuple[_Start, tuple[int, int]]:
    """The hires pass's start (the upscaled latents) and progress (steps before it, steps in all)."""
    hires_steps = request.hr_second_pass_steps or request.steps
    start = _Start(latents=upscaled, strength=request.hr_denoising_strength, steps=hires_steps)
    return start, (request.steps, request.steps + hires_steps)


def import_diffusers() -> None:
    """Resolve every diffusers class the engine uses, in the thread that builds the engine.

    diffusers imports its classes lazily on first attribute access, and that is not thread-safe: when
    two threads touch it first at the same time (the worker preloading a model while the bot lists
    samplers), one of them can get ``ImportError: cannot import name 'StableDiffusionPipeline'`` or a
    missing scheduler class, for the life of the process. Done once here, later accesses are plain
    attribute reads.
    """
    import diffusers

    from core.engine import samplers

    names = {row.cls_name for row in samplers.SAMPLERS.values()}
    names |= {"StableDiffusionPipeline", "StableDiffusionXLPipeline", "AutoencoderKL", "UNet2DConditionModel"}
    for name in sorted(names):
        getattr(diffusers, name)


def _to_pixels(images: Sequence[Any]) -> torch.Tensor:
    """PIL images as one (N, 3, H, W) float tensor in [-1, 1]."""
    import numpy as np

    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2.0 - 1.0


def _image_mode_infotext(request: GenerationRequest) -> dict[str, Any]:
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


def _step_parameters(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


def _replace(source: models.ModelSource, **changes) -> models.ModelSource:
    import dataclasses

    return dataclasses.replace(source, **changes)
