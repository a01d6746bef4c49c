"""The result controls (the buttons under a result, as Midjourney's): 🔁 reroll, Vary (Subtle / Strong),
Remix, Zoom Out 1.5× / 2×, Pan ⬅️➡️⬆️⬇️, and picking one image of several (U1–U4).

Each starts from one image of a stored job (``index``, 0-based, its position in the job) and is a job
of its own: charged, queued and scheduled like any other (:func:`.submit.submit_checked`), with a
``kind`` and its ``parent``, shown in /history. Who may use them is 🔁's rule (the channel, and the
guild's reroll policy); an image that moderation blocks where the actor is cannot be varied, zoomed,
panned, remixed or picked there. A control makes as many images as the job it starts from.

- **Vary**: the image's own seed with A1111's variation seed at :data:`core.controls.vary.SUBTLE` or
  ``STRONG``; the stored prompt (a dynamic prompt's expansion) is kept.
- **Remix**: the prompt, negative prompt (as typed: a dynamic prompt's template) and seed edited in a
  form, then every check of /imagine; the rest of the job is kept, its variation seed dropped.
- **Zoom out / Pan**: the image on a larger canvas, the new area painted by the inpaint path
  (:mod:`core.controls.outpaint`), within the guild's pixel limit; a new seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from core.controls import outpaint
from core.controls import vary as vary_control
from core.ranges import MAX_SEED, RANDOM_SEED
from core.services import policy, requests
from core.services.context import Context
from core.services.reads import view_of
from core.services.submit import Source, load_source, require_a_model, reroll_source, submit_checked
from core.services.types import Actor, JobView, Receipt, RemixForm, UserError
from core.storage.models import JobImage
from core.storage.repositories import Repositories
from core.types import GeneratedImage, GenerationRequest, Mode

PANS = tuple(str(d) for d in outpaint.Direction)


async def reroll_job(
    ctx: Context, actor: Actor, job_id: int, *, status_message_id: int | None = None
) -> Receipt:
    """🔁 as a button: the job again with a new seed."""
    src = await load_source(ctx, actor, job_id=job_id)
    return await reroll_source(ctx, actor, src, status_message_id=status_message_id)


async def vary(
    ctx: Context, actor: Actor, job_id: int, index: int, strength: str, *, status_message_id: int | None = None
) -> Receipt:
    """Vary (Subtle / Strong) image ``index``: its seed, a new variation seed at that strength."""
    if strength not in vary_control.STRENGTHS:
        raise UserError("invalid", f"Vary is subtle or strong, not {strength!r}.")
    src = await job_source(ctx, actor, job_id, index)
    if src.request.mode == Mode.UPSCALE:
        raise UserError("invalid", NOT_ON_UPSCALES)
    request = vary_control.vary(
        src.request,
        image_seed=src.seeds[index],
        strength=strength,
        subseed=requests.random_seed(ctx.rng),
    )
    return await _derived(ctx, actor, src, request, "vary", status_message_id)


async def remix_form(ctx: Context, actor: Actor, job_id: int, index: int) -> RemixForm:
    src = await job_source(ctx, actor, job_id, index)
    if src.request.mode == Mode.UPSCALE:
        raise UserError("invalid", NOT_ON_UPSCALES)
    templates = src.job.prompt_templates or {}
    return RemixForm(
        prompt=templates.get("prompt", src.request.prompt),
        negative=templates.get("negative_prompt", src.request.negative_prompt),
        seed=src.seeds[index],
    )


async def remix(
    ctx: Context,
    actor: Actor,
    job_id: int,
    index: int,
    *,
    prompt: str,
    negative: str,
    seed: int | None,
    status_message_id: int | None = None,
) -> Receipt:
    """Remix image ``index``: the job with the edited prompt, negative prompt and seed (None or -1: a new
    one), through every check of /imagine (dynamic prompts expanded with that seed)."""
    src = await job_source(ctx, actor, job_id, index)
    if src.request.mode == Mode.UPSCALE:
        raise UserError("invalid", NOT_ON_UPSCALES)
    if seed is None or seed == RANDOM_SEED:
        seed = requests.random_seed(ctx.rng)
    if not 0 <= seed <= MAX_SEED:
        raise UserError("seed", f"The seed must be between 0 and {MAX_SEED} (or -1 for random).")
    request = src.request.replace(
        prompt=prompt, negative_prompt=negative, seed=seed, subseed=-1, subseed_strength=0.0
    )
    return await submit_checked(
        ctx, actor, src.guild, request, kind="remix", parent_id=src.job.id, expand=True,
        age_restricted=src.age_restricted, status_message_id=status_message_id,
    )  # fmt: skip


async def zoom_out(
    ctx: Context, actor: Actor, job_id: int, index: int, factor: float, *, status_message_id: int | None = None
) -> Receipt:
    """Zoom Out image ``index`` by ``factor`` (1.5 or 2): outpainted around it."""
    if factor not in outpaint.ZOOM_FACTORS:
        raise UserError("invalid", f"Zoom out is {' or '.join(f'{f:g}×' for f in outpaint.ZOOM_FACTORS)}.")
    src = await job_source(ctx, actor, job_id, index)
    png = (await job_image(ctx, src, index)).png
    return await _outpaint(
        ctx, actor, src, "zoom", lambda base, lim: outpaint.zoom_out(base, png, factor, lim), status_message_id
    )


async def pan(
    ctx: Context, actor: Actor, job_id: int, index: int, direction: str, *, status_message_id: int | None = None
) -> Receipt:
    """Pan image ``index`` left, right, up or down: outpainted on that side."""
    if direction not in PANS:
        raise UserError("invalid", f"Pan is one of {', '.join(PANS)}, not {direction!r}.")
    src = await job_source(ctx, actor, job_id, index)
    png = (await job_image(ctx, src, index)).png
    return await _outpaint(
        ctx, actor, src, "pan", lambda base, lim: outpaint.pan(base, png, direction, lim), status_message_id
    )


async def pick(ctx: Context, actor: Actor, job_id: int, index: int) -> tuple[JobView, GeneratedImage]:
    """U1–U4: one image of a job, to post on its own (with its own controls) where the actor is; its
    ``view.moderation`` holds that one image's decision here."""
    src = await job_source(ctx, actor, job_id, index)
    row = await job_image(ctx, src, index)
    async with ctx.db.session() as s:
        view = await view_of(s, src.job)
    image = GeneratedImage(row.png, row.seed, row.subseed, row.infotext, row.moderation_score)
    (decision,) = policy.moderation_here(actor, src.guild, ctx.moderation, [image.score], src.job)
    return dataclasses.replace(view, moderation=(policy.moderation_view(decision),)), image


# ------------------------------------------------------------------------------------------- internals


NOT_ON_UPSCALES = (
    "Vary and Remix repaint a generated image; this one is an upscale. Use them on the image it came from, "
    "or /upscale with detail for new details."
)


async def job_source(ctx: Context, actor: Actor, job_id: int, index: int) -> Source:
    src = await load_source(ctx, actor, job_id=job_id)
    if src.job.state != "done":
        raise UserError("not_done", f"Job #{job_id} is {src.job.state}; the controls work on finished jobs.")
    src.image(index)
    src.check_not_blocked(ctx, actor, index)
    return src


async def _derived(
    ctx: Context, actor: Actor, src: Source, request: GenerationRequest, kind: str, status_message_id: int | None
) -> Receipt:
    """A job made from ``src``'s stored expansion (not drawn again; its templates carried along)."""
    return await submit_checked(
        ctx, actor, src.guild, request, kind=kind, parent_id=src.job.id, templates=src.job.prompt_templates,
        age_restricted=src.age_restricted, status_message_id=status_message_id,
    )  # fmt: skip


async def job_image(ctx: Context, src: Source, index: int) -> JobImage:
    """Image ``index`` of the job, with its PNG (a UserError once retention pruned it)."""
    async with ctx.db.session() as s:
        rows = await Repositories(s).jobs.images(src.job.id)
    row = next((r for r in rows if r.position == index), None)
    if row is None or row.png is None:
        raise UserError("not_found", f"Image {index + 1} of job #{src.job.id} is no longer stored.")
    return row


async def _outpaint(
    ctx: Context,
    actor: Actor,
    src: Source,
    kind: str,
    make: Callable[[GenerationRequest, int], outpaint.Outpaint],
    status_message_id: int | None,
) -> Receipt:
    """The canvas and its mask are made in the image pool (a PNG decode and encode of up to the guild's
    pixel limit: off the event loop, as uploads are); the job stores them as content-addressed sources."""
    require_a_model(ctx, actor)  # before the canvas's work (submit_checked would refuse it after)
    max_pixels = policy.limits(ctx.settings, src.guild)["max_pixels"]
    try:
        made = await ctx.images.run(make, src.request, max_pixels)
    except ValueError as exc:
        raise UserError("invalid", f"I cannot outpaint that image: {exc}.") from None
    request = made.request.replace(seed=requests.random_seed(ctx.rng))
    return await _derived(ctx, actor, src, request, kind, status_message_id)
