"""/preset save|list|delete: the user's own presets (guild presets are under /admin)."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.actors import actor_from_interaction
from bot.app import ChantBot
from bot.options import (
    Cfg,
    ClipSkip,
    ControlType,
    ControlWeight,
    Count,
    Guidance,
    HiresScale,
    HiresSteps,
    Model,
    ReferenceScale,
    Sampler,
    Seed,
    Size,
    Steps,
    Strength,
    Upscaler,
    command_options,
    preset_autocomplete,
)
from bot.render import truncate
from core.services import ImagineOptions, PresetView

PresetName = app_commands.Range[str, 1, 64]


def describe_options(options: ImagineOptions) -> str:
    parts = []
    for name in (
        "prompt",
        "negative",
        "width",
        "height",
        "steps",
        "cfg",
        "sampler",
        "seed",
        "count",
        "model",
        "clip_skip",
        "hires",
        "hires_scale",
        "hires_steps",
        "hires_strength",
        "upscaler",
        "strength",
        "control_type",
        "control_weight",
        "control_start",
        "control_end",
        "reference_scale",
    ):
        value = getattr(options, name)
        if value not in (None, ""):
            parts.append(f"{name}={value}")
    return truncate(", ".join(parts) or "(no options)", 300)


def preset_lines(presets: list[PresetView]) -> str:
    if not presets:
        return "You have no presets yet. Make one with `/preset save`."
    lines = [f"• **{p.name}** ({p.scope}): {describe_options(p.options)}" for p in presets]
    return truncate("\n".join(lines), 2000)


class PresetCog(commands.GroupCog, group_name="preset", group_description="Your saved /imagine options"):
    def __init__(self, bot: ChantBot) -> None:
        self.bot = bot
        self.service = bot.service
        super().__init__()

    @app_commands.command(
        name="save", description="Save options as a preset (or, with no options, your last job's)"
    )
    @app_commands.describe(
        name="preset name",
        from_last_job="copy every option of your most recent job",
        control_start="ControlNet: the fraction of the steps where it starts guiding (0-1)",
        control_end="ControlNet: the fraction of the steps where it stops guiding (0-1)",
    )
    async def save(
        self,
        interaction: discord.Interaction,
        name: PresetName,
        from_last_job: bool = False,
        prompt: str | None = None,
        negative: str | None = None,
        size: Size | None = None,
        steps: Steps | None = None,
        cfg: Cfg | None = None,
        sampler: Sampler | None = None,
        seed: Seed | None = None,
        count: Count | None = None,
        model: Model | None = None,
        clip_skip: ClipSkip | None = None,
        hires: bool | None = None,
        hires_scale: HiresScale | None = None,
        hires_steps: HiresSteps | None = None,
        hires_strength: Strength | None = None,
        upscaler: Upscaler | None = None,
        strength: Strength | None = None,
        control_type: ControlType | None = None,
        control_weight: ControlWeight | None = None,
        control_start: Guidance | None = None,
        control_end: Guidance | None = None,
        reference_scale: ReferenceScale | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        guide = {
            "control_type": control_type, "control_weight": control_weight, "control_start": control_start,
            "control_end": control_end, "reference_scale": reference_scale,
        }  # fmt: skip
        explicit = command_options(
            prompt or "",
            size,
            negative=negative,
            steps=steps,
            cfg=cfg,
            sampler=sampler,
            seed=seed,
            count=count,
            model=model,
            clip_skip=clip_skip,
            hires=hires,
            hires_scale=hires_scale,
            hires_steps=hires_steps,
            hires_strength=hires_strength,
            upscaler=upscaler,
            strength=strength,
            **guide,
        )
        has_options = any(v is not None for v in guide.values()) or any(
            v is not None
            for v in (prompt, negative, size, steps, cfg, sampler, seed, count, model, clip_skip)
        ) or any(v is not None for v in (hires, hires_scale, hires_steps, hires_strength, upscaler, strength))
        use_last = from_last_job or not has_options
        await self.service.save_preset(
            actor_from_interaction(interaction),
            name,
            explicit if has_options else None,
            from_last_job=use_last,
        )
        what = "from your last job" if use_last and not has_options else describe_options(explicit)
        await interaction.followup.send(
            f"Saved preset **{name}** ({what}). Use it with `/imagine preset:{name}`.", ephemeral=True
        )

    @app_commands.command(name="list", description="Your presets and this server's")
    async def list_(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        presets = await self.service.list_presets(actor_from_interaction(interaction))
        await interaction.followup.send(preset_lines(presets), ephemeral=True)

    @app_commands.command(name="delete", description="Delete one of your presets")
    @app_commands.autocomplete(name=preset_autocomplete)
    async def delete(self, interaction: discord.Interaction, name: PresetName) -> None:
        await interaction.response.defer(ephemeral=True)
        await self.service.delete_preset(actor_from_interaction(interaction), name)
        await interaction.followup.send(f"Deleted preset **{name}**.", ephemeral=True)


async def setup(bot: ChantBot) -> None:
    await bot.add_cog(PresetCog(bot))
