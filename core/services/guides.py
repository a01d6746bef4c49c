"""Options ⇄ request for guiding images (issue 16): a ControlNet unit from an attachment and a reference
image (IP-Adapter), the guild's switch for them, and what must be there before a job is stored.

Pure, like :mod:`core.services.requests` (the attachments are checked by :mod:`core.services.images`
in the ImageWork pool, like img2img sources). ``control_type`` is one choice a user makes: which
preprocessor runs on the attachment and which ControlNet fits it ("canny"), or that the attachment
already is such a map ("canny map": module "none"). Guidance start/end have no command option: a
preset holds them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from core import ranges
from core.config import EngineSettings
from core.services.images import SourceImage
from core.services.types import ImagineOptions, UserError
from core.storage.models import Guild
from core.types import ControlInput, GenerationRequest, ReferenceInput

# choice -> (preprocessor, sd-webui-controlnet's control type)
CONTROL_TYPES: dict[str, tuple[str, str]] = {
    "canny": ("canny", "Canny"),
    "depth": ("depth_anything_v2", "Depth"),
    "openpose": ("dw_openpose_full", "OpenPose"),
    "lineart": ("lineart_standard", "Lineart"),
    "scribble": ("scribble_xdog", "Scribble"),
    "tile": ("tile_resample", "Tile"),
    "canny map": ("none", "Canny"),
    "depth map": ("none", "Depth"),
    "openpose map": ("none", "OpenPose"),
    "lineart map": ("none", "Lineart"),
    "scribble map": ("none", "Scribble"),
}
DEFAULT_CONTROL_TYPE = "canny"
# What a preset may hold of these (the images never).
PRESET_OPTIONS = ("control_type", "control_weight", "control_start", "control_end", "reference_scale")
CONTROL_OPTIONS = ("control_type", "control_weight", "control_start", "control_end")
OFF_HERE = "Control and reference images are turned off on this server."


def wanted(o: ImagineOptions) -> bool:
    return o.control_image is not None or o.reference_image is not None


def check_given(o: ImagineOptions) -> None:
    """The user's own options (before a preset's): control options need a control image, a reference
    scale a reference image."""
    if o.control_image is None:
        given = [name for name in ("control_type", "control_weight") if getattr(o, name) is not None]
        if given:
            raise UserError("invalid", f"{', '.join(given)} only apply with a control image (control_image).")
    if o.reference_image is None and o.reference_scale is not None:
        raise UserError("invalid", "reference_scale only applies with a reference image (reference_image).")


def check_options(o: ImagineOptions) -> None:
    """What can be refused before the attachments are worked on (values only)."""
    if o.control_type is not None and o.control_type not in CONTROL_TYPES:
        raise UserError(
            "invalid", f"control_type must be one of {', '.join(CONTROL_TYPES)}, not {o.control_type!r}."
        )
    _check_range("control_weight", o.control_weight, ranges.MIN_CONTROL_WEIGHT, ranges.MAX_CONTROL_WEIGHT)
    _check_range("control_start", o.control_start, ranges.MIN_GUIDANCE, ranges.MAX_GUIDANCE)
    _check_range("control_end", o.control_end, ranges.MIN_GUIDANCE, ranges.MAX_GUIDANCE)
    start = ranges.MIN_GUIDANCE if o.control_start is None else o.control_start
    end = ranges.MAX_GUIDANCE if o.control_end is None else o.control_end
    if start > end:
        raise UserError("invalid", f"control_start ({start:g}) must not be after control_end ({end:g}).")
    _check_range("reference_scale", o.reference_scale, ranges.MIN_REFERENCE_SCALE, ranges.MAX_REFERENCE_SCALE)


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and (not math.isfinite(value) or not low <= value <= high):
        raise UserError("invalid", f"{name} must be between {low:g} and {high:g}, not {value:g}.")


def check_allowed(guild: Guild | None) -> None:
    """Refused where an admin turned control and reference images off (DMs: allowed)."""
    if guild is not None and not guild.allow_guides:
        raise UserError("guides.off", OFF_HERE)


def check_available(settings: EngineSettings, request: GenerationRequest) -> None:
    """The ControlNet, preprocessor model and IP-Adapter the request needs are in the configured folders
    (names only; refused before anything is stored or charged)."""
    from core.engine.control.requirements import check_guides

    try:
        check_guides(settings, request.controls, request.references)
    except ValueError as exc:
        raise UserError(
            "guides.missing", f"I cannot guide with that image: {exc}. Ask the bot's operator."
        ) from None


def changes(o: ImagineOptions, control: SourceImage | None, reference: SourceImage | None) -> dict[str, Any]:
    """The request's ``controls`` and ``references`` from merged options and the checked attachments."""
    out: dict[str, Any] = {}
    if control is not None:
        module, control_type = CONTROL_TYPES[o.control_type or DEFAULT_CONTROL_TYPE]
        unit = ControlInput(image=control.data, module=module, control_type=control_type)
        values = {
            "weight": o.control_weight,
            "guidance_start": o.control_start,
            "guidance_end": o.control_end,
        }
        out["controls"] = (dataclasses.replace(unit, **{k: v for k, v in values.items() if v is not None}),)
    if reference is not None:
        scale = ReferenceInput.scale if o.reference_scale is None else o.reference_scale
        out["references"] = (ReferenceInput(image=reference.data, scale=scale),)
    return out


def preset_of(r: GenerationRequest) -> dict[str, Any]:
    """A stored request's guide settings as preset options (the images stay out)."""
    params: dict[str, Any] = {}
    if r.controls:
        unit = r.controls[0]
        choice = next((k for k, v in CONTROL_TYPES.items() if v == (unit.module, unit.control_type)), None)
        params.update(control_type=choice, control_weight=unit.weight, control_start=unit.guidance_start,
                      control_end=unit.guidance_end)  # fmt: skip
    if r.references:
        params["reference_scale"] = r.references[0].scale
    return {k: v for k, v in params.items() if v is not None}
