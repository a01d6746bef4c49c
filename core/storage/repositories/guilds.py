"""Guild settings: limits, default model, reroll policy, fair-queue weight, banned words, channels,
admin roles, image moderation policy."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.moderation import AgeRestricted, GuildPolicy, Policy, check_threshold
from core.storage.models import Guild, utcnow
from core.storage.repositories._sql import insert
from core.storage.validation import (
    MAX_ADMIN_ROLES,
    MAX_BANNED_WORDS,
    MAX_CHANNELS,
    MAX_WORD_CHARS,
    check_id,
    check_text,
)

GUILD_LIMIT_FIELDS = (
    "max_steps",
    "max_pixels",
    "max_images",
    "max_queued_per_user",
    "max_queued_per_guild",
    "max_and_parts",
    "max_prompt_chunks",
)
MODERATION_FIELDS = ("moderation_policy", "moderation_threshold", "age_restricted_policy")


def moderation_of(guild: Guild | None, default: GuildPolicy) -> GuildPolicy:
    """The guild's moderation policy: what its admins set, the operator's ``default`` for the rest."""
    if guild is None:
        return default
    return GuildPolicy(
        Policy(guild.moderation_policy) if guild.moderation_policy else default.policy,
        guild.moderation_threshold if guild.moderation_threshold is not None else default.threshold,
        AgeRestricted(guild.age_restricted_policy) if guild.age_restricted_policy else default.age_restricted,
    )


class GuildRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, guild_id: int) -> Guild | None:
        return await self.session.get(Guild, guild_id)

    async def get_or_create(self, guild_id: int) -> Guild:
        check_id(guild_id, "guild id")
        await self.session.execute(
            insert(self.session, Guild)
            .values(
                id=guild_id,
                reroll_policy="everyone",
                weight=1.0,
                banned_words=[],
                channel_ids=[],
                admin_role_ids=[],
                created_at=utcnow(),
                updated_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        guild = await self.session.get(Guild, guild_id, populate_existing=True)
        assert guild is not None
        return guild

    async def update(self, guild_id: int, **changes: Any) -> dict[str, Any]:
        """Set guild settings; returns the previous values of the changed fields (for the audit).

        Fields: the limits in :data:`GUILD_LIMIT_FIELDS` (positive int or None = config default),
        ``default_model`` (name or None), ``reroll_policy`` ("everyone" | "owner"), ``weight`` (> 0),
        :data:`MODERATION_FIELDS` (``core.moderation`` values, or None = the operator's default),
        ``detailer_default`` (bool or None = off).
        """
        guild = await self.get_or_create(guild_id)
        before: dict[str, Any] = {}
        for name, value in changes.items():
            if name in GUILD_LIMIT_FIELDS:
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ValueError(f"{name} must be a positive whole number, got {value!r}")
            elif name == "default_model":
                if value is not None:
                    check_text(value, "default model", max_chars=200, empty=False)
            elif name == "reroll_policy":
                if value not in ("everyone", "owner"):
                    raise ValueError(f"reroll policy must be 'everyone' or 'owner', got {value!r}")
            elif name == "weight":
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                    raise ValueError(f"weight must be a positive number, got {value!r}")
                value = float(value)
            elif name in MODERATION_FIELDS:
                value = _moderation_value(name, value)
            elif name == "detailer_default":
                if value is not None and not isinstance(value, bool):
                    raise ValueError(f"detailer default must be on, off or unset, got {value!r}")
            elif name == "allow_guides":
                if not isinstance(value, bool):
                    raise ValueError(f"allow_guides must be true or false, got {value!r}")
            else:
                raise ValueError(f"unknown guild setting {name!r}")
            before[name] = getattr(guild, name)
            setattr(guild, name, value)
        await self.session.flush()
        return before

    async def add_banned_words(self, guild_id: int, words: Iterable[str]) -> list[str]:
        guild = await self.get_or_create(guild_id)
        current = list(guild.banned_words)
        known = {w.casefold() for w in current}
        for word in words:
            check_text(word, "banned word", max_chars=MAX_WORD_CHARS, empty=False)
            word = word.strip()
            if word.casefold() not in known:
                current.append(word)
                known.add(word.casefold())
        if len(current) > MAX_BANNED_WORDS:
            raise ValueError(f"a guild can ban at most {MAX_BANNED_WORDS} words")
        guild.banned_words = current
        await self.session.flush()
        return current

    async def remove_banned_words(self, guild_id: int, words: Iterable[str]) -> list[str]:
        guild = await self.get_or_create(guild_id)
        drop = {w.strip().casefold() for w in words}
        guild.banned_words = [w for w in guild.banned_words if w.casefold() not in drop]
        await self.session.flush()
        return list(guild.banned_words)

    async def set_channels(self, guild_id: int, channel_ids: Iterable[int]) -> list[int]:
        """Channels where the bot answers; empty = every channel."""
        ids = list(dict.fromkeys(check_id(c, "channel id") for c in channel_ids))
        if len(ids) > MAX_CHANNELS:
            raise ValueError(f"at most {MAX_CHANNELS} channels can be listed")
        guild = await self.get_or_create(guild_id)
        guild.channel_ids = ids
        await self.session.flush()
        return ids

    async def add_admin_role(self, guild_id: int, role_id: int) -> list[int]:
        check_id(role_id, "role id")
        guild = await self.get_or_create(guild_id)
        if role_id not in guild.admin_role_ids:
            if len(guild.admin_role_ids) >= MAX_ADMIN_ROLES:
                raise ValueError(f"a guild can have at most {MAX_ADMIN_ROLES} admin roles")
            guild.admin_role_ids = [*guild.admin_role_ids, role_id]
        await self.session.flush()
        return list(guild.admin_role_ids)

    async def remove_admin_role(self, guild_id: int, role_id: int) -> list[int]:
        guild = await self.get_or_create(guild_id)
        guild.admin_role_ids = [r for r in guild.admin_role_ids if r != role_id]
        await self.session.flush()
        return list(guild.admin_role_ids)

    async def weights(self) -> dict[int, float]:
        """Fair-queue weights of the guilds whose operator weight is not the default 1.0."""
        rows = await self.session.execute(select(Guild.id, Guild.weight).where(Guild.weight != 1.0))
        return {gid: w for gid, w in rows if w and w > 0}


def _moderation_value(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name == "moderation_threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"the moderation threshold must be a number, got {value!r}")
        return check_threshold(float(value))
    choices = Policy if name == "moderation_policy" else AgeRestricted
    if value not in {str(c) for c in choices}:
        raise ValueError(f"{name.replace('_', ' ')} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return str(value)
