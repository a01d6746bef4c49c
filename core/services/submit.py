"""Putting a job in the queue: /imagine and /img2img, 🔁 reroll and 🔀 variation (the result controls,
:mod:`.controls`, build on :func:`load_source` and :func:`submit_checked` here).

Each ends in :func:`enqueue`: one write transaction that takes the user's quota lock and the queue's
lock, counts the stored queue against the caps, reserves the quota, inserts the job and NOTIFYs the
workers — so two submits never both pass a cap, and a refused submit leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any

from core.queue import notify
from core.queue.notify import JOBS, Note
from core.services import guides, policy, presets, prompts, requests
from core.services.context import Context, default_model, guild_of
from core.services.images import SourceImage, load_upload
from core.services.images import load_source as checked_image
from core.services.reads import images_of, visible_job
from core.services.types import Actor, ImagineOptions, Receipt, UserError
from core.storage.models import Guild, Job
from core.storage.repositories import QuotaExceeded, Repositories
from core.types import GenerationRequest, Mode

log = logging.getLogger(__name__)

NO_MODEL = "This bot has no model yet — ask a server admin."

NOTHING_TO_REROLL = (
    "An upscale without a detail pass has nothing random: 🔁 would make the very same image. "
    "For new details, use /upscale with detail (e.g. 0.3)."
)

# 🔀: the same request and seed, plus a random A1111 variation seed mixed in at this strength: close
# to the original (composition kept), visibly different in the details.
VARIATION_STRENGTH = 0.25


async def submit_imagine(
    ctx: Context, actor: Actor, options: ImagineOptions, *, status_message_id: int | None = None
) -> Receipt:
    require_a_model(ctx, actor)
    async with ctx.db.session() as s:
        guild = await guild_of(s, actor)
        policy.check_channel(ctx.settings, actor, guild)
        preset = await presets.params_for(s, actor, options.preset) if options.preset else {}
        guides.check_given(options)
        merged = requests.merge(options, preset)
        requests.check_sources(merged)
        if guides.wanted(merged):  # control / reference images: values and the guild's switch, cheaply first
            guides.check_options(merged)
            guides.check_allowed(guild)
        source = (
            merged.init_image
            if merged.source_job is None
            else await _job_source(ctx, s, actor, guild, merged.source_job)
        )
    model = merged.model or model_for_new_job(ctx, actor, guild)  # before the upload's work: refused cheaply
    # Off the event loop and outside the session: a phone photo takes seconds to check and re-encode.
    upload = (
        await ctx.images.run(load_upload, source, merged.mask_image, ctx.max_input_pixels)
        if source is not None
        else None
    )
    request = requests.build(
        merged,
        upload,
        size_given=options.width is not None or options.height is not None,
        model=model,
        seed=requests.seed_of(options, ctx.rng),
        max_pixels=policy.limits(ctx.settings, guild)["max_pixels"],
        defaults=ctx.catalog.defaults(model),
    )
    if merged.detailer is None and guild is not None and guild.detailer_default:
        merged = dataclasses.replace(merged, detailer=True)  # the guild's default
    request = request.replace(**requests.after_decoding_changes(merged, ctx.settings.postprocess))
    if guides.wanted(merged):  # checked as img2img sources are, in the ImageWork pool
        named = guides.changes(  # the models it needs, before its images are worked on
            merged, _NAMED if merged.control_image else None, _NAMED if merged.reference_image else None
        )
        guides.check_available(ctx.settings.engine, request.replace(**named))
        control = await _guide_image(ctx, merged.control_image, "control image")
        reference = await _guide_image(ctx, merged.reference_image, "reference image")
        request = request.replace(**guides.changes(merged, control, reference))
    return await submit_checked(
        ctx, actor, guild, request, kind="imagine", expand=True, status_message_id=status_message_id
    )


async def reroll(
    ctx: Context, actor: Actor, message_id: int, *, status_message_id: int | None = None
) -> Receipt:
    """🔁: the same request with a new seed (a dynamic prompt is drawn again with it)."""
    src = await load_source(ctx, actor, message_id=message_id)
    return await reroll_source(ctx, actor, src, status_message_id=status_message_id)


async def reroll_source(
    ctx: Context, actor: Actor, src: Source, *, status_message_id: int | None = None
) -> Receipt:
    src.check_not_blocked(ctx, actor)
    if src.request.mode == Mode.UPSCALE and not src.request.upscale_detail:
        raise UserError("reroll.same", NOTHING_TO_REROLL)
    request = src.request.replace(seed=requests.random_seed(ctx.rng), subseed=-1)
    templates = src.job.prompt_templates
    return await submit_checked(
        ctx, actor, src.guild, request, kind="reroll", parent_id=src.job.id, templates=templates,
        expand=templates is not None, age_restricted=src.age_restricted, status_message_id=status_message_id,
    )  # fmt: skip


async def variation(
    ctx: Context, actor: Actor, message_id: int, *, status_message_id: int | None = None
) -> Receipt:
    """🔀: the same request and seed (and so the same expansion), a variation seed mixed in."""
    src = await load_source(ctx, actor, message_id=message_id)
    src.check_not_blocked(ctx, actor)
    if src.request.mode == Mode.UPSCALE and not src.request.upscale_detail:
        raise UserError("reroll.same", NOTHING_TO_REROLL)
    request = src.request.replace(subseed=requests.random_seed(ctx.rng), subseed_strength=VARIATION_STRENGTH)
    return await submit_checked(
        ctx, actor, src.guild, request, kind="variation", parent_id=src.job.id,
        templates=src.job.prompt_templates, age_restricted=src.age_restricted,
        status_message_id=status_message_id,
    )  # fmt: skip


async def submit_checked(
    ctx: Context,
    actor: Actor,
    guild: Guild | None,
    request: GenerationRequest,
    *,
    kind: str,
    parent_id: int | None = None,
    templates: dict[str, Any] | None = None,
    expand: bool = False,
    age_restricted: bool | None = None,
    status_message_id: int | None = None,
) -> Receipt:
    """Every submit's checks, then :func:`enqueue`. ``expand``: the prompts (or ``templates``, what was
    typed) are dynamic-prompt templates to expand with the request's seed; otherwise the request holds a
    stored expansion, kept as it is (``templates`` carried along). Limits, the syntax, banned words and
    extra networks are then checked on the expanded text, as of today's settings (a derived job's too:
    an admin may have changed them since). With no model to run it on, refused first: nothing stored or
    charged (every control that makes a job comes through here)."""
    require_a_model(ctx, actor)
    if expand:
        expanded = prompts.expand_request(ctx, request, templates)
        request, templates = expanded.request, expanded.templates
    _check_limits(ctx, request, guild)
    if request.controls or request.references:  # 🔁 and 🔀 too: an admin may have turned them off since
        guides.check_allowed(guild)
        guides.check_available(ctx.settings.engine, request)
    policy.check_text(request, list(guild.banned_words) if guild is not None else [], ctx.settings.engine)
    place = policy.age_restricted_here(actor) if age_restricted is None else age_restricted
    return await enqueue(
        ctx, actor, guild, request, kind=kind, parent_id=parent_id, templates=templates, age_restricted=place,
        status_message_id=status_message_id,
    )  # fmt: skip


_NAMED = SourceImage(b"", 0, 0, False)  # a stand-in: what a request needs is checked before its images


async def _guide_image(ctx: Context, data: bytes | None, what: str) -> SourceImage | None:
    if data is None:
        return None
    return await ctx.images.run(functools.partial(checked_image, max_pixels=ctx.max_input_pixels, what=what), data)


def require_a_model(ctx: Context, actor: Actor) -> None:
    """Refuse before anything is stored or charged when no job could run (and tell the operator why)."""
    if ctx.catalog.models():
        return
    log.warning(
        "refused a job from user %s (guild %s): %s", actor.user_id, actor.guild_id, ctx.catalog.no_model_reason()
    )
    raise UserError("no_model", NO_MODEL)


def model_for_new_job(ctx: Context, actor: Actor, guild: Guild | None) -> str:
    """The model of a job that names none (:func:`~core.services.context.default_model`); a default
    naming a model that is gone is refused, and the operator's log says which."""
    name, whose = default_model(ctx, guild)
    if name is not None:
        return name
    if whose is None:
        require_a_model(ctx, actor)  # nothing at all (the models went between the checks)
        raise UserError("no_model", NO_MODEL)
    wanted = guild.default_model if whose == "this server's" and guild else ctx.settings.engine.default_model
    log.warning(
        "refused a job from user %s (guild %s): %s default model %r is not available (models: %s)",
        actor.user_id, actor.guild_id, whose, wanted, ", ".join(ctx.catalog.models()[:20]),
    )  # fmt: skip
    raise UserError("no_model", f"{whose.capitalize()} default model {wanted!r} is not available — ask a server admin.")


def _check_limits(ctx: Context, request: GenerationRequest, guild: Guild | None) -> None:
    """The request against today's limits (a reroll's too: an admin may have lowered them since)."""
    if request.mode == Mode.UPSCALE:
        upscalers = [*ctx.catalog.upscalers(), "Lanczos", "Nearest"]
        policy.check_upscale(request, policy.limits(ctx.settings, guild), upscalers)
        return
    policy.check_request(
        request,
        policy.limits(ctx.settings, guild),
        max_prompt_chars=ctx.settings.limits.max_prompt_chars,
        samplers=ctx.catalog.samplers(),
        models=ctx.catalog.models(),
        upscalers=ctx.catalog.hires_upscalers(),
    )
    policy.check_after_decoding(request, ctx.settings.postprocess)


async def _job_source(ctx: Context, s, actor: Actor, guild: Guild | None, job_id: int) -> bytes:
    """The first image of a job the actor may see (the "use as source" path), unless moderation blocks
    it where the actor is."""
    job = await visible_job(s, actor, job_id)
    images = await images_of(s, job_id)
    if not images:
        raise UserError(
            "not_found", f"Job {job_id} has no image to start from (it is {job.state}, or its image expired)."
        )
    decisions = policy.moderation_here(actor, guild, ctx.moderation, [images[0].score], job)
    policy.check_not_blocked(decisions)
    return images[0].png


@dataclass(frozen=True)
class Source:
    """A stored job that a new job starts from (🔁, 🔀 and the result controls), as the actor may use it."""

    job: Job
    guild: Guild | None  # the actor's guild settings
    request: GenerationRequest  # the stored request, with its input images
    seeds: tuple[int, ...]  # per image
    scores: tuple[float | None, ...]  # per image: the classifier's
    age_restricted: bool  # the actor's channel

    def image(self, index: int) -> int:
        """``index`` if the job has that image (0-based), else a UserError."""
        if not 0 <= index < len(self.seeds):
            have = f"{len(self.seeds)} image(s)" if self.seeds else "no images"
            raise UserError("not_found", f"Job #{self.job.id} has {have}; there is no image {index + 1}.")
        return index

    def check_not_blocked(self, ctx: Context, actor: Actor, index: int | None = None) -> None:
        """Refuse when moderation blocks the image (all images: ``index`` None) where the actor is."""
        scores = self.scores if index is None else (self.scores[self.image(index)],)
        decisions = policy.moderation_here(actor, self.guild, ctx.moderation, scores, self.job)
        policy.check_not_blocked(
            decisions, "That image" if index is not None or len(scores) < 2 else "An image of that job"
        )


async def load_source(
    ctx: Context, actor: Actor, *, message_id: int | None = None, job_id: int | None = None
) -> Source:
    """The job a result message shows (reactions), or a job by id (buttons: ``visible_job``), with the
    checks of 🔁: the channel, and the guild's reroll policy."""
    async with ctx.db.session() as s:
        repos = Repositories(s)
        if message_id is not None:
            job = await repos.jobs.by_message(message_id)
            if job is None:
                raise UserError("not_found", "That message is not a chant result I know about.")
        else:
            assert job_id is not None
            job = await visible_job(s, actor, job_id)
        guild = await guild_of(s, actor)
        policy.check_channel(ctx.settings, actor, guild)
        policy.check_reroll(actor, guild, job)
        if await repos.jobs.inputs_pruned(job.id):
            raise policy.source_pruned(job.id, ctx.settings.database.image_retention_days)
        stored = await repos.jobs.request(job)  # with its input images (img2img, inpaint)
        seeds = tuple(await repos.jobs.seeds(job.id))
        scores = tuple(score for score, _ in await repos.jobs.moderation(job.id))
    return Source(job, guild, stored, seeds, scores, policy.age_restricted_here(actor, job))


async def enqueue(
    ctx: Context,
    actor: Actor,
    guild: Guild | None,
    request: GenerationRequest,
    *,
    kind: str,
    parent_id: int | None = None,
    templates: dict[str, Any] | None = None,
    age_restricted: bool = False,
    status_message_id: int | None = None,
) -> Receipt:
    """``status_message_id``: the message in the actor's channel that shows this job's status, posted
    before the job exists and stored with it, so a bot killed at any point after this commit still
    finds (and finishes) it after a restart."""
    caps = policy.caps(ctx.settings, guild)
    gid = actor.guild_id
    charges = {"images": float(request.count), "gpu_seconds": await ctx.queue.estimate_seconds(request)}
    over: str | None = None
    try:
        async with ctx.db.transaction(write=True) as s:
            repos = Repositories(s)
            # Always in this order (the user's quota row, then the queue), so submits never deadlock.
            await repos.quotas.lock_user(gid, actor.user_id)
            await repos.jobs.lock_queue()
            over = policy.over_cap(caps, await repos.jobs.active_counts(gid, actor.user_id))
            if over is not None:
                raise _Over()
            allowances = await repos.quotas.effective(gid, actor.user_id, actor.role_ids)
            entries = await repos.quotas.reserve(gid, actor.user_id, charges, allowances)
            try:
                job = await repos.jobs.add(
                    user_id=actor.user_id,
                    channel_id=actor.channel_id,
                    guild_id=gid,
                    request=request,
                    kind=kind,
                    parent_id=parent_id,
                    age_restricted=age_restricted,
                    prompt_templates=templates,
                )
            except ValueError as exc:
                raise UserError("invalid", f"I cannot store that request: {exc}.") from None
            await repos.quotas.attach(entries, job.id)
            if status_message_id is not None:
                await repos.jobs.set_status_message(job.id, actor.channel_id, status_message_id)
            await notify.send(s, JOBS, Note("queued", job.id))
            job_id = job.id
    except _Over:
        limit = over or "global"
        raise policy.cap_refusal(
            limit, caps, await ctx.queue.retry_hint(limit, actor.guild_id, actor.user_id)
        ) from None
    except QuotaExceeded as exc:
        raise policy.quota_refusal(exc) from None
    if ctx.worker is not None:
        ctx.worker.wake()
    position, eta = (await ctx.queue.positions()).get(job_id, (1, None))
    ctx.ledger.queued(job_id, position, eta)
    return Receipt(job_id, position, eta)


class _Over(Exception):
    """A queue cap was hit inside the submit transaction (rolled back, then reported)."""
