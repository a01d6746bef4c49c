"""/describe: an attached image (or a job's) back into prompts — a booru tagger's tags, up to four prompts
from long to short — with a button under each that runs /imagine with it. The buttons' state is the
message itself (the prompt on its numbered line), so they work after a restart too."""

from __future__ import annotations

import re
from functools import partial

import discord
from discord import app_commands
from discord.ext import commands

from bot.actors import actor_from_interaction
from bot.app import ChantBot
from bot.errors import report_error
from bot.exts.controls._cog import submit_with_status
from bot.options import JobId, read_attachment
from bot.render import truncate
from core.services import Description, ImagineOptions, UserError

PROMPT_CHARS = 450  # four of them and the header stay under Discord's 2000 characters
LINE = re.compile(r"^`(?P<n>[1-4])` (?P<prompt>.+)$", re.MULTILINE)


def describe_text(found: Description) -> str:
    lines = [f"**Describe** · `{found.tagger}` — a button below runs /imagine with that prompt"]
    lines += [
        f"`{n}` {truncate(p.replace('`', ''), PROMPT_CHARS)}" for n, p in enumerate(found.prompts, start=1)
    ]
    return "\n".join(lines)


def prompt_on(content: str, n: int) -> str | None:
    """Prompt ``n`` (1-based) as /describe's message shows it."""
    return next((m["prompt"] for m in LINE.finditer(content) if int(m["n"]) == n), None)


class ImagineDescribed(discord.ui.DynamicItem[discord.ui.Button], template=r"chant:describe:(?P<n>[1-4])"):
    def __init__(self, n: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"Imagine {n}",
                emoji="🎨",
                style=discord.ButtonStyle.secondary,
                custom_id=f"chant:describe:{n}",
            )
        )
        self.n = n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /
    ) -> ImagineDescribed:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction[ChantBot]) -> None:
        try:
            prompt = prompt_on(interaction.message.content if interaction.message else "", self.n)
            if not prompt:
                raise UserError("not_found", "I cannot read that prompt any more; run /describe again.")
            await interaction.response.defer()
            actor = actor_from_interaction(interaction)
            submit = partial(interaction.client.service.submit_imagine, actor, ImagineOptions(prompt=prompt))
            await submit_with_status(interaction, actor, f"🎨 prompt {self.n}", submit)
        except Exception as exc:  # buttons bypass the command tree's error handler
            await report_error(interaction, exc)


def describe_view(found: Description) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for n in range(1, len(found.prompts) + 1):
        view.add_item(ImagineDescribed(n))
    return view


class DescribeCog(commands.Cog):
    def __init__(self, bot: ChantBot) -> None:
        self.bot = bot

    @app_commands.command(name="describe", description="Turn an image into prompts (booru tags), to /imagine")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.describe(
        image="the image to describe (PNG, JPEG or WebP)",
        job="instead of an image: a job id (see /history)",
        index="which image of that job (default 1)",
    )
    async def describe(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment | None = None,
        job: JobId | None = None,
        index: app_commands.Range[int, 1, 16] | None = None,
    ) -> None:
        await interaction.response.defer(thinking=True)
        interaction.extras["public_defer"] = True
        data = await read_attachment(image, "image to describe") if image is not None else None
        found = await self.bot.service.describe(
            actor_from_interaction(interaction), image=data, job_id=job, index=(index or 1) - 1
        )
        await interaction.edit_original_response(content=describe_text(found), view=describe_view(found))


async def setup(bot: ChantBot) -> None:
    bot.add_dynamic_items(ImagineDescribed)
    await bot.add_cog(DescribeCog(bot))
