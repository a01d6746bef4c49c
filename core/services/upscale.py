"""Upscale jobs: /upscale (an attachment, or a job's image), ⬆️ on a result, the ⬆️ button under one, and
``chant upscale``. A job like any other: queued fairly, charged by its GPU cost (``core.cost``), in
/history, posted as a reply.

The image goes to ``scale`` × its size (a multiple of 8 a side, within the guild's pixel limit) through
an upscaler model by A1111's name (or Lanczos), then — with ``detail`` > 0 — A1111's SD upscale: the
result's tiles repainted at that denoising strength with the job's prompt and model (``Mode.UPSCALE``;
the engine's ``core.engine.postprocess.upscale_job``). The source is stored once, content-addressed,
as img2img's sources are.

🔁 on an upscale: with a detail pass, a new seed (new details, as a user expects of 🔁); without one
nothing is random — the same image would come back — so 🔁 is refused privately and nothing is charged.
"""

from __future__ import annotations

import functools

from core import ranges
from core.engine.image_modes import IMAGE_UPSCALERS  # torch-free: the engine's PIL resamplers
from core.engine.postprocess.names import listing
from core.services import policy, requests
from core.services.context import Context, guild_of
from core.services.controls import job_image, job_source
from core.services.images import load_source as load_image
from core.services.submit import model_for_new_job, require_a_model, submit_checked
from core.services.types import Actor, Receipt, UserError
from core.storage.repositories import Repositories
from core.types import GenerationRequest, Mode

DEFAULT_SCALE = 2.0
PIL_UPSCALERS = tuple(
    name for name, resample in IMAGE_UPSCALERS.items() if resample is not None
)  # Lanczos, Nearest


def upscaler_names(ctx: Context) -> list[str]:
    """What an upscale job may name: the installed models (A1111's names), then Lanczos and Nearest."""
    return [*ctx.catalog.upscalers(), *PIL_UPSCALERS]


def default_upscaler(ctx: Context) -> str:
    """``postprocess.upscaler`` when it is installed, else the first installed model, else Lanczos."""
    models = ctx.catalog.upscalers()
    wanted = ctx.settings.postprocess.upscaler
    return wanted if wanted in models else (models[0] if models else PIL_UPSCALERS[0])


def target_size(width: int, height: int, scale: float, max_pixels: int) -> tuple[int, int]:
    """A1111's ``upscale_by`` size (each side × ``scale``, down to a multiple of 8), within the limits."""
    if not ranges.MIN_UPSCALE_FACTOR < scale <= ranges.MAX_UPSCALE_FACTOR:
        raise UserError(
            "invalid",
            f"The scale must be above {ranges.MIN_UPSCALE_FACTOR:g} and at most {ranges.MAX_UPSCALE_FACTOR:g} "
            f"(you gave {scale:g}).",
        )
    w, h = int(width * scale) // 8 * 8, int(height * scale) // 8 * 8
    most = min((max_pixels / (width * height)) ** 0.5, ranges.MAX_SIDE / max(width, height))
    if w * h > max_pixels or max(w, h) > ranges.MAX_SIDE:
        hint = (
            f"at most ×{int(most * 100) / 100:g} here" if most > 1 else "this image is already at the limit"
        )
        raise UserError(
            "limit.pixels",
            f"×{scale:g} would make {width}×{height} into {w}×{h}, larger than this server allows "
            f"({max_pixels:,} pixels, {ranges.MAX_SIDE} a side): {hint}.",
        )
    return w, h


def check_target(width: int, height: int, size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """A target size: larger than the image on some side, within the limits (sides multiples of 8)."""
    w, h = size
    policy.check_sides(w, h)
    if w <= width and h <= height:
        raise UserError(
            "invalid", f"{w}×{h} is no larger than the image ({width}×{height}): nothing to upscale."
        )
    if w * h > max_pixels:
        raise UserError(
            "limit.pixels",
            f"{w}×{h} is larger than this server allows ({max_pixels:,} pixels). Choose a smaller size.",
        )
    return w, h


async def upscale(
    ctx: Context,
    actor: Actor,
    *,
    job_id: int | None = None,
    index: int = 0,
    image: bytes | None = None,
    scale: float | None = None,
    upscaler: str | None = None,
    detail: float | None = None,
    size: tuple[int, int] | None = None,
    status_message_id: int | None = None,
) -> Receipt:
    """Upscale image ``index`` (0-based) of job ``job_id``, or an uploaded ``image``: one of them. ``size``
    (instead of ``scale``): the output's width and height, as A1111's extras "Scale to" (the image is
    upscaled to cover it, then resized to it exactly)."""
    if (job_id is None) == (image is None):
        raise UserError("invalid", "Attach an image (image:) or name a job (job:) to upscale — one of them.")
    detail = 0.0 if detail is None else float(detail)
    policy.check_strength("detail", detail)
    if detail > 0:
        require_a_model(ctx, actor)  # the detail pass runs the SD model
    name = upscaler or default_upscaler(ctx)
    names = upscaler_names(ctx)
    if name not in names:
        raise UserError(
            "upscaler", f"I do not know the upscaler {name!r}; this server has: {listing(names)}."
        )
    parent_id, templates, age_restricted = None, None, None
    if job_id is not None:
        src = await job_source(ctx, actor, job_id, index)
        row = await job_image(ctx, src, index)
        guild, png = src.guild, row.png
        base = src.request.replace(seed=row.seed, subseed=row.subseed)
        parent_id, templates, age_restricted = src.job.id, src.job.prompt_templates, src.age_restricted
        width, height = _png_size(png)
    else:
        async with ctx.db.session() as s:
            guild = await guild_of(s, actor)
        policy.check_channel(ctx.settings, actor, guild)
        checked = await ctx.images.run(
            functools.partial(load_image, max_pixels=ctx.max_input_pixels, what="image to upscale"), image
        )
        png, width, height = checked.data, checked.width, checked.height
        model = model_for_new_job(ctx, actor, guild) if detail > 0 else None
        base = GenerationRequest(prompt="", model=model, seed=requests.random_seed(ctx.rng))
    max_pixels = policy.limits(ctx.settings, guild)["max_pixels"]
    if size is not None:
        if scale is not None:
            raise UserError("invalid", "Give a scale or a size, not both.")
        w, h = check_target(width, height, size, max_pixels)
    else:
        w, h = target_size(width, height, DEFAULT_SCALE if scale is None else float(scale), max_pixels)
    request = base.replace(
        mode=Mode.UPSCALE, init_image=png, mask_image=None, width=w, height=h, count=1, enable_hr=False,
        upscaler=name, upscale_detail=detail, denoising_strength=detail or base.denoising_strength,
        face_restoration="", detailer="", subseed_strength=0.0, controls=(), references=(),
    )  # fmt: skip
    return await submit_checked(
        ctx, actor, guild, request, kind="upscale", parent_id=parent_id, templates=templates,
        age_restricted=age_restricted, status_message_id=status_message_id,
    )  # fmt: skip


async def upscale_message(
    ctx: Context, actor: Actor, message_id: int, *, status_message_id: int | None = None
) -> Receipt:
    """⬆️ on a result: its first image, ×2, with the default upscaler."""
    async with ctx.db.session() as s:
        job = await Repositories(s).jobs.by_message(message_id)
    if job is None:
        raise UserError("not_found", "That message is not a chant result I know about.")
    return await upscale(ctx, actor, job_id=job.id, index=0, status_message_id=status_message_id)


def _png_size(data: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size
