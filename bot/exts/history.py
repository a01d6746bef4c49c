"""/history (paged, buttons survive restarts), /show, /queue and /cancel."""

from __future__ import annotations

import dataclasses
import re

import discord
from discord import app_commands
from discord.ext import commands

from bot.actors import actor_from_interaction
from bot.app import ChantBot
from bot.errors import report_error
from bot.options import JobId
from bot.render import escape_markdown, truncate
from core.services import JobView, UserError

PER_PAGE = 10


def job_line(job: JobView) -> str:
    seed = job.seeds[0] if job.seeds else job.request.seed
    prompt = truncate(escape_markdown(" ".join(job.request.prompt.split())), 80)
    when = f"<t:{int(job.created_at.timestamp())}:R>"
    # A reroll, variation or control names the job it came from.
    made = f" · {job.kind} of #{job.parent_id}" if job.parent_id is not None else ""
    return f"`#{job.id}` {job.state}{made} · seed {seed} · {when}\n  {prompt}"


def history_text(items: list[JobView], total: int, page: int) -> str:
    if not items:
        return "No jobs yet. Try `/imagine`." if page == 0 else f"Page {page + 1} is empty."
    pages = max(1, -(-total // PER_PAGE))
    body = "\n".join(job_line(j) for j in items)
    return truncate(f"**Your jobs** — page {page + 1}/{pages} ({total} in all)\n{body}", 2000)


class HistoryPage(
    discord.ui.DynamicItem[discord.ui.Button], template=r"chant:history:(?P<user>\d+):(?P<page>\d+)"
):
    """A page button whose state lives in its custom_id, so it keeps working after a restart."""

    def __init__(self, user_id: int, page: int, label: str, disabled: bool = False) -> None:
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                disabled=disabled,
                custom_id=f"chant:history:{user_id}:{page}",
            )
        )
        self.user_id = user_id
        self.page = page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /
    ) -> HistoryPage:
        return cls(int(match["user"]), int(match["page"]), item.label or "")

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.user_id:
            await interaction.response.send_message(
                "These are someone else's jobs; use `/history`.", ephemeral=True
            )
            return False
        return True

    async def callback(self, interaction: discord.Interaction[ChantBot]) -> None:
        service = interaction.client.service
        try:
            items, total = await service.history(actor_from_interaction(interaction), self.page, PER_PAGE)
        except Exception as exc:  # buttons bypass the command tree's error handler
            await report_error(interaction, exc)
            return
        await interaction.response.edit_message(
            content=history_text(items, total, self.page), view=pager(self.user_id, self.page, total)
        )


def pager(user_id: int, page: int, total: int) -> discord.ui.View | None:
    pages = -(-total // PER_PAGE)
    if pages <= 1:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(HistoryPage(user_id, max(page - 1, 0), "◀ newer", disabled=page == 0))
    view.add_item(HistoryPage(user_id, min(page + 1, pages - 1), "older ▶", disabled=page >= pages - 1))
    return view


class HistoryCog(commands.Cog):
    def __init__(self, bot: ChantBot) -> None:
        self.bot = bot
        self.service = bot.service
        self.delivery = bot.delivery

    @app_commands.command(name="history", description="Your recent jobs")
    @app_commands.describe(page="page number (1 = newest)")
    async def history(
        self, interaction: discord.Interaction, page: app_commands.Range[int, 1, 10_000] = 1
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        items, total = await self.service.history(actor_from_interaction(interaction), page - 1, PER_PAGE)
        view = pager(interaction.user.id, page - 1, total)
        kwargs = {"view": view} if view is not None else {}
        await interaction.followup.send(history_text(items, total, page - 1), ephemeral=True, **kwargs)

    @app_commands.command(name="show", description="Post one of your jobs again (🔁 works on it)")
    async def show(self, interaction: discord.Interaction, job: JobId) -> None:
        await interaction.response.defer(ephemeral=True)
        self.delivery.remember_upload_limit(interaction.guild_id, interaction.filesize_limit)
        view = await self.service.show(actor_from_interaction(interaction), job)
        if view.state != "done":
            raise UserError("not_done", f"Job #{job} is {view.state}; only finished jobs can be shown.")
        images = await self.service.job_images(view.id)
        # Post where the command was used (not where the job originally ran); core decided each image's
        # moderation for this channel (a job blocked here entirely was refused).
        here = _in_channel(view, interaction)
        try:
            await self.delivery.post_images(here, images, note="re-posted with /show")
        except discord.Forbidden:  # the channel is closed to the bot: the images come privately,
            # moderated as here (blocked ones left out and named, spoilered ones kept spoilered)
            await self.delivery.send_privately(
                dataclasses.replace(here, user_id=interaction.user.id),  # to whoever asked
                images,
                f"I could not post in this channel (I am missing a permission here: Send Messages or Attach "
                f"Files), so here is job #{job} just for you.",
                interaction,
            )
            return
        withheld = sum(m.blocked for m in view.moderation)
        tail = (
            f" ({withheld} of its images not here: this server's moderation blocks them)" if withheld else ""
        )
        await interaction.followup.send(f"Posted job #{job}{tail}.", ephemeral=True)

    @app_commands.command(name="queue", description="Your queued and running jobs")
    async def queue(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        entries = await self.service.my_queue(actor_from_interaction(interaction))
        if not entries:
            await interaction.followup.send("You have no jobs in the queue.", ephemeral=True)
            return
        lines = [
            f"`#{j.id}` "
            + ("running" if j.state == "running" else f"#{pos} in line")
            + " · "
            + truncate(escape_markdown(" ".join(j.request.prompt.split())), 80)
            for j, pos in entries
        ]
        await interaction.followup.send(truncate("\n".join(lines), 2000), ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel one of your jobs (admins: anyone's)")
    async def cancel(self, interaction: discord.Interaction, job: JobId) -> None:
        await interaction.response.defer(ephemeral=True)
        view = await self.service.cancel(actor_from_interaction(interaction), job)
        await interaction.followup.send(f"Job #{view.id} is being cancelled.", ephemeral=True)


def _in_channel(job: JobView, interaction: discord.Interaction) -> JobView:
    return dataclasses.replace(
        job, channel_id=interaction.channel_id or job.channel_id, guild_id=interaction.guild_id
    )


async def setup(bot: ChantBot) -> None:
    bot.add_dynamic_items(HistoryPage)
    await bot.add_cog(HistoryCog(bot))
