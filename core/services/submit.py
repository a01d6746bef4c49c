"""Putting a job in the queue: /imagine and /img2img, 🔁 reroll and 🔀 variation.

Each ends in :func:`enqueue`: one write transaction that takes the user's quota lock, counts the
stored queue against the caps, reserves the quota, inserts the job and NOTIFYs the workers — so two
submits of one user never both pass a cap, and a refused submit leaves nothing behind.
"""

from __future__ import annotations

import logging

from core.queue import notify
from core.queue.notify import JOBS, Note
from core.services import policy, presets, requests
from core.services.context import Context, default_model, guild_of
from core.services.reads import images_of, visible_job
from core.services.types import Actor, ImagineOptions, Receipt, UserError
from core.storage.models import Guild, Job
from core.storage.repositories import QuotaExceeded, Repositories
from core.types import GenerationRequest

log = logging.getLogger(__name__)

NO_MODEL = "This bot has no model yet — ask a server admin."

# 🔀: the same request and seed, plus a random A1111 variation seed mixed in at this strength: close
# to the original (composition kept), visibly different in the details.
VARIATION_STRENGTH = 0.25


async def submit_imagine(ctx: Context, actor: Actor, options: ImagineOptions) -> Receipt:
    _require_a_model(ctx, actor)
    async with ctx.db.session() as s:
        guild = await guild_of(s, actor)
        policy.check_channel(ctx.settings, actor, guild)
        preset = await presets.params_for(s, actor, options.preset) if options.preset else {}
        merged = requests.merge(options, preset)
        requests.check_sources(merged)
        source = (
            merged.init_image if merged.source_job is None else await _job_source(s, actor, merged.source_job)
        )
        lim = policy.limits(ctx.settings, guild)
        model = merged.model or _default_model(ctx, actor, guild)
        request = requests.build(
            merged,
            source,
            size_given=options.width is not None or options.height is not None,
            model=model,
            seed=requests.seed_of(options, ctx.rng),
            max_pixels=lim["max_pixels"],
            max_input_pixels=ctx.max_input_pixels,
            defaults=ctx.catalog.defaults(model),
        )
    _check_limits(ctx, request, guild)
    policy.check_text(
        request, list(guild.banned_words) if guild is not None else [], ctx.settings.engine
    )
    return await enqueue(ctx, actor, guild, request, kind="imagine")


async def reroll(ctx: Context, actor: Actor, message_id: int) -> Receipt:
    job, guild, stored = await _job_for_action(ctx, actor, message_id)
    request = stored.replace(seed=requests.random_seed(ctx.rng), subseed=-1)
    return await enqueue(ctx, actor, guild, request, kind="reroll", parent_id=job.id)


async def variation(ctx: Context, actor: Actor, message_id: int) -> Receipt:
    job, guild, stored = await _job_for_action(ctx, actor, message_id)
    request = stored.replace(subseed=requests.random_seed(ctx.rng), subseed_strength=VARIATION_STRENGTH)
    return await enqueue(ctx, actor, guild, request, kind="variation", parent_id=job.id)


def _require_a_model(ctx: Context, actor: Actor) -> None:
    """Refuse before anything is stored or charged when no job could run (and tell the operator why)."""
    if ctx.catalog.models():
        return
    log.warning(
        "refused a job from user %s (guild %s): %s", actor.user_id, actor.guild_id, ctx.catalog.no_model_reason()
    )
    raise UserError("no_model", NO_MODEL)


def _default_model(ctx: Context, actor: Actor, guild: Guild | None) -> str:
    """The model of a job that names none (:func:`~core.services.context.default_model`); a default
    naming a model that is gone is refused, and the operator's log says which."""
    name, whose = default_model(ctx, guild)
    if name is not None:
        return name
    if whose is None:
        _require_a_model(ctx, actor)  # nothing at all (the models went between the checks)
        raise UserError("no_model", NO_MODEL)
    wanted = guild.default_model if whose == "this server's" and guild else ctx.settings.engine.default_model
    log.warning(
        "refused a job from user %s (guild %s): %s default model %r is not available (models: %s)",
        actor.user_id, actor.guild_id, whose, wanted, ", ".join(ctx.catalog.models()[:20]),
    )  # fmt: skip
    raise UserError("no_model", f"{whose.capitalize()} default model {wanted!r} is not available — ask a server admin.")


def _check_limits(ctx: Context, request: GenerationRequest, guild: Guild | None) -> None:
    """The request against today's limits (a reroll's too: an admin may have lowered them since)."""
    policy.check_request(
        request,
        policy.limits(ctx.settings, guild),
        max_prompt_chars=ctx.settings.limits.max_prompt_chars,
        samplers=ctx.catalog.samplers(),
        models=ctx.catalog.models(),
    )


async def _job_source(s, actor: Actor, job_id: int) -> bytes:
    """The first image of a job the actor may see (the "use as source" path)."""
    job = await visible_job(s, actor, job_id)
    images = await images_of(s, job_id)
    if not images:
        raise UserError(
            "not_found", f"Job {job_id} has no image to start from (it is {job.state}, or its image expired)."
        )
    return images[0].png


async def _job_for_action(
    ctx: Context, actor: Actor, message_id: int
) -> tuple[Job, Guild | None, GenerationRequest]:
    async with ctx.db.session() as s:
        repos = Repositories(s)
        job = await repos.jobs.by_message(message_id)
        if job is None:
            raise UserError("not_found", "That message is not a chant result I know about.")
        guild = await guild_of(s, actor)
        policy.check_channel(ctx.settings, actor, guild)
        policy.check_reroll(actor, guild, job)
        stored = await repos.jobs.request(job)  # with its input images (img2img, inpaint)
    _require_a_model(ctx, actor)
    _check_limits(ctx, stored, guild)
    return job, guild, stored


async def enqueue(
    ctx: Context,
    actor: Actor,
    guild: Guild | None,
    request: GenerationRequest,
    *,
    kind: str,
    parent_id: int | None = None,
) -> Receipt:
    caps = policy.caps(ctx.settings, guild)
    gid = actor.guild_id
    charges = {"images": float(request.count), "gpu_seconds": await ctx.queue.estimate_seconds(request)}
    over: str | None = None
    try:
        async with ctx.db.transaction(write=True) as s:
            repos = Repositories(s)
            await repos.quotas.lock_user(gid, actor.user_id)
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
                )
            except ValueError as exc:
                raise UserError("invalid", f"I cannot store that request: {exc}.") from None
            await repos.quotas.attach(entries, job.id)
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
