"""A torch-free stand-in for the diffusers engine, for queue, service and bot tests.

It implements the :class:`core.engine.api.Engine` protocol: it "denoises" for ``steps`` steps
(optionally sleeping between them), reports progress, honours cancellation between steps, and
returns small real PNGs whose "parameters" text chunk is an A1111-style infotext. Prompts can ask
for trouble, so tests can exercise the failure paths without patching:

* a prompt containing ``FAIL`` raises :class:`GenerationError`,
* ``OOM`` raises :class:`OutOfMemory`,
* ``CRASH`` kills the whole process (``os._exit``), as a segfaulting driver would.

:func:`core.bootstrap.build_engine` picks it when ``CHANT_FAKE_ENGINE=1`` (delay per step from
``CHANT_FAKE_ENGINE_DELAY``, seconds).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
from collections.abc import Callable, Sequence

from PIL import Image, PngImagePlugin

from core.ranges import RANDOM_SEED, RANDOM_SEED_BOUND
from core.types import (
    GeneratedImage,
    GenerationCancelled,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    OutOfMemory,
    Progress,
)

FAKE_SAMPLERS = ("Euler a", "Euler", "DPM++ 2M", "DDIM")
FAKE_MODELS = ("fake-sd15", "fake-sdxl")


def fake_infotext(request: GenerationRequest, seed: int, subseed: int, model: str, model_hash: str) -> str:
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    params = [
        f"Steps: {request.steps}",
        f"Sampler: {request.sampler}",
        f"CFG scale: {request.cfg_scale:g}",
        f"Seed: {seed}",
        f"Size: {request.width}x{request.height}",
        f"Model hash: {model_hash}",
        f"Model: {model}",
    ]
    if request.subseed_strength:
        params.insert(4, f"Variation seed: {subseed}, Variation seed strength: {request.subseed_strength:g}")
    lines.append(", ".join(params))
    return "\n".join(lines)


class FakeEngine:
    """See the module docstring. ``step_delay_s`` is slept after every step."""

    def __init__(
        self,
        *,
        step_delay_s: float = 0.0,
        models: Sequence[str] = FAKE_MODELS,
        samplers: Sequence[str] = FAKE_SAMPLERS,
        preview_every: int = 5,
        image_size: int = 32,
        capacity: int = 8,
    ) -> None:
        self.step_delay_s = step_delay_s
        self._models = list(models)
        self._samplers = list(samplers)
        self.preview_every = preview_every
        self.image_size = image_size
        self.capacity = capacity  # images per call when the worker asks (engine.max_batch = 0)
        self.calls: list[list[int]] = []  # seeds of each engine call (batches show as one call)
        self.steps_run: list[int] = []  # sampler steps each engine call ran before it ended
        self._lock = threading.Lock()
        self.closed = False

    # ------------------------------------------------------------------ Engine protocol

    def model_names(self) -> list[str]:
        return list(self._models)

    def sampler_names(self) -> list[str]:
        return list(self._samplers)

    def close(self) -> None:
        self.closed = True

    def batch_capacity(self, request: GenerationRequest) -> int:
        return self.capacity

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        result = self.generate_batch(
            [request],
            on_progress=(lambda _i, p: on_progress(p)) if on_progress else None,
            should_cancel=(lambda _i: should_cancel()) if should_cancel else None,
        )[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_progress: Callable[[int, Progress], None] | None = None,
        should_cancel: Callable[[int], bool] | None = None,
    ) -> list[GenerationResult | BaseException]:
        out: list[GenerationResult | BaseException | None] = [None] * len(requests)
        live: list[int] = []
        for i, request in enumerate(requests):
            try:
                self._check(request)
                if "CRASH" in request.prompt:
                    os._exit(137)
            except GenerationError as exc:
                out[i] = exc
            else:
                live.append(i)
        seeds = {i: self._seed(requests[i].seed) for i in live}
        with self._lock:
            self.calls.append([seeds[i] for i in live])
        total = max((requests[i].steps for i in live), default=0)
        done_steps = 0
        for step in range(1, total + 1):
            for i in list(live):
                if should_cancel is not None and should_cancel(i):
                    out[i] = GenerationCancelled(f"cancelled at step {step - 1}")
                    live.remove(i)
            if not live:
                break
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            done_steps = step
            for i in live:
                if on_progress is not None and step <= requests[i].steps:
                    preview = None
                    if self.preview_every and step % self.preview_every == 0:
                        preview = self._png(seeds[i] + step, "")
                    on_progress(i, Progress(step, requests[i].steps, preview))
        with self._lock:
            self.steps_run.append(done_steps)
        for i in live:
            out[i] = self._result(requests[i], seeds[i])
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ internals

    def _check(self, request: GenerationRequest) -> None:
        if request.sampler not in self._samplers:
            raise GenerationError(
                f"unknown sampler {request.sampler!r}; choose one of: {', '.join(self._samplers)}"
            )
        if request.model is not None and request.model not in self._models:
            raise GenerationError(
                f"unknown model {request.model!r}; choose one of: {', '.join(self._models)}"
            )
        if "OOM" in request.prompt:
            raise OutOfMemory("the GPU ran out of memory: try a smaller size or fewer images")
        if "FAIL" in request.prompt:
            raise GenerationError("the fake engine was asked to fail")

    @staticmethod
    def _seed(seed: int) -> int:
        return random.randrange(RANDOM_SEED_BOUND) if seed == RANDOM_SEED else seed

    def _result(self, request: GenerationRequest, seed: int) -> GenerationResult:
        model = request.model or self._models[0]
        model_hash = hashlib.sha256(model.encode()).hexdigest()[:10]
        images = []
        for k in range(request.count):
            subseed = request.subseed if request.subseed != -1 else seed + k + 1
            info = fake_infotext(request, seed + k, subseed, model, model_hash)
            images.append(GeneratedImage(self._png(seed + k, info), seed + k, subseed, info))
        # A preprocessed map per unit that runs a preprocessor (as the real engine returns them).
        maps = tuple(self._png(seed + 1000 + n, "") for n, c in enumerate(request.controls) if c.module != "none")
        return GenerationResult(
            tuple(images), model, model_hash, {"total": request.steps * self.step_delay_s}, control_maps=maps
        )

    def _png(self, seed: int, infotext: str) -> bytes:
        rng = random.Random(seed)
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        image = Image.new("RGB", (self.image_size, self.image_size), color)
        meta = PngImagePlugin.PngInfo()
        if infotext:
            meta.add_text("parameters", infotext)
        buf = io.BytesIO()
        image.save(buf, format="PNG", pnginfo=meta)
        return buf.getvalue()
