"""The read side: jobs as views (/show, /history, /queue, ℹ️, captions), their images, quota status and
the limits that shape the bot's option choices. Nothing here writes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.services import policy
from core.services.context import Context, default_model, guild_of
from core.services.requests import DEFAULTS
from core.services.types import Actor, GuildLimits, ImageModeration, JobView, QuotaView, UserError
from core.storage.models import Job
from core.storage.repositories import Repositories, quota_window
from core.types import GeneratedImage, GenerationRequest


def stored_moderation(score: float | None, decision: dict[str, Any] | None) -> ImageModeration:
    """An image's moderation as the worker stored it (an image stored before moderation existed: posted)."""
    if decision is None:
        return ImageModeration("post", score, "stored before image moderation")
    return ImageModeration(
        action=str(decision.get("action", "post")),
        score=score,
        reason=str(decision.get("reason", "")),
        rule=str(decision.get("rule", "off")),
        threshold=decision.get("threshold"),
        charged=bool(decision.get("charged", True)),
        policy=decision.get("policy"),
    )


async def view_of(s: AsyncSession, job: Job) -> JobView:
    repos = Repositories(s)
    seeds = tuple(await repos.jobs.seeds(job.id)) or tuple(job.seed + i for i in range(job.count))
    moderation = tuple(
        stored_moderation(score, d) for score, d in await repos.jobs.moderation(job.id, stored_only=True)
    )
    return JobView(
        id=job.id,
        guild_id=job.guild_id,
        channel_id=job.channel_id,
        user_id=job.user_id,
        state=job.state,
        request=GenerationRequest.from_dict(job.params),
        seeds=seeds,
        model=job.model,
        model_hash=job.model_hash,
        error=job.error,
        created_at=job.created_at,
        finished_at=job.finished_at,
        parent_id=job.parent_id,
        kind=job.kind,
        status_message_id=job.status_message_id,
        result_message_ids=tuple(await repos.jobs.result_message_ids(job.id)),
        moderation=moderation,
        prompt_templates=job.prompt_templates,
        age_restricted=job.age_restricted,
    )


async def images_of(s: AsyncSession, job_id: int) -> tuple[GeneratedImage, ...]:
    """The job's stored images (those not pruned yet)."""
    rows = await Repositories(s).jobs.images(job_id)
    return tuple(
        GeneratedImage(r.png, r.seed, r.subseed, r.infotext, r.moderation_score)
        for r in rows
        if r.png is not None
    )


async def visible_job(s: AsyncSession, actor: Actor, job_id: int, *, for_update: bool = False) -> Job:
    """A job the actor may see (theirs, or one of their guild's), else "not found"."""
    job = await Repositories(s).jobs.get(job_id, for_update=for_update)
    if job is None or not policy.may_see(actor, job):
        raise UserError("not_found", f"There is no job {job_id} that you can see.")
    return job


async def show(ctx: Context, actor: Actor, job_id: int) -> JobView:
    """A job to post again where the actor is (/show): its ``moderation`` is decided again for this
    place under the policy of now. Refused when moderation blocks every image of it here."""
    async with ctx.db.session() as s:
        job = await visible_job(s, actor, job_id)
        view = await view_of(s, job)
        guild = await guild_of(s, actor)
    decisions = policy.moderation_here(actor, guild, ctx.moderation, [m.score for m in view.moderation], job)
    if decisions and all(d.action == "block" for d in decisions):
        policy.check_not_blocked(
            decisions[:1], "That image" if len(decisions) == 1 else "Every image of that job"
        )
    return dataclasses.replace(view, moderation=tuple(policy.moderation_view(d) for d in decisions))


async def job_images(ctx: Context, job_id: int) -> tuple[GeneratedImage, ...]:
    async with ctx.db.session() as s:
        return await images_of(s, job_id)


async def job_for_message(ctx: Context, message_id: int) -> JobView | None:
    async with ctx.db.session() as s:
        job = await Repositories(s).jobs.by_message(message_id)
        return None if job is None else await view_of(s, job)


async def history(ctx: Context, actor: Actor, page: int = 0, per_page: int = 10) -> tuple[list[JobView], int]:
    if page < 0 or not 1 <= per_page <= 100:
        raise UserError("invalid", "Pages start at 0 and hold 1 to 100 jobs.")
    async with ctx.db.session() as s:
        jobs, total = await Repositories(s).jobs.history_page(actor.user_id, page=page, per_page=per_page)
        return [await view_of(s, j) for j in jobs], total


async def my_queue(ctx: Context, actor: Actor) -> list[tuple[JobView, int]]:
    """The actor's queued and running jobs with their positions (0 = running), next first."""
    positions = await ctx.queue.positions()
    async with ctx.db.session() as s:
        out = [
            (await view_of(s, job), positions.get(job.id, (0, None))[0])
            for job in await Repositories(s).jobs.active_for_user(actor.user_id)
        ]
    return sorted(out, key=lambda pair: (pair[1], pair[0].id))


async def quota_status(ctx: Context, actor: Actor) -> QuotaView:
    async with ctx.db.session() as s:
        quotas = Repositories(s).quotas
        allowances = await quotas.effective(actor.guild_id, actor.user_id, actor.role_ids)
        usage = await quotas.status(actor.guild_id, actor.user_id, allowances)
        by_unit = {u.unit: u for u in usage}
        source = {a.unit: a.scope for a in allowances}
        main = by_unit.get("images") or by_unit.get("gpu_seconds")
        period = main.period if main is not None else "day"
        start, _ = quota_window(period, datetime.now(UTC))
        used = {
            unit: by_unit[unit].used
            if unit in by_unit
            else await quotas.used(actor.guild_id, actor.user_id, unit, start)
            for unit in ("images", "gpu_seconds")
        }
    return QuotaView(
        used_images=round(used["images"]),
        limit_images=int(by_unit["images"].allowance) if "images" in by_unit else None,
        used_gpu_seconds=round(used["gpu_seconds"], 1),
        limit_gpu_seconds=by_unit["gpu_seconds"].allowance if "gpu_seconds" in by_unit else None,
        period=period,
        resets_at=main.resets_at if main is not None else None,
        source=source.get(main.unit, "default") if main is not None else "default",
    )


async def guild_limits(ctx: Context, actor: Actor) -> GuildLimits:
    """The limits that apply to the actor's requests here (for size choices and option ranges)."""
    async with ctx.db.session() as s:
        lim = policy.limits(ctx.settings, await guild_of(s, actor))
    return GuildLimits(
        max_steps=lim["max_steps"],
        max_pixels=lim["max_pixels"],
        max_images=lim["max_images"],
        max_input_pixels=ctx.max_input_pixels,
    )


async def default_size(ctx: Context, actor: Actor, model: str | None) -> tuple[int, int]:
    """The size a job on ``model`` (None: the default model here) gets when the user gives none: the
    model's table, 1024x1024 for SDXL, else 512x512 (for the size choices)."""
    if model is None:
        async with ctx.db.session() as s:
            model, _ = default_model(ctx, await guild_of(s, actor))
    defaults = ctx.catalog.defaults(model)
    return defaults.width or DEFAULTS["width"], defaults.height or DEFAULTS["height"]


async def is_admin(ctx: Context, actor: Actor) -> bool:
    async with ctx.db.session() as s:
        return policy.is_admin(actor, await guild_of(s, actor))
