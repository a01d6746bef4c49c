"""/admin: quotas, limits, default model, reroll policy, banned words, channels, admin roles, image
moderation, stats and a job's details.

Every change is checked against the actor's admin rights in the same transaction that makes it, and
written to the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.moderation import parse_guild_policy
from core.services import policy
from core.services.context import Context, guild_of
from core.services.reads import view_of
from core.services.types import Actor, JobView, ModerationView, UserError
from core.storage.repositories import GUILD_LIMIT_FIELDS, Repositories, moderation_of

SETTABLE_LIMITS = GUILD_LIMIT_FIELDS


async def _require_admin(s: AsyncSession, actor: Actor) -> int:
    """The actor's guild id, if they administer it."""
    policy.check_admin(actor, await guild_of(s, actor))
    assert actor.guild_id is not None  # check_admin refuses DMs
    return actor.guild_id


async def set_quota(
    ctx: Context,
    actor: Actor,
    *,
    scope: str,
    target_id: int | None,
    images: int | None,
    gpu_seconds: float | None,
    period: str,
) -> None:
    if scope not in ("guild", "role", "user"):
        raise UserError("invalid", "The quota scope must be guild, role or user.")
    if scope != "guild" and target_id is None:
        raise UserError("invalid", f"Name the {scope} this quota is for.")
    if period not in ("hour", "day"):
        raise UserError("invalid", "The quota period must be hour or day.")
    for label, value in (("images", images), ("GPU seconds", gpu_seconds)):
        if value is not None and value < 0:
            raise UserError("invalid", f"A quota of {label} cannot be negative.")
    async with ctx.db.transaction(write=True) as s:
        gid = await _require_admin(s, actor)
        repos = Repositories(s)
        for unit, value in (("images", images), ("gpu_seconds", gpu_seconds)):
            if value is None:
                await repos.quotas.delete_rule(gid, scope, target_id, unit, period)
            else:
                await repos.quotas.set_rule(
                    gid, scope, target_id, unit, period, value, updated_by=actor.user_id
                )
        await repos.audit.add(
            gid,
            actor.user_id,
            "quota.set",
            f"{scope}:{target_id or 0}",
            {"images": images, "gpu_seconds": gpu_seconds, "period": period},
        )


async def set_limit(ctx: Context, actor: Actor, name: str, value: int) -> None:
    if name not in SETTABLE_LIMITS:
        raise UserError("invalid", f"Unknown limit {name!r}; choose one of: {', '.join(SETTABLE_LIMITS)}.")
    ceiling = getattr(ctx.settings.limits, name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ceiling:
        raise UserError(
            "invalid", f"{name} must be a whole number from 1 to {ceiling} (the bot operator's maximum)."
        )
    await _update(ctx, actor, "limit.set", name, **{name: value})


async def set_default_model(ctx: Context, actor: Actor, model: str) -> None:
    names = ctx.catalog.models()
    if names and model not in names:
        raise UserError("model", f"I do not know the model {model!r}. Pick one from the list.")
    await _update(ctx, actor, "model.default", model, default_model=model)


async def set_detailer_default(ctx: Context, actor: Actor, on: bool) -> None:
    """/imagine's detailer when the option is left out, for this guild (the model must be installed)."""
    if on:
        from core.engine.postprocess.files import PostprocessError
        from core.engine.postprocess.names import check_detector

        try:
            check_detector(ctx.settings.postprocess, ctx.settings.postprocess.detailer_model)
        except PostprocessError as exc:
            raise UserError("postprocess", f"The detailer is not available here: {exc}.") from None
    await _update(ctx, actor, "detailer.default", "on" if on else "off", detailer_default=on or None)


async def set_reroll_policy(ctx: Context, actor: Actor, policy_name: str) -> None:
    if policy_name not in ("everyone", "owner"):
        raise UserError("invalid", "The reroll policy must be 'everyone' or 'owner'.")
    await _update(ctx, actor, "reroll.policy", policy_name, reroll_policy=policy_name)


async def set_guides(ctx: Context, actor: Actor, allowed: bool) -> None:
    """Turn control and reference images (ControlNet, IP-Adapter) on or off in the actor's guild."""
    await _update(ctx, actor, "guides", "on" if allowed else "off", allow_guides=bool(allowed))


async def set_moderation(
    ctx: Context,
    actor: Actor,
    *,
    policy_name: str | None = None,
    threshold: float | None = None,
    age_restricted: str | None = None,
) -> ModerationView:
    """The guild's image moderation: the policy (off | spoiler | block), the score at which an image is
    flagged, and what its age-restricted channels do (allow | spoiler | same). What is left out stays;
    nothing given just shows the settings."""
    current = await moderation_settings(ctx, actor)
    try:  # every value checked together, so a bad one changes nothing
        parse_guild_policy(
            policy_name or current.policy,
            current.threshold if threshold is None else threshold,
            age_restricted or current.age_restricted,
        )
    except ValueError as exc:
        raise UserError("invalid", f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from None
    changes = {
        name: value
        for name, value in (
            ("moderation_policy", policy_name),
            ("moderation_threshold", threshold),
            ("age_restricted_policy", age_restricted),
        )
        if value is not None
    }
    if changes:
        await _update(ctx, actor, "moderation.set", "", **changes)
    return await moderation_settings(ctx, actor)


async def moderation_settings(ctx: Context, actor: Actor) -> ModerationView:
    async with ctx.db.session() as s:
        await _require_admin(s, actor)
        rules = moderation_of(await guild_of(s, actor), ctx.moderation.default)
    return ModerationView(
        policy=str(rules.policy),
        threshold=rules.threshold,
        age_restricted=str(rules.age_restricted),
        classifier=bool(ctx.settings.moderation.classifier),
        dm_policy=str(ctx.moderation.dm_policy),
    )


async def job(ctx: Context, actor: Actor, job_id: int) -> JobView:
    """Any job of the admin's guild, as stored: its images' scores and moderation decisions included."""
    async with ctx.db.session() as s:
        gid = await _require_admin(s, actor)
        found = await Repositories(s).jobs.get(job_id)
        if found is None or found.guild_id != gid:
            raise UserError("not_found", f"There is no job {job_id} on this server.")
        return await view_of(s, found)


async def _update(ctx: Context, actor: Actor, action: str, target: str, **changes: Any) -> None:
    async with ctx.db.transaction(write=True) as s:
        gid = await _require_admin(s, actor)
        repos = Repositories(s)
        try:
            before = await repos.guilds.update(gid, **changes)
        except ValueError as exc:
            raise UserError("invalid", f"{exc}.") from None
        await repos.audit.add(gid, actor.user_id, action, target, {"before": before, "after": changes})


async def banned_words(
    ctx: Context, actor: Actor, *, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> list[str]:
    async with ctx.db.transaction(write=True) as s:
        gid = await _require_admin(s, actor)
        repos = Repositories(s)
        try:
            words = list((await repos.guilds.get_or_create(gid)).banned_words)
            if add:
                words = await repos.guilds.add_banned_words(gid, add)
            if remove:
                words = await repos.guilds.remove_banned_words(gid, remove)
        except ValueError as exc:
            raise UserError("invalid", f"{exc}.") from None
        if add or remove:
            await repos.audit.add(
                gid, actor.user_id, "banned_words", "", {"add": list(add), "remove": list(remove)}
            )
        return words


async def set_channels(ctx: Context, actor: Actor, channel_ids: Sequence[int]) -> None:
    async with ctx.db.transaction(write=True) as s:
        gid = await _require_admin(s, actor)
        repos = Repositories(s)
        try:
            ids = await repos.guilds.set_channels(gid, channel_ids)
        except ValueError as exc:
            raise UserError("invalid", f"{exc}.") from None
        await repos.audit.add(gid, actor.user_id, "channels.set", "", {"channels": ids})


async def admin_roles(ctx: Context, actor: Actor, role_id: int, *, add: bool) -> None:
    async with ctx.db.transaction(write=True) as s:
        gid = await _require_admin(s, actor)
        repos = Repositories(s)
        try:
            if add:
                await repos.guilds.add_admin_role(gid, role_id)
            else:
                await repos.guilds.remove_admin_role(gid, role_id)
        except ValueError as exc:
            raise UserError("invalid", f"{exc}.") from None
        await repos.audit.add(
            gid, actor.user_id, "admin_role.add" if add else "admin_role.remove", str(role_id)
        )


async def stats(ctx: Context, actor: Actor) -> dict[str, int | float]:
    async with ctx.db.session() as s:
        gid = await _require_admin(s, actor)
        repos = Repositories(s)
        out: dict[str, int | float] = dict(await repos.jobs.stats(guild_id=gid))
        names = {"post": "images_posted", "spoiler": "images_spoilered", "block": "images_blocked"}
        for action, count in (await repos.jobs.moderation_counts(guild_id=gid)).items():
            out[names.get(action, f"images_{action}")] = count
    out["queued_all_guilds"] = await ctx.queue.queued()
    return out
