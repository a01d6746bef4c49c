"""Step 1 of the pipeline: a request's values checked against ``core.ranges``, and its source image and mask
decoded and prepared (img2img, inpaint). Every problem is a ``GenerationError`` naming the value.
"""

from __future__ import annotations

from core import ranges
from core.config import EngineSettings, PostprocessSettings
from core.engine import image_modes
from core.types import GenerationError, GenerationRequest, Mode


def check_inputs(
    request: GenerationRequest, settings: EngineSettings, postprocess: PostprocessSettings | None = None
) -> None:
    """``postprocess``: the installed upscaler models hires fix may name besides ``ranges.UPSCALERS``."""
    r = request
    check_image_inputs(r, postprocess)
    for name, side in (("width", r.width), ("height", r.height)):
        if not ranges.MIN_SIDE <= side <= ranges.MAX_SIDE or side % ranges.SIDE_MULTIPLE:
            raise GenerationError(
                f"{name} must be a multiple of {ranges.SIDE_MULTIPLE} between {ranges.MIN_SIDE} and "
                f"{ranges.MAX_SIDE}, not {side}"
            )
    if not ranges.MIN_STEPS <= r.steps <= ranges.MAX_STEPS:
        raise GenerationError(
            f"steps must be between {ranges.MIN_STEPS} and {ranges.MAX_STEPS}, not {r.steps}"
        )
    if not ranges.MIN_COUNT <= r.count <= ranges.MAX_COUNT:
        raise GenerationError(
            f"count must be between {ranges.MIN_COUNT} and {ranges.MAX_COUNT}, not {r.count}"
        )
    if not ranges.MIN_CFG <= r.cfg_scale <= ranges.MAX_CFG:
        raise GenerationError(
            f"CFG scale must be between {ranges.MIN_CFG:g} and {ranges.MAX_CFG:g}, not {r.cfg_scale}"
        )
    if not ranges.MIN_CFG_RESCALE <= r.cfg_rescale <= ranges.MAX_CFG_RESCALE:
        raise GenerationError(
            f"CFG rescale must be between {ranges.MIN_CFG_RESCALE:g} and {ranges.MAX_CFG_RESCALE:g}, "
            f"not {r.cfg_rescale}"
        )
    if r.eta is not None and not ranges.MIN_ETA <= r.eta <= ranges.MAX_ETA:
        raise GenerationError(f"eta must be between {ranges.MIN_ETA:g} and {ranges.MAX_ETA:g}, not {r.eta}")
    if not (r.seed == ranges.RANDOM_SEED or 0 <= r.seed <= ranges.MAX_SEED):
        raise GenerationError(f"seed must be -1 (random) or between 0 and {ranges.MAX_SEED}, not {r.seed}")
    if not (r.subseed == ranges.RANDOM_SEED or 0 <= r.subseed <= ranges.MAX_SEED):
        raise GenerationError(
            f"variation seed must be -1 or between 0 and {ranges.MAX_SEED}, not {r.subseed}"
        )
    if not ranges.MIN_STRENGTH <= r.subseed_strength <= ranges.MAX_STRENGTH:
        raise GenerationError(f"variation strength must be between 0 and 1, not {r.subseed_strength}")
    if (r.rng or settings.rng) not in ranges.RNG_SOURCES:
        raise GenerationError(f"RNG source must be gpu, cpu or nv, not {r.rng!r}")
    if r.clip_skip is not None and not ranges.MIN_CLIP_SKIP <= r.clip_skip <= ranges.MAX_CLIP_SKIP:
        raise GenerationError(
            f"CLIP skip must be between {ranges.MIN_CLIP_SKIP} and {ranges.MAX_CLIP_SKIP}, not {r.clip_skip}"
        )


def check_image_inputs(request: GenerationRequest, postprocess: PostprocessSettings | None = None) -> None:
    """img2img / inpaint / hires fix options (the images themselves are decoded by ``prepare_init``)."""
    r = request
    if r.mode not in (Mode.TXT2IMG, Mode.IMG2IMG, Mode.INPAINT, Mode.UPSCALE):
        raise GenerationError(f"unknown mode {r.mode!r}")
    if r.mode == Mode.UPSCALE:
        _check_upscale(r)
        return
    if r.mode != Mode.TXT2IMG:
        if r.init_image is None:
            raise GenerationError(f"{r.mode} needs a source image")
        if not ranges.MIN_STRENGTH <= r.denoising_strength <= ranges.MAX_STRENGTH:
            raise GenerationError(f"denoising strength must be between 0 and 1, not {r.denoising_strength}")
        if r.resize_mode not in ranges.RESIZE_MODES:
            raise GenerationError(
                "resize mode must be 0 (just resize), 1 (crop and resize) or 2 (resize and fill), "
                f"not {r.resize_mode}"
            )
        if r.enable_hr:
            raise GenerationError("hires fix is a txt2img option; it cannot be combined with img2img/inpaint")
    elif r.init_image is not None or r.mask_image is not None:
        raise GenerationError("txt2img takes no source image or mask; use img2img or inpaint")
    if r.mode == Mode.IMG2IMG and r.mask_image is not None:
        raise GenerationError("a mask needs the inpaint mode")
    if r.mode == Mode.INPAINT:
        _check_inpaint(r)
    if r.enable_hr:
        _check_hires(r, postprocess)


def _check_upscale(r: GenerationRequest) -> None:
    if r.init_image is None:
        raise GenerationError("an upscale needs a source image")
    if not r.upscaler.strip():
        raise GenerationError("an upscale needs an upscaler (a model's name, or Lanczos)")
    if not ranges.MIN_STRENGTH <= r.upscale_detail <= ranges.MAX_STRENGTH:
        raise GenerationError(f"the detail strength must be between 0 and 1, not {r.upscale_detail}")
    if r.enable_hr or r.mask_image is not None:
        raise GenerationError("an upscale takes no hires fix and no mask")


def _check_inpaint(r: GenerationRequest) -> None:
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


def _check_hires(r: GenerationRequest, postprocess: PostprocessSettings | None) -> None:
    if postprocess is not None:
        from core.engine.postprocess.names import check_hires_upscaler

        check_hires_upscaler(postprocess, r.hr_upscaler)  # a PostprocessError (a GenerationError)
    elif r.hr_upscaler not in ranges.UPSCALERS:
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
    to_x, to_y, tx, ty = image_modes.hires_target(r.width, r.height, r.hr_scale, r.hr_resize_x, r.hr_resize_y)
    if max(to_x, to_y) > ranges.MAX_SIDE or min(to_x - 8 * tx, to_y - 8 * ty) < ranges.MIN_SIDE:
        raise GenerationError(
            f"the hires size {to_x}x{to_y} must be between {ranges.MIN_SIDE} and {ranges.MAX_SIDE} a side"
        )
    steps = r.hr_second_pass_steps or r.steps
    if steps / min(r.hr_denoising_strength, 0.999) > ranges.MAX_HIRES_SCHEDULE:
        raise GenerationError("hires denoising strength is too small for that many hires steps")


def prepare_init(request: GenerationRequest, settings: EngineSettings):
    """The source image (and mask) decoded and prepared as A1111 does; None for txt2img."""
    if request.mode == Mode.TXT2IMG:
        return None
    limit = settings.max_input_megapixels
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
