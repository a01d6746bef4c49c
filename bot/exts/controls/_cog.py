"""What a control does: one call to core (a new job, or one image to post on its own), then the new job's
status message, a reply to the result. The Remix form is handled from its ``custom_id`` and values in
``on_interaction`` (not by the Modal object that opened it), so a form opened before a restart still
works when it is sent after."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import discord
from discord.ext import commands

from bot import render
from bot.actors import actor_from_interaction
from bot.app import ChantBot
from bot.errors import report_error
from bot.exts.controls._buttons import ACTIONS, single_view
from bot.status import send_queueing, submitted
from core.services import Actor, Receipt, RemixForm, UserError

log = logging.getLogger(__name__)

TEXT_INPUT_LIMIT = 4000  # Discord's most characters in a form's text field
REMIX_ID = re.compile(r"chant:remix:(?P<job>\d{1,20}):(?P<index>\d{1,2})")
VARY = {"vsub": "subtle", "vstr": "strong", "v": "strong"}
ZOOM = {"z15": 1.5, "z2": 2.0}
PAN = {"pl": "left", "pr": "right", "pu": "up", "pd": "down"}
UPSCALE = {"up2": 2.0, "up4": 4.0}


class RemixModal(discord.ui.Modal):
    """The Remix form, prefilled with the image's prompt (as typed), negative prompt and seed."""

    def __init__(self, job_id: int, index: int, form: RemixForm) -> None:
        super().__init__(
            title=f"Remix job #{job_id}"[:45], custom_id=f"chant:remix:{job_id}:{index}", timeout=900
        )
        self.add_item(
            discord.ui.TextInput(
                label="Prompt", style=discord.TextStyle.paragraph, custom_id="prompt", default=form.prompt,
                max_length=TEXT_INPUT_LIMIT,
            )
        )  # fmt: skip
        self.add_item(
            discord.ui.TextInput(
                label="Negative prompt", style=discord.TextStyle.paragraph, custom_id="negative",
                default=form.negative or None, required=False, max_length=TEXT_INPUT_LIMIT,
            )
        )  # fmt: skip
        self.add_item(
            discord.ui.TextInput(
                label="Seed", custom_id="seed", default=str(form.seed), required=False, max_length=20,
                placeholder="empty or -1: a new random seed",
            )
        )  # fmt: skip

    async def on_submit(self, interaction: discord.Interaction) -> None:
        """Nothing here: :meth:`ControlsCog.on_interaction` answers every Remix form (see the module)."""


async def run_control(
    interaction: discord.Interaction[ChantBot], job_id: int, index: int, action: str
) -> None:
    """A button was clicked: acknowledge (silently: the answer is the new job's status message, or a
    private message for a refusal), ask core, post."""
    bot = interaction.client
    try:
        actor = actor_from_interaction(interaction)
        if action == "rmx":  # a form is the first answer: no defer
            await open_remix(interaction, actor, job_id, index)
            return
        await interaction.response.defer()
        bot.delivery.remember_upload_limit(interaction.guild_id, interaction.filesize_limit)
        service = bot.service
        if action == "u":
            await post_pick(interaction, actor, job_id, index)
            return
        if action == "rr":
            submit = partial(service.reroll_job, actor, job_id)
        elif action in VARY:
            submit = partial(service.vary, actor, job_id, index, VARY[action])
        elif action in ZOOM:
            submit = partial(service.zoom_out, actor, job_id, index, ZOOM[action])
        elif action in PAN:
            submit = partial(service.pan, actor, job_id, index, PAN[action])
        elif action in UPSCALE:
            submit = partial(service.upscale, actor, job_id=job_id, index=index, scale=UPSCALE[action])
        else:
            raise UserError("invalid", "This button is from a newer chant; it does nothing here.")
        await submit_with_status(interaction, actor, _what(action, index), submit)
    except Exception as exc:  # buttons bypass the command tree's error handler
        await report_error(interaction, exc)


async def open_remix(
    interaction: discord.Interaction[ChantBot], actor: Actor, job_id: int, index: int
) -> None:
    form = await interaction.client.service.remix_form(actor, job_id, index)
    if len(form.prompt) > TEXT_INPUT_LIMIT or len(form.negative) > TEXT_INPUT_LIMIT:
        raise UserError(
            "invalid",
            f"This prompt is too long to edit in a form (Discord allows {TEXT_INPUT_LIMIT} characters); "
            "use /imagine with the seed instead.",
        )
    await interaction.response.send_modal(RemixModal(job_id, index, form))


async def post_pick(
    interaction: discord.Interaction[ChantBot], actor: Actor, job_id: int, index: int
) -> None:
    """U1–U4: the image alone, where the button was clicked, as a reply, with its own controls."""
    bot = interaction.client
    view, image = await bot.service.pick(actor, job_id, index)
    here = dataclasses.replace(
        view,
        channel_id=interaction.channel_id or view.channel_id,
        guild_id=interaction.guild_id,
        seeds=(image.seed,),
    )
    try:
        await bot.delivery.post_images(
            here,
            (image,),
            reply_to=interaction.message.id if interaction.message else None,
            note=f"image {index + 1} of job #{job_id}",
            view=single_view(job_id, index),
        )
    except discord.Forbidden:  # the channel is closed to the bot: privately, moderated as here (as /show)
        await bot.delivery.send_privately(
            dataclasses.replace(here, user_id=interaction.user.id),
            (image,),
            f"I could not post in this channel (I am missing a permission here: Send Messages or Attach "
            f"Files), so here is image {index + 1} of job #{job_id} just for you.",
            interaction,
        )


async def submit_with_status(
    interaction: discord.Interaction[ChantBot],
    actor: Actor,
    what: str,
    submit: Callable[..., Awaitable[Receipt]],
) -> None:
    """The new job's status message first, replying to the result the control was under; then
    ``submit(status_message_id=...)``, which stores its id with the job in the submit's transaction (as
    /imagine's and 🔁's are), so a bot killed in between still finishes it after a restart. A refused
    submit deletes it again (the refusal is told privately)."""
    bot = interaction.client
    reply_to = interaction.message.id if interaction.message is not None else None
    status = await send_queueing(
        bot,
        interaction.channel_id or 0,
        interaction.guild_id,
        reply_to,
        f"<@{actor.user_id}> {what} queueing…",
    )
    receipt = await submitted(status, submit(status_message_id=status.id))
    await bot.delivery.until_done(post_status(interaction, actor, receipt, status, what, reply_to))


async def post_status(
    interaction: discord.Interaction[ChantBot],
    actor: Actor,
    receipt: Receipt,
    status: discord.Message,
    what: str,
    reply_to: int | None,
) -> None:
    """The status message's queue position; tracked, so its progress shows and its result (or a
    private notice) follows."""
    bot = interaction.client
    tracked = bot.delivery.track(
        receipt.job_id,
        interaction.channel_id or 0,
        interaction.guild_id,
        status.id,
        reply_to=reply_to,
        interaction=interaction,
    )
    text = f"<@{actor.user_id}> {what} " + render.queued_text(
        receipt.position, receipt.eta_s, job_id=receipt.job_id
    )
    await bot.delivery.first_status(tracked, lambda: status.edit(content=text))


def _what(action: str, index: int) -> str:
    spec = ACTIONS[action]
    name = " ".join(p for p in (spec.emoji, spec.label if action not in ("u", "v") else "Vary (Strong)") if p)
    return f"{name} (image {index + 1})" if action != "rr" else name


def modal_values(data: Any) -> dict[str, str]:
    """A submitted form's values by ``custom_id`` (text inputs in action rows, or in labels)."""
    out: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("custom_id"), str) and isinstance(node.get("value"), str):
                out[node["custom_id"]] = node["value"]
            for key in ("components", "component"):
                walk(node.get(key))
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(data.get("components") if isinstance(data, dict) else None)
    return out


def parse_seed(text: str) -> int | None:
    text = text.strip()
    if not text or text == "-1":
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(
            "seed", f"The seed must be a whole number (or -1 / empty for random), not {text[:30]!r}."
        ) from None


class ControlsCog(commands.Cog):
    def __init__(self, bot: ChantBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[ChantBot]) -> None:
        if interaction.type is not discord.InteractionType.modal_submit or not isinstance(
            interaction.data, dict
        ):
            return
        match = REMIX_ID.fullmatch(str(interaction.data.get("custom_id", "")))
        if match is None:
            return
        try:
            await interaction.response.defer()
            values = modal_values(interaction.data)
            actor = actor_from_interaction(interaction)
            job_id, index = int(match["job"]), int(match["index"])
            submit = partial(
                self.bot.service.remix,
                actor,
                job_id,
                index,
                prompt=values.get("prompt", ""),
                negative=values.get("negative", ""),
                seed=parse_seed(values.get("seed", "")),
            )
            await submit_with_status(interaction, actor, f"🖌️ Remix (image {index + 1})", submit)
        except Exception as exc:
            await report_error(interaction, exc)
