"""Who is asking: :class:`core.services.Actor` from an interaction or a raw reaction event, with
whether the channel is age-restricted (moderation: Discord's ``nsfw`` flag; a thread has its parent's)."""

from __future__ import annotations

import discord

from core.services import Actor


def _role_ids(member: discord.Member) -> tuple[int, ...]:
    # The raw ids from the payload: Member.roles drops roles that are not in the guild cache.
    return tuple(int(r) for r in getattr(member, "_roles", ()) if int(r) != member.guild.id)


def age_restricted(channel: object) -> bool | None:
    """Whether ``channel`` is age-restricted: a guild channel's nsfw flag, a thread's parent's (None when
    the parent is not known), False in DMs; None for a channel the bot could not resolve."""
    if isinstance(channel, discord.Thread):
        parent = channel.parent
        return parent.is_nsfw() if parent is not None else None
    if isinstance(channel, discord.DMChannel | discord.GroupChannel):
        return False
    if isinstance(
        channel,
        discord.TextChannel | discord.VoiceChannel | discord.StageChannel | discord.ForumChannel,
    ):
        return channel.is_nsfw()
    return None


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
        # The interaction carries its channel (the cached one when the bot has it, so a thread finds its
        # parent); in DMs nothing is age-restricted.
        age_restricted=False if interaction.guild_id is None else age_restricted(interaction.channel),
    )


def actor_from_reaction(
    payload: discord.RawReactionActionEvent, client: discord.Client | None = None
) -> Actor:
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
        age_restricted=_reaction_channel_age_restricted(payload, client),
    )


def _reaction_channel_age_restricted(
    payload: discord.RawReactionActionEvent, client: discord.Client | None
) -> bool | None:
    """A reaction event carries no channel: look it up in the cache (None when it is not there)."""
    if payload.guild_id is None:
        return False
    if client is None:
        return None
    guild = client.get_guild(payload.guild_id)
    channel = guild.get_channel_or_thread(payload.channel_id) if guild is not None else None
    return age_restricted(channel) if channel is not None else None
