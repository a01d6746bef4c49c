"""Putting a job in the queue: /imagine and /img2img, 🔁 reroll and 🔀 variation.

Each ends in :func:`enqueue`: one write transaction that takes the user's quota lock and the queue's
lock, counts the stored queue against the caps, reserves the quota, inserts the job and NOTIFYs the
workers — so two submits never both pass a cap, and a refused submit leaves nothing behind.
"""

from __future__ import annotations

from core.queue import notify
from core.queue.notify import JOBS, Note
from core.services import policy, presets, requests
from core.services.context import Context, guild_of
from core.services.images import load_upload
from core.services.reads import images_of, visible_job
from core.services.types import Actor, ImagineOptions, Receipt, UserError
from core.storage.models import Guild, Job
from core.storage.repositories import QuotaExceeded, Repositories
from core.types import GenerationRequest

# 🔀: the same request and seed, plus a random A1111 variation seed mixed in at this strength: close
# to the original (composition kept), visibly different in the details.
VARIATION_STRENGTH = 0.25


async def submit_imagine(
    ctx: Context, actor: Actor, options: ImagineOptions, *, status_message_id: int | None = None
) -> Receipt:
    async with ctx.db.session() as s:
        guild = await guild_of(s, actor)
        policy.check_channel(ctx.settings, actor, guild)
        preset = await presets.params_for(s, actor, options.preset) if options.preset else {}
        merged = requests.merge(options, preset)
        requests.check_sources(merged)
        source = (
            merged.init_image if merged.source_job is None else await _job_source(s, actor, merged.source_job)
        )
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
        default_model=(guild.default_model if guild is not None else None)
        or ctx.settings.engine.default_model,
        seed=requests.seed_of(options, ctx.rng),
        max_pixels=policy.limits(ctx.settings, guild)["max_pixels"],
    )
    _check_limits(ctx, request, guild)
    policy.check_text(request, list(guild.banned_words) if guild is not None else [], ctx.settings.engine)
    return await enqueue(ctx, actor, guild, request, kind="imagine", status_message_id=status_message_id)


async def reroll(
    ctx: Context, actor: Actor, message_id: int, *, status_message_id: int | None = None
) -> Receipt:
    job, guild, stored = await _job_for_action(ctx, actor, message_id)
    request = stored.replace(seed=requests.random_seed(ctx.rng), subseed=-1)
    return await enqueue(
        ctx, actor, guild, request, kind="reroll", parent_id=job.id, status_message_id=status_message_id
    )


async def variation(
    ctx: Context, actor: Actor, message_id: int, *, status_message_id: int | None = None
) -> Receipt:
    job, guild, stored = await _job_for_action(ctx, actor, message_id)
    request = stored.replace(subseed=requests.random_seed(ctx.rng), subseed_strength=VARIATION_STRENGTH)
    return await enqueue(
        ctx, actor, guild, request, kind="variation", parent_id=job.id, status_message_id=status_message_id
    )


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
        if await repos.jobs.inputs_pruned(job.id):
            raise policy.source_pruned(job.id, ctx.settings.database.image_retention_days)
        stored = await repos.jobs.request(job)  # with its input images (img2img, inpaint)
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
