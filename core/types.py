"""Torch-free value types shared by the engine, the queue, storage and the bot.

These are the contract between the parts of chant: the bot builds a :class:`GenerationRequest`
(through ``core`` services), the queue stores and batches it, the engine turns it into a
:class:`GenerationResult`, and progress flows back as :class:`Progress` events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Mode(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    UPSCALE = "upscale"  # init_image to width × height by ``upscaler``, then optionally SD upscale's detail pass


@dataclass(frozen=True)
class ControlInput:
    """One ControlNet unit of a job, with sd-webui-controlnet's fields, and its image (the attachment).

    ``module`` is the preprocessor ("none": the image is a ready control map); ``model`` a ControlNet
    name in the configured folders, "" = the first one there that fits ``control_type`` (or the
    module's type) and the job's model family. ``resize_mode`` and ``control_mode`` take
    sd-webui-controlnet's names; None thresholds / resolution = the preprocessor's defaults.
    Checked by ``core.engine.control.units.ControlUnit.check``.
    """

    image: bytes | None = None
    module: str = "none"
    model: str = ""
    weight: float = 1.0
    resize_mode: str = "Crop and Resize"
    processor_res: int | None = None
    threshold_a: float | None = None
    threshold_b: float | None = None
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    control_type: str | None = None  # sd-webui-controlnet's "Control Type" (Canny, Depth, …) for "" models


@dataclass(frozen=True)
class ReferenceInput:
    """A reference image (IP-Adapter) of a job: ``model`` an IP-Adapter name, "" = the first that fits
    the job's model family; ``style``: only the style layers (sd-webui-controlnet's "style transfer")."""

    image: bytes | None = None
    model: str = ""
    scale: float = 1.0
    style: bool = False


def _guides_from_json(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, cls in (("controls", ControlInput), ("references", ReferenceInput)):
        if name in data:
            known = {f.name for f in dataclasses.fields(cls)}
            out[name] = tuple(
                item if isinstance(item, cls) else cls(**{k: v for k, v in item.items() if k in known})
                for item in data[name]
            )
    return out


@dataclass(frozen=True)
class GenerationRequest:
    """Everything the engine needs for one job (``count`` images, seeds ``seed .. seed+count-1``)."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    cfg_rescale: float = 0.0  # CFG rescale φ (Forge/ComfyUI's RescaleCFG; v-prediction models); 0 = off
    sampler: str = "Euler a"  # an A1111 sampler name, e.g. "DPM++ 2M"
    schedule_type: str = "Automatic"  # A1111 "Schedule type": Automatic, Karras, Exponential, ...
    seed: int = -1  # -1 = random; the engine reports the seed it used
    subseed: int = -1  # A1111 "Variation seed"
    subseed_strength: float = 0.0  # A1111 "Variation strength"
    width: int = 512
    height: int = 512
    count: int = 1  # images in this job (A1111 "batch size")
    model: str | None = None  # configured model name (or a path, from the operator's CLI only)
    vae: str | None = None
    clip_skip: int | None = None  # None = the model's configured default (A1111 numbering, 1 = last)
    rng: str | None = None  # gpu | cpu | nv; None = engine default
    eta: float | None = None
    eta_noise_seed_delta: int | None = None  # None = engine default (ENSD)
    mode: Mode = Mode.TXT2IMG
    init_image: bytes | None = None  # PNG bytes for img2img / inpaint
    mask_image: bytes | None = None
    denoising_strength: float = 0.75
    resize_mode: int = 0  # A1111: 0 just resize, 1 crop and resize, 2 resize and fill
    mask_blur: int = 4
    inpainting_fill: int = 1  # A1111: 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False  # "masked only"
    inpaint_full_res_padding: int = 32
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"  # Latent | Lanczos
    hr_second_pass_steps: int = 0
    hr_denoising_strength: float = 0.7
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # After decoding (issue 15), per job: A1111's "Restore faces" and ADetailer's idea. Not in the batch
    # key: they run on each job's images after the shared loop.
    face_restoration: str = ""  # "" = off; GFPGAN | CodeFormer (A1111's names) or a restorer's file stem
    detailer: str = ""  # "" = off; a detector's name (file stem in postprocess.detector_dirs)
    detailer_prompt: str = ""  # "" = the job's prompt
    detailer_strength: float = 0.4  # ADetailer's default denoising strength
    # Upscale jobs (mode "upscale"): the upscaler (a model's name, or Lanczos / Nearest) and the strength of
    # A1111's SD upscale detail pass over tiles of the result (0 = none: nothing random, no SD model).
    upscaler: str = ""
    upscale_detail: float = 0.0
    # ControlNet units and reference images (IP-Adapter); their images are stored apart, as sources.
    controls: tuple[ControlInput, ...] = ()
    references: tuple[ReferenceInput, ...] = ()

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (image bytes are left out; storage keeps them separately)."""
        data = dataclasses.asdict(self)
        data["mode"] = str(self.mode)
        data.pop("init_image")
        data.pop("mask_image")
        for name in ("controls", "references"):  # their images are stored apart (``guide_images``)
            data[name] = [{k: v for k, v in item.items() if k != "image"} for item in data[name]]
        return data

    @property
    def guide_images(self) -> tuple[bytes | None, ...]:
        """The control images, then the reference images, in order (how storage keeps them)."""
        return tuple(c.image for c in self.controls) + tuple(r.image for r in self.references)

    def with_guide_images(self, images: Sequence[bytes | None]) -> GenerationRequest:
        """This request with ``guide_images`` put back (as stored; missing ones stay None)."""
        images = list(images) + [None] * (len(self.controls) + len(self.references) - len(images))
        n = len(self.controls)
        return self.replace(
            controls=tuple(dataclasses.replace(c, image=images[i]) for i, c in enumerate(self.controls)),
            references=tuple(
                dataclasses.replace(r, image=images[n + i]) for i, r in enumerate(self.references)
            ),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], **images: Any) -> GenerationRequest:
        """From ``to_dict()``, with the stored ``init_image``/``mask_image`` and ``guide_images``."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "mode" in kwargs:
            kwargs["mode"] = Mode(kwargs["mode"])
        kwargs.update(_guides_from_json(kwargs))
        guide_images = images.pop("guide_images", ())
        kwargs.update(images)
        request = cls(**kwargs)
        return request.with_guide_images(guide_images) if guide_images else request

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys may share one denoising loop: what shapes the shared loop is equal.

        img2img / inpaint add the denoising strength (where the loop starts); hires fix adds the hires
        geometry and second pass (resize box, or the scale when there is none; upscaler; steps; strength).
        Per job, not in the key: prompts, CFG, seeds, variation seed, ENSD, count, and the source image,
        mask, mask blur, masked content, resize mode and masked-only options. Read from the prompt, so
        added by the queue (``core.queue.store.batch_key``) and the engine (``core.engine.grouping.batch_key``
        once the engine's one pipeline lands; ``core.engine.batch.batch_key`` before): the LoRA sets.
        """
        key: tuple[Any, ...] = (self.model, self.vae, self.width, self.height, self.sampler,
                                self.schedule_type, self.steps, self.mode, self.enable_hr, self.clip_skip,
                                self.rng, self.eta)
        if self.mode != Mode.TXT2IMG:
            key += (self.denoising_strength,)
        if self.enable_hr:
            resize = (self.hr_resize_x, self.hr_resize_y)
            size = resize if any(resize) else self.hr_scale  # a resize box overrides the scale
            key += (size, self.hr_upscaler, self.hr_second_pass_steps or self.steps,
                    self.hr_denoising_strength)
        if self.controls or self.references:  # the ControlNet and IP-Adapter models the loop runs
            key += (
                tuple(sorted({(c.model, c.model or c.control_type or c.module) for c in self.controls})),
                tuple(sorted({(r.model, r.style) for r in self.references})),
            )
        return key


@dataclass(frozen=True)
class Progress:
    step: int  # sampler steps done (1-based after the first step)
    total: int
    preview_png: bytes | None = None  # a cheap latent -> RGB approximation, every few steps


@dataclass(frozen=True)
class GeneratedImage:
    png: bytes  # PNG with A1111's "parameters" text chunk
    seed: int
    subseed: int
    infotext: str
    score: float | None = None  # the moderation classifier's score (0..1), set by the worker; None = not checked


@dataclass(frozen=True)
class GenerationResult:
    images: tuple[GeneratedImage, ...]
    model_name: str
    model_hash: str  # A1111 short hash: first 10 hex digits of the file's sha256
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    control_maps: tuple[bytes, ...] = ()  # PNGs of the preprocessed control maps (shown with the result)


class GenerationCancelled(Exception):
    """Raised by the engine when the job's cancel flag was set between steps."""


class GenerationError(Exception):
    """A job failed for a reason the user can act on; ``str(exc)`` is safe to show them."""


class OutOfMemory(GenerationError):
    """The device ran out of memory; memory was freed and the worker can go on."""
