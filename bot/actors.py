"""Who is asking: :class:`core.services.Actor` from an interaction or a raw reaction event."""

from __future__ import annotations

import discord

from core.services import Actor


def _role_ids(member: discord.Member) -> tuple[int, ...]:
    # The raw ids from the payload: Member.roles drops roles that are not in the guild cache.
    return tuple(int(r) for r in getattr(member, "_roles", ()) if int(r) != member.guild.id)


def actor_from_interaction(interaction: discord.Interaction) -> Actor:
    user = interaction.user
    roles: tuple[int, ...] = ()
    manage_guild = False
    if isinstance(user, discord.Member):
        roles = _role_ids(user)
        manage_guild = bool(interaction.permissions.manage_guild)
    return Actor(
        user_id=user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id or 0,
        role_ids=roles,
        manage_guild=manage_guild,
        display_name=user.display_name,
    )


def actor_from_reaction(payload: discord.RawReactionActionEvent) -> Actor:
    member = payload.member
    roles: tuple[int, ...] = ()
    manage_guild = False
    name = ""
    if member is not None:
        roles = _role_ids(member)
        manage_guild = bool(member.guild_permissions.manage_guild)
        name = member.display_name
    return Actor(
        user_id=payload.user_id,
        guild_id=payload.guild_id,
        channel_id=payload.channel_id,
        role_ids=roles,
        manage_guild=manage_guild,
        display_name=name,
    )
