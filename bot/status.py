"""A new job's status message, posted before the job exists: its id goes in with the job (the submit's
transaction stores it), so a bot killed in between still finishes it after a restart. Used by the result
controls, 🔁 🔀 ⬆️ and /describe's buttons."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable

import discord

from core.services import Receipt, UserError


async def send_queueing(
    bot: discord.Client, channel_id: int, guild_id: int | None, reply_to: int | None, text: str
) -> discord.Message:
    """``text`` posted in the channel (a reply to ``reply_to`` when given); no permission to post there is
    the user's error, told privately."""
    channel = bot.get_partial_messageable(channel_id, guild_id=guild_id)
    reference = (
        discord.MessageReference(message_id=reply_to, channel_id=channel_id, fail_if_not_exists=False)
        if reply_to
        else None
    )
    try:
        return await channel.send(text, reference=reference, allowed_mentions=discord.AllowedMentions.none())
    except discord.Forbidden:
        raise UserError(
            "permission",
            f"I cannot post in <#{channel_id}>: I am missing a permission there (Send Messages). "
            "A server admin can give it to me; until then /imagine works elsewhere.",
        ) from None


async def submitted(status: discord.Message, submit: Awaitable[Receipt]) -> Receipt:
    """The submit's receipt; a refused (or cut short) submit deletes the status again: nothing queued."""
    try:
        return await submit
    except BaseException:
        with contextlib.suppress(discord.HTTPException):
            await status.delete()
        raise
