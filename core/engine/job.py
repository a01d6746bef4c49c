"""What one run of the pipeline carries: per job, its request, encoded plan, start and rows; per run, timings.

A run is 1..N compatible jobs in one denoising loop (``core.engine.pipeline``); a single job is a run of
one. These are plain data: the steps that fill them live in their own modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from core.engine import models
from core.engine.conditioning import Cond, ScheduledPart
from core.types import GenerationRequest, GenerationResult

Outcome = GenerationResult | BaseException


@dataclass
class RunStats:
    """Per-stage timings of the last run (seconds), read by ``chant bench engine``."""

    encode: float = 0.0
    steps: list[float] = field(default_factory=list)
    decode: float = 0.0
    png: float = 0.0
    total: float = 0.0
    load: float = 0.0
    after: float = 0.0  # face restoration and the detailer, after decoding


@dataclass
class Plan:
    """Everything the loop needs for one request, resolved and encoded."""

    request: GenerationRequest
    model: models.LoadedModel
    seeds: list[int]
    subseeds: list[int]
    positive: list[ScheduledPart]  # the AND parts, each with its weight
    negative: ScheduledPart
    sampler: Any  # core.engine.samplers.SamplerSpec: the sampler and A1111's schedule label
    schedule_steps: int
    interpretation: Any  # the positive prompt's core.prompt interpretation
    rng_source: str
    ensd: int
    empty: Cond | None = None  # the empty prompt's encoding, when pad_cond_uncond is on
    image_cond: torch.Tensor | None = None  # inpainting UNets: [mask, masked-image latents] per image
    hashes: dict = field(default_factory=dict)  # infotext "Lora hashes" / "TI hashes" (A1111 1.10)
    after: dict = field(default_factory=dict)  # infotext of face restoration and the detailer (after decoding)
    guide_params: dict = field(default_factory=dict)  # infotext "ControlNet N" (sd-webui-controlnet)


@dataclass
class Start:
    """img2img / inpaint / hires second pass: where the loop starts instead of pure noise."""

    latents: torch.Tensor  # the clean source latents, one row per image
    strength: float  # denoising strength: how far down the schedule the loop starts
    steps: int | None = None  # hires: run exactly this many steps (A1111 passes ``steps`` to sample_img2img)
    mask: torch.Tensor | None = None  # inpaint: 1 where the image is repainted, (1, 1, h, w) at latent size
    fill: int = 1  # inpainting_fill: 2 latent noise, 3 latent nothing in the masked area


@dataclass
class Job:
    """One request in a run. ``index`` is its position in the caller's list (outcomes are keyed by it)."""

    index: int
    request: GenerationRequest
    init: Any = None  # image_modes.PreparedInit: img2img / inpaint source (its overlay is applied at the end)
    interpretations: Any = None  # (positive, negative) core.prompt interpretations
    plan: Plan | None = None
    start: Start | None = None  # where this job's loop starts (None: from noise)
    latents: torch.Tensor | None = None  # final latents once the loop is done
    # The loop's state for this job's rows:
    image_rng: Any = None  # rng.ImageRNG
    init_latents: torch.Tensor | None = None  # inpaint: the source latents (masked content applied) it keeps
    nmask: torch.Tensor | None = None  # inpaint: 1 where the image is repainted (A1111's nmask), (1, 1, h, w)
    guide: Any = None  # core.engine.guide.JobGuide: ControlNet units and reference images

    @property
    def count(self) -> int:
        return self.request.count
