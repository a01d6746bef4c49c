"""/admin …: quotas, limits, default model, guild presets, banned words, channels, reroll policy,
admin roles, image moderation, stats and a job's details. Discord's default permission (Manage Guild) only hides the commands; every
call is checked again in core (``service.is_admin``), so opening the permissions grants nothing."""

from __future__ import annotations

import re
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.actors import actor_from_interaction
from bot.app import ChantBot
from bot.exts.presets import PresetName, describe_options
from bot.options import Cfg, ClipSkip, Count, JobId, Model, Sampler, Size, Steps, command_options
from bot.render import moderation_lines, truncate
from core.moderation import MAX_THRESHOLD, MIN_THRESHOLD
from core.services import Actor, ModerationView, UserError

_ID_RE = re.compile(r"\d{5,20}")


def parse_channel_ids(text: str) -> list[int]:
    """``<#123> 456`` → [123, 456]; ``all`` → [] (every channel)."""
    if text.strip().lower() in ("all", "*", "any"):
        return []
    ids = [int(m) for m in _ID_RE.findall(text)]
    if not ids:
        raise UserError(
            "channels", "Give channels as mentions or ids (e.g. `#art #bots`), or `all` for every channel."
        )
    return ids


def parse_words(text: str | None) -> list[str]:
    return [w.strip() for w in (text or "").split(",") if w.strip()]


@app_commands.default_permissions(manage_guild=True)
@app_commands.guild_only()
class AdminCog(commands.GroupCog, group_name="admin", group_description="Server settings for chant (admins)"):
    def __init__(self, bot: ChantBot) -> None:
        self.bot = bot
        self.service = bot.service
        super().__init__()

    async def _admin(self, interaction: discord.Interaction) -> Actor:
        await interaction.response.defer(ephemeral=True)
        actor = actor_from_interaction(interaction)
        if not await self.service.is_admin(actor):
            raise UserError(
                "permission", "Only server admins (Manage Server, or a chant admin role) can do this."
            )
        return actor

    async def _done(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.followup.send(truncate(text, 2000), ephemeral=True)

    @app_commands.command(
        name="quota", description="Set an image/GPU-time quota for the server, a role or a user"
    )
    async def quota(
        self,
        interaction: discord.Interaction,
        scope: Literal["guild", "role", "user"],
        period: Literal["hour", "day"],
        images: app_commands.Range[int, 0, 100_000] | None = None,
        gpu_seconds: app_commands.Range[float, 0, 10_000_000] | None = None,
        role: discord.Role | None = None,
        user: discord.User | None = None,
    ) -> None:
        actor = await self._admin(interaction)
        target = {"guild": None, "role": role.id if role else None, "user": user.id if user else None}[scope]
        if scope != "guild" and target is None:
            raise UserError("quota", f"scope {scope} needs the `{scope}` option.")
        await self.service.admin_set_quota(
            actor, scope=scope, target_id=target, images=images, gpu_seconds=gpu_seconds, period=period
        )
        await self._done(
            interaction, f"Quota set for {scope}: images={images}, gpu_seconds={gpu_seconds} per {period}."
        )

    @app_commands.command(name="limit", description="Set a server limit")
    async def limit(
        self,
        interaction: discord.Interaction,
        name: Literal[
            "max_steps", "max_pixels", "max_images", "max_queued_per_user", "max_and_parts", "max_prompt_chunks"
        ],
        value: app_commands.Range[int, 0, 100_000_000],
    ) -> None:
        actor = await self._admin(interaction)
        await self.service.admin_set_limit(actor, name, value)
        await self._done(interaction, f"{name} is now {value}.")

    @app_commands.command(name="model", description="Set the server's default model")
    async def model(self, interaction: discord.Interaction, name: Model) -> None:
        actor = await self._admin(interaction)
        await self.service.admin_set_default_model(actor, name)
        await self._done(interaction, f"Default model is now **{name}**.")

    @app_commands.command(name="preset-save", description="Save a server preset everyone can use")
    async def preset_save(
        self,
        interaction: discord.Interaction,
        name: PresetName,
        prompt: str | None = None,
        negative: str | None = None,
        size: Size | None = None,
        steps: Steps | None = None,
        cfg: Cfg | None = None,
        sampler: Sampler | None = None,
        count: Count | None = None,
        model: Model | None = None,
        clip_skip: ClipSkip | None = None,
    ) -> None:
        actor = await self._admin(interaction)
        options = command_options(
            prompt or "",
            size,
            negative=negative,
            steps=steps,
            cfg=cfg,
            sampler=sampler,
            count=count,
            model=model,
            clip_skip=clip_skip,
        )
        await self.service.save_preset(actor, name, options, guild=True)
        await self._done(interaction, f"Server preset **{name}** saved: {describe_options(options)}.")

    @app_commands.command(name="preset-delete", description="Delete a server preset")
    async def preset_delete(self, interaction: discord.Interaction, name: PresetName) -> None:
        actor = await self._admin(interaction)
        await self.service.delete_preset(actor, name, guild=True)
        await self._done(interaction, f"Server preset **{name}** deleted.")

    @app_commands.command(name="banned-words", description="Add or remove banned words (comma-separated)")
    async def banned_words(
        self, interaction: discord.Interaction, add: str | None = None, remove: str | None = None
    ) -> None:
        actor = await self._admin(interaction)
        words = await self.service.admin_banned_words(actor, add=parse_words(add), remove=parse_words(remove))
        await self._done(interaction, "Banned words: " + (", ".join(f"`{w}`" for w in words) or "(none)"))

    @app_commands.command(
        name="channels", description="Channels where chant answers (`all` for every channel)"
    )
    async def channels(self, interaction: discord.Interaction, channels: str) -> None:
        actor = await self._admin(interaction)
        ids = parse_channel_ids(channels)
        await self.service.admin_set_channels(actor, ids)
        await self._done(
            interaction, "chant now answers in " + (" ".join(f"<#{i}>" for i in ids) or "every channel")
        )

    @app_commands.command(name="detailer", description="Repaint faces (the detailer) in /imagine by default")
    async def detailer(self, interaction: discord.Interaction, default: Literal["on", "off"]) -> None:
        actor = await self._admin(interaction)
        await self.service.admin_set_detailer_default(actor, default == "on")
        await self._done(interaction, f"The detailer is {default} by default (the detailer option still decides).")

    @app_commands.command(name="reroll-policy", description="Who may 🔁 a result")
    async def reroll_policy(
        self, interaction: discord.Interaction, policy: Literal["everyone", "owner"]
    ) -> None:
        actor = await self._admin(interaction)
        await self.service.admin_set_reroll_policy(actor, policy)
        await self._done(interaction, f"Reroll policy: {policy}.")

    @app_commands.command(name="guides", description="Allow control and reference images (ControlNet, IP-Adapter)")
    async def guides(self, interaction: discord.Interaction, allowed: bool) -> None:
        actor = await self._admin(interaction)
        await self.service.admin_set_guides(actor, allowed)
        await self._done(interaction, f"Control and reference images are now {'on' if allowed else 'off'}.")

    @app_commands.command(name="role", description="Add or remove a chant admin role")
    async def role(
        self, interaction: discord.Interaction, action: Literal["add", "remove"], role: discord.Role
    ) -> None:
        actor = await self._admin(interaction)
        if action == "add":
            await self.service.admin_add_admin_role(actor, role.id)
        else:
            await self.service.admin_remove_admin_role(actor, role.id)
        await self._done(
            interaction,
            f"{role.mention} {'is now' if action == 'add' else 'is no longer'} a chant admin role.",
        )

    @app_commands.command(
        name="moderation", description="Image moderation: policy, threshold, age-restricted channels"
    )
    @app_commands.describe(
        policy="off: post everything · spoiler: flagged images as spoilers · block: flagged images not posted",
        threshold="a classifier score at or over this flags an image (0.01–1; default 0.8)",
        age_restricted="in age-restricted channels: allow everything, spoiler flagged images, or the same policy",
    )
    async def moderation(
        self,
        interaction: discord.Interaction,
        policy: Literal["off", "spoiler", "block"] | None = None,
        threshold: app_commands.Range[float, MIN_THRESHOLD, MAX_THRESHOLD] | None = None,
        age_restricted: Literal["allow", "spoiler", "same"] | None = None,
    ) -> None:
        actor = await self._admin(interaction)
        view = await self.service.admin_moderation(
            actor, policy=policy, threshold=threshold, age_restricted=age_restricted
        )
        changed = policy is not None or threshold is not None or age_restricted is not None
        await self._done(interaction, ("Saved. " if changed else "") + moderation_text(view))

    @app_commands.command(name="job", description="A job's details: its images' scores and moderation")
    async def job(self, interaction: discord.Interaction, job: JobId) -> None:
        actor = await self._admin(interaction)
        view = await self.service.admin_job(actor, job)
        made = f" · {view.kind} of #{view.parent_id}" if view.parent_id is not None else ""
        place = " · age-restricted channel" if view.age_restricted else ""
        head = f"Job #{view.id} · {view.state}{made} · <@{view.user_id}> in <#{view.channel_id}>{place}"
        await self._done(interaction, head + "\n" + moderation_lines(view.moderation))

    @app_commands.command(name="stats", description="Usage statistics for this server")
    async def stats(self, interaction: discord.Interaction) -> None:
        actor = await self._admin(interaction)
        stats = await self.service.admin_stats(actor)
        lines = [
            f"{k}: **{v:g}**" if isinstance(v, float) else f"{k}: **{v}**" for k, v in sorted(stats.items())
        ]
        await self._done(interaction, "\n".join(lines) or "No statistics yet.")


def moderation_text(view: ModerationView) -> str:
    text = (
        f"Image moderation: **{view.policy}** at a score of **{view.threshold:g}** · age-restricted "
        f"channels: **{view.age_restricted}** · direct messages (the bot operator's): **{view.dm_policy}**."
    )
    if not view.classifier and view.policy != "off":
        text += (
            "\n⚠️ This bot has no image classifier configured, so no image can be checked: "
            f"{'every image is spoilered' if view.policy == 'spoiler' else 'every image is withheld'} "
            "outside channels that allow it (and a withheld image is not charged)."
        )
    return text


async def setup(bot: ChantBot) -> None:
    await bot.add_cog(AdminCog(bot))
