"""``DiffusersEngine``: the ``Engine`` protocol on top of the runtime (models, caches, lock) and the one
generation pipeline (``core.engine.pipeline``). ``generate`` runs a batch of one; ``generate_batch`` groups
compatible jobs (``core.engine.grouping``) into loops of at most ``batch_capacity`` images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from core.config import EngineSettings, PostprocessSettings
from core.engine import grouping, memory, models
from core.engine.job import Outcome
from core.engine.pipeline import Pipeline
from core.engine.runtime import Runtime
from core.types import (
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    Mode,
    OutOfMemory,
    Progress,
)

log = logging.getLogger(__name__)


class DiffusersEngine(Runtime):
    """The real engine. Thread-safe: one generation at a time per engine (a lock)."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        allow_paths: bool = False,
        postprocess: PostprocessSettings | None = None,
    ) -> None:
        super().__init__(settings, allow_paths=allow_paths, postprocess=postprocess)
        self._footprints: dict[tuple, memory.Footprint] = {}  # (model, width, height) -> batch memory
        if settings.threads:
            torch.set_num_threads(settings.threads)
        from core.engine import accel

        import_diffusers()
        accel.install(self)  # compile / warm-up / CPU offload, applied to each model when it loads

    # -- the Engine protocol ---------------------------------------------------------------------

    def model_names(self) -> list[str]:
        from core.engine import catalog

        return catalog.model_names(self.settings)

    def sampler_names(self) -> list[str]:
        from core.engine import samplers

        return samplers.sampler_names()

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """One job: the pipeline with a batch of one."""
        progress = (lambda _, step: on_progress(step)) if on_progress else None
        cancel = (lambda _: should_cancel()) if should_cancel else None
        with self._lock:
            try:
                (outcome,) = Pipeline(self, progress, cancel)([request], [0])
            except torch.OutOfMemoryError:
                models._free_memory()
                raise OutOfMemory(
                    "the GPU ran out of memory: try a smaller size or fewer images per job"
                ) from None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: Callable[[int, Progress], None] | None = None,
        should_cancel: Callable[[int], bool] | None = None,
    ) -> list[GenerationResult | BaseException]:
        """Compatible jobs (txt2img, img2img, inpaint, hires fix) in one denoising loop, at most
        ``batch_capacity`` images per loop; the others one by one.

        Each image equals its job run alone; a failing or cancelled job leaves the others running. A loop
        that runs out of memory or fails unexpectedly is run again one job at a time.
        """
        results: list[Outcome | None] = [None] * len(requests)
        for group in grouping.group_requests(self.settings, requests, self.batch_capacity, self.postprocess):
            if len(group) > 1:
                try:
                    with self._lock:
                        outcomes = Pipeline(self, on_progress, should_cancel)(
                            [requests[i] for i in group], group
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
                results[index] = self._alone(requests[index], index, on_progress, should_cancel)
        return results  # type: ignore[return-value]

    def _alone(self, request, index, on_progress, should_cancel) -> Outcome:
        progress = (lambda step: on_progress(index, step)) if on_progress else None
        cancel = (lambda: should_cancel(index)) if should_cancel else None
        try:
            return self.generate(request, on_progress=progress, should_cancel=cancel)
        except Exception as exc:  # one failed job must not take the others with it
            if not isinstance(exc, (GenerationError, GenerationCancelled)):
                log.exception("job %d of a batch failed", index)
            return exc

    def batch_capacity(self, request: GenerationRequest) -> int:
        """Most images one denoising loop of jobs like ``request`` takes: ``engine.max_batch``, or (0) what
        the free VRAM holds at that size (``core.engine.memory``; measured once per model and size).

        Any failure here (an unknown model, a failed probe) gives 1: the job then fails or runs alone. An
        upscale job runs alone (1): it has no denoising loop of its own to share, and its size (the
        upscaled one) is no size to probe the UNet's memory at.
        """
        if request.mode == Mode.UPSCALE:
            return 1
        if self.settings.max_batch > 0:
            return self.settings.max_batch
        if self.device.type != "cuda":
            return memory.CPU_AUTO
        from core.engine import image_modes

        width, height = request.width, request.height
        if request.enable_hr:
            width, height, _, _ = image_modes.hires_target(
                width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y
            )
        try:
            with self._lock:
                model = self.load_model(request)
                key = (id(model.pipe), width, height)
                footprint = self._footprints.get(key)
                if footprint is None:
                    footprint = self._footprints[key] = memory.measure(self, model, width, height)
                free = memory.free_bytes(self.device)
        except torch.OutOfMemoryError:
            models._free_memory()
            log.warning(
                "no memory left to measure a batch at %dx%d; running jobs one at a time", width, height
            )
            return 1
        except Exception as exc:
            log.info("batch capacity unknown for this job (%s); it runs alone", exc)
            return 1
        buckets = self.settings.batch_buckets if self.settings.compile != "off" else ()
        images = memory.capacity(free, footprint, buckets=buckets)
        if request.controls:  # each ControlNet runs the UNet's encoder again on the same rows: measured
            # footprints are the UNet's alone, so leave each unit an image's share (an OOM still falls back)
            images = max(1, images // (1 + len(request.controls)))
        return images

    def preload(self) -> dict[str, Any]:
        """Load the default model before the first job (the worker calls this when it starts): with
        ``engine.compile`` on, this is where the UNet compiles and warms up for ``warmup_sizes`` ×
        ``batch_buckets``; with ``max_batch = 0`` on CUDA, the batch memory of each warm-up size is
        measured too. Returns what it did, with times (logged by the worker)."""
        from core.engine import accel

        start = time.perf_counter()
        request = GenerationRequest(prompt="")
        with self._lock:
            model = self.load_model(request)
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


def import_diffusers() -> None:
    """Resolve every diffusers class the engine uses, in the thread that builds the engine.

    diffusers imports its classes lazily on first attribute access, and that is not thread-safe: when
    two threads touch it first at the same time (the worker preloading a model while the bot lists
    samplers), one of them can get ``ImportError: cannot import name 'StableDiffusionPipeline'``, for the
    life of the process. Done once here, later accesses are plain attribute reads.
    """
    import diffusers

    for name in (
        "StableDiffusionPipeline",
        "StableDiffusionXLPipeline",
        "AutoencoderKL",
        "UNet2DConditionModel",
    ):
        getattr(diffusers, name)
