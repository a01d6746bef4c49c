"""Turning failures into messages: a UserError is shown as it is (ephemeral); anything else is
logged with an error id and the user gets that id — never a traceback, never silence."""

from __future__ import annotations

import contextlib
import logging
import secrets

import discord
from discord import app_commands

from core.services import UserError

log = logging.getLogger(__name__)


def new_error_id() -> str:
    return secrets.token_hex(4)


def user_error_text(exc: UserError) -> str:
    text = str(exc)
    if exc.column is not None and "column" not in text.lower():
        text += f" (at column {exc.column})"
    if exc.retry_after_s:
        text += f" — try again in {int(exc.retry_after_s + 0.999)}s"
    return text[:2000]


def unexpected_text(error_id: str) -> str:
    return (
        f"Something went wrong on our side (error id `{error_id}`). An admin can look it up in the bot's log."
    )


async def reply_ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Answer ``interaction`` privately, whether or not it was already acknowledged."""
    try:
        if interaction.response.is_done():
            if interaction.extras.pop("public_defer", False):
                # A public "thinking…" placeholder would stay behind: remove it, answer privately.
                with contextlib.suppress(discord.HTTPException):
                    await interaction.delete_original_response()
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not send an ephemeral reply to interaction %s", interaction.id)


def unwrap(error: BaseException) -> BaseException:
    while (
        isinstance(error, app_commands.CommandInvokeError | app_commands.TransformerError) and error.__cause__
    ):
        error = error.__cause__
    if isinstance(error, app_commands.CommandInvokeError):
        return error.original
    return error


async def on_app_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """The command tree's error handler."""
    await report_error(interaction, error)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Any failure of an interaction (a command's, or a button's, which bypasses the tree) as a message."""
    original = unwrap(error)
    if isinstance(original, UserError):
        await reply_ephemeral(interaction, user_error_text(original))
        return
    if isinstance(original, app_commands.CheckFailure | app_commands.CommandOnCooldown):
        await reply_ephemeral(interaction, str(original) or "You can't use this command here.")
        return
    if isinstance(original, app_commands.TransformerError):
        await reply_ephemeral(interaction, f"`{original.value}` is not a valid value for this option.")
        return
    error_id = new_error_id()
    command = interaction.command.qualified_name if interaction.command else "?"
    log.error("error %s in /%s (interaction %s)", error_id, command, interaction.id, exc_info=original)
    await reply_ephemeral(interaction, unexpected_text(error_id))
