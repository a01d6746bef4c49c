"""The detailer (ADetailer's idea, our code): find faces, repaint each one "only masked", paste back.

For each pass ("tab" in ADetailer: a detector and its settings) the detector's boxes above the
confidence threshold — the ``max_detections`` best, or all — become rectangle masks, grown (or shrunk)
by ``dilate_erode`` pixels. Each mask, left to right, goes to an **inpaint callable** with the pass's
prompt, negative prompt, denoising strength, steps and working size: the engine's inpaint "only masked"
(A1111's ``inpaint_full_res``), injected by whoever runs the detailer. The next region starts from the
previous result. Whatever the callable returns, only pixels inside the mask (grown by the mask blur the
engine feathers it with) are taken from it: everything else stays the original pixel for pixel.

:func:`infotext_params` writes ADetailer's infotext keys (``ADetailer model``, ``ADetailer confidence``,
…, with `` 2nd``/`` 3rd`` suffixes for further passes) so A1111 users read the settings as usual;
:func:`options_from_infotext` reads them back. The ADetailer extension is AGPL: only its key names and
documented behaviour are used here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from core import ranges
from core.engine.image_modes import blur_mask
from core.engine.postprocess.detect import Detection, Detector


@dataclass(frozen=True)
class DetailerOptions:
    """One detailer pass; defaults are ADetailer's."""

    model: str  # detector name (file stem in postprocess.detector_dirs)
    confidence: float = 0.3
    max_detections: int = 0  # keep the N highest-scoring regions; 0 = all (ADetailer "top k largest" is by area)
    dilate_erode: int = 4  # pixels the mask grows (negative: shrinks) on each side, about ADetailer's k×k kernel / 2
    mask_blur: int = 4
    denoising_strength: float = 0.4
    inpaint_only_masked: bool = True
    inpaint_padding: int = 32
    prompt: str = ""  # "" = the job's prompt
    negative_prompt: str = ""  # "" = the job's negative prompt
    inpaint_width: int = 0  # working size of the repainted region; 0 = the job's size
    inpaint_height: int = 0
    steps: int = 0  # 0 = the job's steps
    cfg_scale: float | None = None  # None = the job's CFG scale

    def check(self) -> None:
        """A ``ValueError`` naming the first value outside its range (``core/ranges.py``)."""
        if not ranges.MIN_CONFIDENCE <= self.confidence <= ranges.MAX_CONFIDENCE:
            raise ValueError(f"detailer confidence must be between 0 and 1, not {self.confidence}")
        if not 0 <= self.max_detections <= ranges.MAX_DETECTIONS:
            raise ValueError(f"detailer max detections must be 0 to {ranges.MAX_DETECTIONS}, not {self.max_detections}")
        if abs(self.dilate_erode) > ranges.MAX_DILATE_ERODE:
            raise ValueError(f"detailer dilate/erode must be within ±{ranges.MAX_DILATE_ERODE}, not {self.dilate_erode}")
        if not ranges.MIN_MASK_BLUR <= self.mask_blur <= ranges.MAX_MASK_BLUR:
            raise ValueError(f"detailer mask blur must be {ranges.MIN_MASK_BLUR} to {ranges.MAX_MASK_BLUR}, not {self.mask_blur}")
        if not ranges.MIN_STRENGTH <= self.denoising_strength <= ranges.MAX_STRENGTH:
            raise ValueError(f"detailer denoising strength must be between 0 and 1, not {self.denoising_strength}")
        if not ranges.MIN_PADDING <= self.inpaint_padding <= ranges.MAX_PADDING:
            raise ValueError(f"detailer inpaint padding must be {ranges.MIN_PADDING} to {ranges.MAX_PADDING}, not {self.inpaint_padding}")
        if self.steps and not ranges.MIN_STEPS <= self.steps <= ranges.MAX_STEPS:
            raise ValueError(f"detailer steps must be 0 (the job's) or {ranges.MIN_STEPS} to {ranges.MAX_STEPS}, not {self.steps}")
        for side in (self.inpaint_width, self.inpaint_height):
            if side and not (ranges.MIN_SIDE <= side <= ranges.MAX_SIDE and side % ranges.SIDE_MULTIPLE == 0):
                raise ValueError(f"detailer inpaint size must be 0 (the job's) or a multiple of 8 from 64 to 4096, not {side}")


@dataclass(frozen=True)
class InpaintOptions:
    """What one region's inpaint needs beyond the image and the mask (fields as GenerationRequest's)."""

    prompt: str  # "" = the job's
    negative_prompt: str
    denoising_strength: float
    steps: int  # 0 = the job's
    cfg_scale: float | None
    width: int  # 0 = the job's
    height: int
    mask_blur: int
    inpaint_full_res: bool
    inpaint_full_res_padding: int
    region_index: int  # 0-based, over all passes, in the order the regions are repainted


InpaintCall = Callable[[Image.Image, Image.Image, InpaintOptions], Image.Image]


@dataclass(frozen=True)
class DetailResult:
    image: Image.Image
    regions: tuple[tuple[Detection, ...], ...]  # per pass, in the order they were repainted
    params: dict[str, Any] = field(default_factory=dict)  # infotext entries (ADetailer's keys)


def select(detections: Sequence[Detection], options: DetailerOptions) -> list[Detection]:
    """The regions a pass repaints: above the threshold, the best ``max_detections``, left to right."""
    kept = sorted((d for d in detections if d.score >= options.confidence), key=lambda d: -d.score)
    if options.max_detections > 0:
        kept = kept[: options.max_detections]
    return sorted(kept, key=lambda d: (d.box[0], d.box[1]))


def region_mask(size: tuple[int, int], detection: Detection, dilate_erode: int) -> Image.Image:
    """A white rectangle (mode L) over the box grown by ``dilate_erode`` pixels per side, clipped."""
    width, height = size
    x0, y0, x1, y1 = detection.box
    x0, y0 = max(0, round(x0) - dilate_erode), max(0, round(y0) - dilate_erode)
    x1, y1 = min(width, round(x1) + dilate_erode), min(height, round(y1) + dilate_erode)
    mask = Image.new("L", size, 0)
    if x1 > x0 and y1 > y0:
        ImageDraw.Draw(mask).rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    return mask


def paste_inside(original: Image.Image, repainted: Image.Image, mask: Image.Image, mask_blur: int) -> Image.Image:
    """``repainted`` where the mask (feathered by ``mask_blur``) is non-zero, ``original`` elsewhere."""
    if repainted.size != original.size:
        raise ValueError(f"the inpaint returned a {repainted.size} image for a {original.size} source")
    support = blur_mask(mask, mask_blur, mask_blur) if mask_blur > 0 else mask
    inside = np.asarray(support) > 0
    out = np.where(inside[..., None], np.asarray(repainted.convert("RGB")), np.asarray(original.convert("RGB")))
    return Image.fromarray(out.astype(np.uint8), "RGB")


def detail(
    image: Image.Image,
    passes: Sequence[DetailerOptions],
    detector_for: Callable[[str], Detector],
    inpaint: InpaintCall,
) -> DetailResult:
    """Run every pass over ``image``; ``detector_for(name)`` gives a detector (e.g. ``Detectors.get``)."""
    if len(passes) > ranges.MAX_DETAILER_PASSES:
        raise ValueError(f"at most {ranges.MAX_DETAILER_PASSES} detailer passes, not {len(passes)}")
    for options in passes:
        options.check()
    image = image.convert("RGB")
    regions: list[tuple[Detection, ...]] = []
    index = 0
    for options in passes:
        found = select(detector_for(options.model).detect(image, options.confidence), options)
        for detection in found:
            mask = region_mask(image.size, detection, options.dilate_erode)
            if mask.getbbox() is None:
                continue
            repainted = inpaint(image, mask, _inpaint_options(options, index))
            image = paste_inside(image, repainted, mask, options.mask_blur)
            index += 1
        regions.append(tuple(found))
    return DetailResult(image=image, regions=tuple(regions), params=infotext_params(passes))


def _inpaint_options(options: DetailerOptions, index: int) -> InpaintOptions:
    return InpaintOptions(
        prompt=options.prompt,
        negative_prompt=options.negative_prompt,
        denoising_strength=options.denoising_strength,
        steps=options.steps,
        cfg_scale=options.cfg_scale,
        width=options.inpaint_width,
        height=options.inpaint_height,
        mask_blur=options.mask_blur,
        inpaint_full_res=options.inpaint_only_masked,
        inpaint_full_res_padding=options.inpaint_padding,
        region_index=index,
    )


# -- infotext ---------------------------------------------------------------------------------------

_ORDINALS = ("", " 2nd", " 3rd", " 4th", " 5th", " 6th")


def infotext_params(passes: Sequence[DetailerOptions]) -> dict[str, Any]:
    """ADetailer's infotext entries for ``passes`` (optional ones only when they differ from the job)."""
    params: dict[str, Any] = {}
    for options, suffix in zip(passes, _ORDINALS, strict=False):
        params[f"ADetailer model{suffix}"] = options.model
        if options.prompt:
            params[f"ADetailer prompt{suffix}"] = options.prompt
        if options.negative_prompt:
            params[f"ADetailer negative prompt{suffix}"] = options.negative_prompt
        params[f"ADetailer confidence{suffix}"] = options.confidence
        if options.max_detections:
            params[f"ADetailer mask only top k largest{suffix}"] = options.max_detections
        params[f"ADetailer dilate erode{suffix}"] = options.dilate_erode
        params[f"ADetailer mask blur{suffix}"] = options.mask_blur
        params[f"ADetailer denoising strength{suffix}"] = options.denoising_strength
        params[f"ADetailer inpaint only masked{suffix}"] = options.inpaint_only_masked
        params[f"ADetailer inpaint padding{suffix}"] = options.inpaint_padding
        if options.inpaint_width or options.inpaint_height:
            params[f"ADetailer use inpaint width height{suffix}"] = True
            params[f"ADetailer inpaint width{suffix}"] = options.inpaint_width
            params[f"ADetailer inpaint height{suffix}"] = options.inpaint_height
        if options.steps:
            params[f"ADetailer use separate steps{suffix}"] = True
            params[f"ADetailer steps{suffix}"] = options.steps
        if options.cfg_scale is not None:
            params[f"ADetailer use separate CFG scale{suffix}"] = True
            params[f"ADetailer CFG scale{suffix}"] = options.cfg_scale
    return params


_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "prompt": ("prompt", str),
    "negative prompt": ("negative_prompt", str),
    "confidence": ("confidence", float),
    "mask only top k largest": ("max_detections", int),
    "dilate erode": ("dilate_erode", int),
    "dilate/erode": ("dilate_erode", int),  # older ADetailer versions
    "mask blur": ("mask_blur", int),
    "denoising strength": ("denoising_strength", float),
    "inpaint only masked": ("inpaint_only_masked", lambda v: str(v).lower() == "true"),
    "inpaint padding": ("inpaint_padding", int),
    "inpaint width": ("inpaint_width", int),
    "inpaint height": ("inpaint_height", int),
    "steps": ("steps", int),
    "CFG scale": ("cfg_scale", float),
}


def options_from_infotext(params: Mapping[str, Any]) -> list[DetailerOptions]:
    """The detailer passes an infotext (parsed ``key: value`` pairs) describes; unknown keys are ignored."""
    passes = []
    for suffix in _ORDINALS:
        model = params.get(f"ADetailer model{suffix}")
        if not model or model == "None":
            continue
        options = DetailerOptions(model=str(model))
        for key, (name, convert) in _FIELDS.items():
            value = params.get(f"ADetailer {key}{suffix}")
            if value is not None:
                options = replace(options, **{name: convert(str(value))})
        passes.append(options)
    return passes
