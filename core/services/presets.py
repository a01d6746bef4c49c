"""Presets: a user's own (/preset) and a server's (/admin preset-…), and the one an /imagine names."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.services import policy, requests
from core.services.context import Context, guild_of
from core.services.types import Actor, ImagineOptions, PresetView, UserError
from core.storage.repositories import PresetLimitReached, Repositories
from core.types import GenerationRequest


async def params_for(s: AsyncSession, actor: Actor, name: str) -> dict[str, Any]:
    """The options of the preset an /imagine names: the user's own, else the server's."""
    repos = Repositories(s)
    try:
        preset = await repos.presets.get("user", actor.user_id, name)
        if preset is None and actor.guild_id is not None:
            preset = await repos.presets.get("guild", actor.guild_id, name)
    except ValueError as exc:
        raise UserError("preset", f"That is not a valid preset name: {exc}.") from None
    if preset is None:
        raise UserError("not_found", f"There is no preset called {name!r}. See /preset list.")
    return dict(preset.params)


async def save_preset(
    ctx: Context,
    actor: Actor,
    name: str,
    options: ImagineOptions | None,
    *,
    guild: bool = False,
    from_last_job: bool = False,
) -> None:
    if from_last_job:
        async with ctx.db.session() as s:
            last = await Repositories(s).jobs.last_for_user(actor.user_id)
        if last is None:
            raise UserError("not_found", "You have no jobs yet to save a preset from.")
        params = requests.preset_of(GenerationRequest.from_dict(last.params))
    elif options is not None:
        params = {f: getattr(options, f) for f in requests.PRESET_FIELDS}
    else:
        raise UserError("invalid", "Give the preset some options, or save it from your last job.")
    params = {k: v for k, v in params.items() if v is not None and v != ""}
    if len(params) == 0:
        raise UserError("invalid", "A preset needs at least one option.")
    async with ctx.db.transaction(write=True) as s:
        repos = Repositories(s)
        owner_kind, owner_id = await _owner(s, actor, guild)
        try:
            await repos.presets.save(owner_kind, owner_id, name, params, created_by=actor.user_id)
        except PresetLimitReached as exc:
            raise UserError("preset.limit", f"{exc}.") from None
        except ValueError as exc:
            raise UserError("preset", f"I cannot save that preset: {exc}.") from None
        if guild:
            await repos.audit.add(actor.guild_id, actor.user_id, "preset.save", name, {"params": params})


async def delete_preset(ctx: Context, actor: Actor, name: str, *, guild: bool = False) -> None:
    async with ctx.db.transaction(write=True) as s:
        repos = Repositories(s)
        owner_kind, owner_id = await _owner(s, actor, guild)
        try:
            deleted = await repos.presets.delete(owner_kind, owner_id, name)
        except ValueError as exc:
            raise UserError("preset", f"That is not a valid preset name: {exc}.") from None
        if deleted is None:
            raise UserError("not_found", f"There is no {'server ' if guild else ''}preset called {name!r}.")
        if guild:
            await repos.audit.add(
                actor.guild_id, actor.user_id, "preset.delete", name, {"params": deleted.params}
            )


async def _owner(s: AsyncSession, actor: Actor, guild: bool) -> tuple[str, int]:
    """The user's own presets, or (admins only) the server's."""
    if not guild:
        return "user", actor.user_id
    policy.check_admin(actor, await guild_of(s, actor))
    assert actor.guild_id is not None  # check_admin refuses DMs
    return "guild", actor.guild_id


async def list_presets(ctx: Context, actor: Actor) -> list[PresetView]:
    async with ctx.db.session() as s:
        repos = Repositories(s)
        out = [
            PresetView(p.name, "user", requests.options_of(p.params))
            for p in await repos.presets.list("user", actor.user_id)
        ]
        if actor.guild_id is not None:
            out += [
                PresetView(p.name, "guild", requests.options_of(p.params))
                for p in await repos.presets.list("guild", actor.guild_id)
            ]
        return out


async def preset_names(ctx: Context, actor: Actor, prefix: str) -> list[str]:
    async with ctx.db.session() as s:
        repos = Repositories(s)
        try:
            names = await repos.presets.names("user", actor.user_id, prefix)
            if actor.guild_id is not None and len(names) < 25:
                names += await repos.presets.names("guild", actor.guild_id, prefix, limit=25 - len(names))
        except ValueError:
            return []
        return list(dict.fromkeys(names))[:25]
