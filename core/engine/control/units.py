"""A ControlNet unit and its schedule, as sd-webui-controlnet defines them (torch-free).

A unit is one control image guiding one ControlNet: preprocessor ("module"), model, weight, resize
mode, preprocessor resolution and thresholds, guidance start/end and control mode. The numbers that
decide *how much* a unit adds at a given UNet call live here, so the denoising loop, the batcher
and the tests share one definition:

- **Guidance start/end** are fractions of the sampling steps. sd-webui-controlnet decides per UNet
  call from A1111's ``state.sampling_step / state.sampling_steps``: the unit is stopped when that
  fraction is below start or above end (both ends inclusive). A1111's k-diffusion callback sets
  ``sampling_step`` to ``i`` *after* step ``i``, so the model calls of step ``i`` still see ``i - 1``
  (step 0 sees 0): :func:`a1111_sampling_step`.
- **Control mode**: "Balanced" scales every residual by the weight; "My prompt is more important"
  (soft injection) scales residual ``i`` of 13 by ``weight * 0.825 ** (12 - i)`` (SDXL keeps the
  first 10 of those 13 factors); "ControlNet is more important" is soft injection on the
  conditional rows only — the unconditional (negative prompt) rows get no residual, so CFG pushes
  toward the control.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.ranges import (
    DEFAULT_PROCESSOR_RES,
    MAX_CONTROL_WEIGHT,
    MAX_GUIDANCE,
    MAX_PROCESSOR_RES,
    MIN_CONTROL_WEIGHT,
    MIN_GUIDANCE,
    MIN_PROCESSOR_RES,
)

BALANCED = "Balanced"
PROMPT_MORE_IMPORTANT = "My prompt is more important"
CONTROL_MORE_IMPORTANT = "ControlNet is more important"
CONTROL_MODES = (BALANCED, PROMPT_MORE_IMPORTANT, CONTROL_MORE_IMPORTANT)

JUST_RESIZE = "Just Resize"
CROP_AND_RESIZE = "Crop and Resize"
RESIZE_AND_FILL = "Resize and Fill"
RESIZE_MODES = (JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL)
# Older sd-webui-controlnet names, still found in infotexts and API calls.
RESIZE_MODE_ALIASES = {
    "Inner Fit (Scale to Fit)": CROP_AND_RESIZE,
    "Outer Fit (Shrink to Fit)": RESIZE_AND_FILL,
    "Scale to Fit (Inner Fit)": CROP_AND_RESIZE,
    "Envelope (Outer Fit)": RESIZE_AND_FILL,
}

# xinsir's ControlNet++ ("union") control types, in the order of their task embeddings.
UNION_CONTROL_TYPES = (
    "OpenPose",
    "Depth",
    "Soft Edge",
    "Hard Edge",
    "Normal Map",
    "Segmentation",
    "Tile",
    "Inpaint",
)

SOFT_INJECTION_BASE = 0.825
SOFT_INJECTION_SCALES = 13  # sd-webui-controlnet's table: 12 encoder blocks + the middle block


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit of a job. ``model`` is a name inside the configured ControlNet folders.

    ``threshold_a``/``threshold_b``/``processor_res`` None = the preprocessor's default.
    ``union_control_type`` picks the task of a union (ControlNet++) model; None = from the module.
    """

    model: str
    module: str = "none"
    weight: float = 1.0
    resize_mode: str = CROP_AND_RESIZE
    processor_res: int | None = None
    threshold_a: float | None = None
    threshold_b: float | None = None
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = BALANCED
    union_control_type: str | None = None

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad value."""
        if not self.model:
            raise ValueError("a ControlNet unit needs a model")
        if not math.isfinite(self.weight) or not MIN_CONTROL_WEIGHT <= self.weight <= MAX_CONTROL_WEIGHT:
            raise ValueError(
                f"control weight must be between {MIN_CONTROL_WEIGHT:g} and {MAX_CONTROL_WEIGHT:g}, not {self.weight}"
            )
        for name, value in (("guidance start", self.guidance_start), ("guidance end", self.guidance_end)):
            if not math.isfinite(value) or not MIN_GUIDANCE <= value <= MAX_GUIDANCE:
                raise ValueError(f"{name} must be between {MIN_GUIDANCE:g} and {MAX_GUIDANCE:g}, not {value}")
        if self.guidance_start > self.guidance_end:
            raise ValueError(
                f"guidance start ({self.guidance_start}) must not be after guidance end ({self.guidance_end})"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {self.resize_mode!r}")
        if self.control_mode not in CONTROL_MODES:
            raise ValueError(f"control mode must be one of {', '.join(CONTROL_MODES)}, not {self.control_mode!r}")
        res = self.processor_res
        if res is not None and not MIN_PROCESSOR_RES <= res <= MAX_PROCESSOR_RES:
            raise ValueError(
                f"processor resolution must be between {MIN_PROCESSOR_RES} and {MAX_PROCESSOR_RES}, not {res}"
            )
        if self.union_control_type is not None and self.union_control_type not in UNION_CONTROL_TYPES:
            raise ValueError(
                f"union control type must be one of {', '.join(UNION_CONTROL_TYPES)}, "
                f"not {self.union_control_type!r}"
            )

    @property
    def resolution(self) -> int:
        return DEFAULT_PROCESSOR_RES if self.processor_res is None else self.processor_res


def normalize_resize_mode(name: str) -> str:
    """A resize mode by its current or older sd-webui-controlnet name; ``ValueError`` otherwise."""
    name = RESIZE_MODE_ALIASES.get(name, name)
    if name not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, not {name!r}")
    return name


def union_control_index(name: str) -> int:
    if name not in UNION_CONTROL_TYPES:
        raise ValueError(f"union control type must be one of {', '.join(UNION_CONTROL_TYPES)}, not {name!r}")
    return UNION_CONTROL_TYPES.index(name)


# --- the schedule ------------------------------------------------------------------------------


def a1111_sampling_step(step_index: int) -> int:
    """A1111's ``state.sampling_step`` during the model calls of k-diffusion step ``step_index``."""
    return max(step_index - 1, 0)


def guidance_active(start: float, end: float, sampling_step: int, sampling_steps: int) -> bool:
    """sd-webui-controlnet's rule: stopped while ``step / steps`` is below start or above end.

    ``sampling_steps`` is A1111's ``state.sampling_steps``: the job's steps for txt2img (and for a
    hires pass, its own steps), ``t_enc + 1`` for img2img (the steps actually run, plus one).
    """
    percent = sampling_step / sampling_steps
    return not (percent < start or percent > end)


def control_scales(weight: float, control_mode: str, n_residuals: int) -> tuple[float, ...]:
    """The factor of each of ``n_residuals`` ControlNet outputs (encoder blocks, then the middle one).

    Balanced: the weight everywhere. Soft injection (both other modes): sd-webui-controlnet's table of
    13 factors ``weight * 0.825 ** (12 - i)``, of which a model with fewer outputs takes the first
    ``n_residuals`` (SDXL: 10, so its middle block gets ``0.825 ** 3``, exactly as there).
    """
    if control_mode not in CONTROL_MODES:
        raise ValueError(f"control mode must be one of {', '.join(CONTROL_MODES)}, not {control_mode!r}")
    if control_mode == BALANCED:
        return (float(weight),) * n_residuals
    if n_residuals > SOFT_INJECTION_SCALES:
        raise ValueError(f"soft injection has {SOFT_INJECTION_SCALES} factors, the model has {n_residuals} outputs")
    table = [weight * (SOFT_INJECTION_BASE ** float(12 - i)) for i in range(SOFT_INJECTION_SCALES)]
    return tuple(table[:n_residuals])


def row_scales(
    unit: ControlUnit,
    n_residuals: int,
    *,
    sampling_step: int,
    sampling_steps: int,
    conditional: bool,
    global_pool: bool = False,
    hires_pass: bool = False,
) -> tuple[float, ...] | None:
    """What ``unit`` adds to one row of one UNet call: per-output factors, or None for nothing.

    ``conditional`` is whether the row carries a prompt (an ``AND`` part) rather than the negative
    prompt. None when the unit is outside its guidance window, or on an unconditional row under
    "ControlNet is more important" or for a global-pooling model (shuffle), as sd-webui-controlnet.
    In a hires-fix pass, canny and mlsd units always use soft injection there ("to reduce artifacts").
    """
    if not guidance_active(unit.guidance_start, unit.guidance_end, sampling_step, sampling_steps):
        return None
    if (unit.control_mode == CONTROL_MORE_IMPORTANT or global_pool) and not conditional:
        return None
    mode = unit.control_mode
    if hires_pass and mode == BALANCED and ("canny" in unit.module or "mlsd" in unit.module):
        mode = PROMPT_MORE_IMPORTANT
    return control_scales(unit.weight, mode, n_residuals)


def pixel_perfect_resolution(
    image_height: int, image_width: int, target_height: int, target_width: int, resize_mode: str
) -> int:
    """sd-webui-controlnet's "Pixel Perfect": the preprocessor resolution that maps the image's short
    side onto the size it will have in the target (fit inside for "Resize and Fill", cover otherwise)."""
    k_h = float(target_height) / float(image_height)
    k_w = float(target_width) / float(image_width)
    k = min(k_h, k_w) if resize_mode == RESIZE_AND_FILL else max(k_h, k_w)
    return round(k * float(min(image_height, image_width)))
