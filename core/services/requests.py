"""Options ⇄ request: how the options of an /imagine (with a preset and the server's defaults) become a
:class:`~core.types.GenerationRequest`, and how a stored request becomes a preset again.

Pure (uploaded images are checked by :mod:`core.services.images`, Pillow only): the use case looks up
the preset and the source job, this module does the rest. Each option ⇄ field pair is written once,
in the tables below, and read both ways.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Any

from core import ranges
from core.config import PostprocessSettings
from core.engine.catalog import ModelDefaults
from core.services import guides
from core.services.images import Upload, fit_size
from core.services.policy import check_strength
from core.services.types import ImagineOptions, UserError
from core.types import GenerationRequest, Mode

# (option, request field), for the options that map one to one.
BASIC = (
    ("negative", "negative_prompt"),
    ("width", "width"),
    ("height", "height"),
    ("steps", "steps"),
    ("cfg", "cfg_scale"),
    ("cfg_rescale", "cfg_rescale"),
    ("sampler", "sampler"),
    ("count", "count"),
    ("model", "model"),
    ("clip_skip", "clip_skip"),
)
IMAGE = (  # img2img / inpaint
    ("strength", "denoising_strength"),
    ("resize_mode", "resize_mode"),
    ("mask_blur", "mask_blur"),
    ("masked_only", "inpaint_full_res"),
    ("fill", "inpainting_fill"),
)
HIRES = (  # hires fix ("hires" itself is enable_hr)
    ("hires_scale", "hr_scale"),
    ("hires_steps", "hr_second_pass_steps"),
    ("hires_strength", "hr_denoising_strength"),
    ("upscaler", "hr_upscaler"),
)
# chant's own defaults (A1111's), for what neither the user, their preset nor the model's table sets.
DEFAULTS = {"width": 512, "height": 512, "steps": 20, "cfg": 7.0, "sampler": "Euler a", "count": 1}
HIRES_OPTIONS = ("hires", *(option for option, _ in HIRES))
# What a preset keeps: strength applies when the preset is used with a source image (/img2img).
AFTER_DECODING = ("face_restore", "detailer")  # on/off; the server's models (issue 15)
PRESET_FIELDS = (
    "prompt", *(option for option, _ in BASIC), *HIRES_OPTIONS, "strength", *guides.PRESET_OPTIONS,
    *AFTER_DECODING,
)  # fmt: skip


def random_seed(rng: random.Random) -> int:
    """A seed drawn as A1111 draws one."""
    return rng.randrange(ranges.RANDOM_SEED_BOUND)


def seed_of(options: ImagineOptions, rng: random.Random) -> int:
    return (
        options.seed if options.seed is not None and options.seed != ranges.RANDOM_SEED else random_seed(rng)
    )


def merge(options: ImagineOptions, preset: Mapping[str, Any]) -> ImagineOptions:
    """The options, with what the user left out taken from the preset. The preset's prompt joins the
    user's (``{prompt}`` marks where, else it is appended); its hires fix applies to text-to-image, its
    strength to image-to-image."""
    if not preset:
        return options
    prompt = options.prompt
    fragment = preset.get("prompt") or ""
    if fragment:
        prompt = fragment.replace("{prompt}", prompt) if "{prompt}" in fragment else f"{prompt}, {fragment}"
    has_source = options.init_image is not None or options.source_job is not None
    names = [option for option, _ in BASIC] + (["strength"] if has_source else list(HIRES_OPTIONS))
    names += AFTER_DECODING
    names += guides.PRESET_OPTIONS  # guidance start/end have no command option: presets hold them
    taken = {n: preset[n] for n in names if getattr(options, n) is None and preset.get(n) is not None}
    return dataclasses.replace(options, prompt=prompt, **taken)


def check_sources(o: ImagineOptions) -> None:
    """What can be refused before a source job's image is looked up."""
    check_strength("strength", o.strength)
    check_strength("hires_strength", o.hires_strength)
    if o.source_job is not None and o.init_image is not None:
        raise UserError("invalid", "Give either an image or a job to start from, not both.")


def build(
    o: ImagineOptions,
    upload: Upload | None,
    *,
    size_given: bool,
    model: str | None,
    seed: int,
    max_pixels: int,
    defaults: ModelDefaults = ModelDefaults(),
) -> GenerationRequest:
    """The request for merged options ``o`` (the user's, then their preset's) on ``model``, and the
    checked source image (uploaded, or a job's first image; :func:`core.services.images.load_upload`).

    What ``o`` leaves out comes from the model's ``defaults``, then :data:`DEFAULTS`; the model's prompt
    prefix/suffix wrap the prompt. Without ``size_given`` (the user chose no size), an image-to-image
    job keeps its source's size, within ``max_pixels``."""
    try:
        request = GenerationRequest(
            prompt=defaults.wrap(o.prompt),
            negative_prompt=_given(o.negative, defaults.negative_prompt) or "",
            width=int(_given(o.width, defaults.width or DEFAULTS["width"])),
            height=int(_given(o.height, defaults.height or DEFAULTS["height"])),
            steps=int(_given(o.steps, defaults.steps or DEFAULTS["steps"])),
            cfg_scale=float(_given(o.cfg, _given(defaults.cfg_scale, DEFAULTS["cfg"]))),
            cfg_rescale=float(_given(o.cfg_rescale, _given(defaults.cfg_rescale, 0.0))),
            sampler=str(_given(o.sampler, defaults.sampler or DEFAULTS["sampler"])),
            schedule_type=defaults.schedule_type or GenerationRequest.schedule_type,
            seed=int(seed),
            count=int(_given(o.count, DEFAULTS["count"])),
            model=_given(o.model, model),
            clip_skip=_given(o.clip_skip, defaults.clip_skip),
        )
        changes = _image_changes(o, upload, size_given, max_pixels)
        changes.update(_hires_changes(o, upload is not None))
        return request.replace(**changes) if changes else request
    except (TypeError, ValueError) as exc:
        raise UserError("invalid", f"One of the options has the wrong type: {exc}.") from None


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _image_changes(
    o: ImagineOptions, upload: Upload | None, size_given: bool, max_pixels: int
) -> dict[str, Any]:
    """img2img / inpaint from the checked upload: its bytes, the mask, the mode and the options."""
    if upload is None:
        if o.mask_image is not None:
            raise UserError("invalid", "A mask needs a source image to repaint: attach one too.")
        given = [option for option, _ in IMAGE if getattr(o, option) is not None]
        if given:
            raise UserError("invalid", f"{', '.join(given)} only apply with a source image.")
        return {}
    image, mask = upload.source, upload.mask
    inpaint = mask is not None or image.transparent  # transparent pixels are repainted
    changes: dict[str, Any] = {
        "init_image": image.data,
        "mask_image": mask,
        "mode": Mode.INPAINT if inpaint else Mode.IMG2IMG,
    }
    if not size_given:
        changes["width"], changes["height"] = fit_size(image.width, image.height, max_pixels)
    changes.update({field: getattr(o, option) for option, field in IMAGE if getattr(o, option) is not None})
    return changes


def _hires_changes(o: ImagineOptions, has_source: bool) -> dict[str, Any]:
    given = [option for option, _ in HIRES if getattr(o, option) is not None]
    if not (o.hires or (given and o.hires is None)):
        if given:
            raise UserError("invalid", f"{', '.join(given)} only apply with hires on.")
        return {}
    if has_source:
        raise UserError("invalid", "Hires fix is for text-to-image; leave it off with a source image.")
    return {"enable_hr": True, **{field: getattr(o, option) for option, field in HIRES if option in given}}


def after_decoding_changes(o: ImagineOptions, post: PostprocessSettings) -> dict[str, Any]:
    """Face restoration and the detailer as the options (or the preset) ask: the server's models."""
    changes: dict[str, Any] = {}
    if o.face_restore is not None:
        changes["face_restoration"] = post.face_restoration_model if o.face_restore else ""
    if o.detailer is not None:
        changes["detailer"] = post.detailer_model if o.detailer else ""
    return changes


def preset_of(r: GenerationRequest) -> dict[str, Any]:
    """A stored request as preset options (``/preset save`` from the last job)."""
    params: dict[str, Any] = {"prompt": r.prompt, **{option: getattr(r, field) for option, field in BASIC}}
    if r.enable_hr:
        params.update(hires=True, **{option: getattr(r, field) for option, field in HIRES})
    if r.mode != Mode.TXT2IMG:
        params["strength"] = r.denoising_strength
    if r.face_restoration:
        params["face_restore"] = True
    if r.detailer:
        params["detailer"] = True
    params.update(guides.preset_of(r))
    return params


def options_of(params: Mapping[str, Any]) -> ImagineOptions:
    """A stored preset's options (unknown keys are left out)."""
    known = {f.name for f in dataclasses.fields(ImagineOptions)}
    data = {k: v for k, v in params.items() if k in known}
    data.setdefault("prompt", "")
    return ImagineOptions(**data)
