"""/upscale: an attached image or a job's image, ×2 or ×4 (within the server's pixel limit), by an
upscaler model (autocomplete: the server's), optionally with a detail pass. A job like /imagine's: the
status message first, then the result as its own post."""

from __future__ import annotations

from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.actors import actor_from_interaction
from bot.app import ChantBot
from bot.exts.imagine._cog import refuse_dm_if_configured
from bot.options import JobId, Strength, _choices, parse_size, read_attachment
from core.services import Receipt

Scale = Literal["2", "4"]


class UpscalerTransformer(app_commands.Transformer):
    """The upscale jobs' upscalers: the installed models by A1111's names, then Lanczos and Nearest."""

    async def transform(self, interaction: discord.Interaction, value: Any) -> str:
        return str(value)  # core checks the name and lists the ones this server has

    async def autocomplete(
        self, interaction: discord.Interaction[ChantBot], value: Any
    ) -> list[app_commands.Choice[str]]:
        return _choices(interaction.client.service.upscaler_names(), str(value))


class UpscaleCog(commands.Cog):
    def __init__(self, bot: ChantBot) -> None:
        self.bot = bot
        self.service = bot.service
        self.delivery = bot.delivery

    @app_commands.command(name="upscale", description="Upscale an image ×2 or ×4 with an upscaler model")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.describe(
        image="the image to upscale (PNG, JPEG or WebP)",
        job="instead of an image: a job id (see /history)",
        index="which image of that job (default 1)",
        scale="how much larger (default 2; within this server's pixel limit)",
        upscaler="upscaler model (default: the server's); Lanczos needs none",
        detail="detail pass strength 0-1: repaint the upscaled tiles with the job's prompt (default 0: none)",
        size="instead of scale: the output's width x height, e.g. 2048x2048 (within this server's limit)",
    )
    async def upscale(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment | None = None,
        job: JobId | None = None,
        index: app_commands.Range[int, 1, 16] | None = None,
        scale: Scale | None = None,
        upscaler: app_commands.Transform[str, UpscalerTransformer] | None = None,
        detail: Strength | None = None,
        size: str | None = None,
    ) -> None:
        await interaction.response.defer(thinking=True)
        interaction.extras["public_defer"] = True
        self.delivery.remember_upload_limit(interaction.guild_id, interaction.filesize_limit)
        refuse_dm_if_configured(self.bot, interaction.guild_id)
        data = await read_attachment(image, "image to upscale") if image is not None else None
        status = await interaction.original_response()
        receipt = await self.service.upscale(
            actor_from_interaction(interaction),
            job_id=job,
            index=(index or 1) - 1,
            image=data,
            scale=float(scale) if scale else None,
            upscaler=upscaler,
            detail=detail,
            size=parse_size(size) if size else None,
            status_message_id=status.id,
        )
        await self.delivery.until_done(self._post_queued(interaction, receipt, status.id))

    async def _post_queued(self, interaction: discord.Interaction, receipt: Receipt, status_id: int) -> None:
        tracked = self.delivery.track(
            receipt.job_id,
            interaction.channel_id or 0,
            interaction.guild_id,
            status_id,
            prompt="upscale",
            interaction=interaction,
        )
        text = render.queued_text(receipt.position, receipt.eta_s, job_id=receipt.job_id)
        await self.delivery.first_status(tracked, lambda: interaction.edit_original_response(content=text))


async def setup(bot: ChantBot) -> None:
    await bot.add_cog(UpscaleCog(bot))
