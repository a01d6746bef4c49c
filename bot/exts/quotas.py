"""/quota: the user's usage, limits and reset time."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.actors import actor_from_interaction
from bot.app import ChantBot
from core.services import QuotaView


def quota_text(q: QuotaView) -> str:
    images = (
        f"{q.used_images} / {q.limit_images}" if q.limit_images is not None else f"{q.used_images} (no limit)"
    )
    lines = [f"Images this {q.period}: **{images}**"]
    if q.limit_gpu_seconds is not None or q.used_gpu_seconds:
        limit = f" / {q.limit_gpu_seconds:g}" if q.limit_gpu_seconds is not None else ""
        lines.append(f"GPU seconds this {q.period}: **{q.used_gpu_seconds:.1f}{limit}**")
    if q.resets_at is not None:
        lines.append(f"Resets <t:{int(q.resets_at.timestamp())}:R>")
    lines.append(f"(rule: {q.source})")
    return "\n".join(lines)


class QuotaCog(commands.Cog):
    def __init__(self, bot: ChantBot) -> None:
        self.service = bot.service

    @app_commands.command(name="quota", description="Your usage, limits and when they reset")
    async def quota(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        q = await self.service.quota_status(actor_from_interaction(interaction))
        await interaction.followup.send(quota_text(q), ephemeral=True)


async def setup(bot: ChantBot) -> None:
    await bot.add_cog(QuotaCog(bot))
