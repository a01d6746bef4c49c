"""Typed slash-command options: sizes within the guild's pixel limit, samplers, models and LoRAs by
autocomplete, the img2img / inpaint / hires choices, and reading an interaction's attachments.

Every numeric range and choice list is :mod:`core.ranges`'s, so Discord offers exactly what core and the
engine accept."""

from __future__ import annotations

import re
from typing import Any, Literal

import discord
from discord import app_commands

from bot.actors import actor_from_interaction
from bot.app import ChantBot
from core import ranges
from core.services import ImagineOptions, UserError
from core.services.guides import CONTROL_TYPES

# Common aspect ratios at SD1.5 and SDXL scales (all multiples of 64).
SIZES: tuple[tuple[str, int, int], ...] = (
    ("square", 512, 512),
    ("portrait 2:3", 512, 768),
    ("landscape 3:2", 768, 512),
    ("square", 768, 768),
    ("portrait 9:16", 576, 1024),
    ("landscape 16:9", 1024, 576),
    ("square", 1024, 1024),
    ("portrait 13:19", 832, 1216),
    ("landscape 19:13", 1216, 832),
    ("portrait 9:16 XL", 768, 1344),
    ("landscape 16:9 XL", 1344, 768),
)
_SIZE_RE = re.compile(r"^\s*(\d{2,5})\s*[x×*]\s*(\d{2,5})\s*$")


def parse_size(value: str) -> tuple[int, int]:
    m = _SIZE_RE.match(value)
    if not m:
        raise UserError("size", f"size {value[:40]!r} is not WIDTHxHEIGHT, e.g. 512x768")
    width, height = int(m.group(1)), int(m.group(2))
    low, high, step = ranges.MIN_SIDE, ranges.MAX_SIDE, ranges.SIDE_MULTIPLE
    if any(not low <= side <= high or side % step for side in (width, height)):
        raise UserError(
            "size",
            f"size {width}x{height}: width and height must be multiples of {step} between {low} and {high}",
        )
    return width, height


def size_choices(
    max_pixels: int, current: str = "", default: tuple[int, int] | None = None
) -> list[app_commands.Choice[str]]:
    """The sizes within ``max_pixels`` that match what was typed; the model's ``default`` (what leaving
    the option out gives) first."""
    sizes = [("the model's default", *default)] if default else []
    sizes += [entry for entry in SIZES if (entry[1], entry[2]) != default]
    out = []
    for label, w, h in sizes:
        if w * h > max_pixels:
            continue
        value = f"{w}x{h}"
        name = f"{value} ({label})"
        if current.lower() in name.lower():
            out.append(app_commands.Choice(name=name, value=value))
    return out[:25]


async def _limit_of(interaction: discord.Interaction[ChantBot]) -> int:
    """This guild's pixel limit (an admin may have lowered the operator's default)."""
    client = interaction.client
    try:
        limits = await client.service.guild_limits(actor_from_interaction(interaction))
        return int(limits.max_pixels)
    except Exception:  # autocomplete must answer: fall back to the operator's default
        return int(client.settings.limits.max_pixels)


async def _default_size_of(interaction: discord.Interaction[ChantBot]) -> tuple[int, int] | None:
    """The size the model chosen so far (or the default model) gives when no size is chosen."""
    model = getattr(interaction.namespace, "model", None)
    try:
        return await interaction.client.service.default_size(
            actor_from_interaction(interaction), str(model) if model else None
        )
    except Exception:  # autocomplete must answer: the plain list then
        return None


class SizeTransformer(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: Any) -> tuple[int, int]:
        return parse_size(str(value))

    async def autocomplete(
        self, interaction: discord.Interaction[ChantBot], value: Any
    ) -> list[app_commands.Choice[str]]:
        return size_choices(await _limit_of(interaction), str(value), await _default_size_of(interaction))


def _choices(names: list[str], current: str) -> list[app_commands.Choice[str]]:
    current = current.lower()
    starts = [n for n in names if n.lower().startswith(current)]
    contains = [n for n in names if current in n.lower() and n not in starts]
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in (starts + contains)[:25]]


class SamplerTransformer(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: Any) -> str:
        return str(value)  # core validates the name and answers with the known ones

    async def autocomplete(
        self, interaction: discord.Interaction[ChantBot], value: Any
    ) -> list[app_commands.Choice[str]]:
        return _choices(interaction.client.service.sampler_names(), str(value))


class ModelTransformer(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: Any) -> str:
        return str(value)

    async def autocomplete(
        self, interaction: discord.Interaction[ChantBot], value: Any
    ) -> list[app_commands.Choice[str]]:
        return _choices(interaction.client.service.model_names(), str(value))


_LORA_RE = re.compile(r"^[^:<>\x00-\x1f]{1,100}$")  # nothing that could end the tag early


def lora_tag(name: str, weight: float = 1.0) -> str:
    """``<lora:name:1>`` for the ``lora`` option (the name is checked: no tag can be smuggled in)."""
    if not _LORA_RE.match(name) or ".." in name:
        raise UserError("lora", f"{name[:60]!r} is not a LoRA name; pick one from the list (/loras).")
    return f"<lora:{name}:{weight:g}>"


class LoraTransformer(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: Any) -> str:
        return str(value)  # core checks the name against the LoRA folders and suggests close ones

    async def autocomplete(
        self, interaction: discord.Interaction[ChantBot], value: Any
    ) -> list[app_commands.Choice[str]]:
        return _choices(interaction.client.service.lora_names(), str(value))


class HiresUpscalerTransformer(app_commands.Transformer):
    """Hires fix's upscalers: the latent and image ones, then the installed models (A1111's names)."""

    async def transform(self, interaction: discord.Interaction, value: Any) -> str:
        return str(value)  # core checks the name and answers with the ones this server has

    async def autocomplete(
        self, interaction: discord.Interaction[ChantBot], value: Any
    ) -> list[app_commands.Choice[str]]:
        return _choices(interaction.client.service.upscaler_names(hires=True), str(value))


Size = app_commands.Transform[tuple[int, int], SizeTransformer]
Lora = app_commands.Transform[str, LoraTransformer]
Sampler = app_commands.Transform[str, SamplerTransformer]
Model = app_commands.Transform[str, ModelTransformer]
Steps = app_commands.Range[int, ranges.MIN_STEPS, ranges.MAX_STEPS]
Cfg = app_commands.Range[float, ranges.BOT_MIN_CFG, ranges.BOT_MAX_CFG]
CfgRescale = app_commands.Range[float, ranges.MIN_CFG_RESCALE, ranges.MAX_CFG_RESCALE]
Count = app_commands.Range[int, ranges.MIN_COUNT, ranges.BOT_MAX_COUNT]
Seed = app_commands.Range[int, ranges.RANDOM_SEED, ranges.MAX_SEED]
ClipSkip = app_commands.Range[int, ranges.MIN_CLIP_SKIP, ranges.MAX_CLIP_SKIP]
Strength = app_commands.Range[float, ranges.MIN_STRENGTH, ranges.MAX_STRENGTH]
MaskBlur = app_commands.Range[int, ranges.MIN_MASK_BLUR, ranges.MAX_MASK_BLUR]
HiresScale = app_commands.Range[float, ranges.MIN_HIRES_SCALE, ranges.MAX_HIRES_SCALE]
HiresSteps = app_commands.Range[int, 0, ranges.MAX_HIRES_STEPS]
# Discord's own limits: a text option holds 6,000 characters; ids are below 2**53 (JSON-safe).
Prompt = app_commands.Range[str, 1, 6000]
Negative = app_commands.Range[str, 0, 6000]
JobId = app_commands.Range[int, 1, 2**53]
# A1111's numbers by the names Discord shows.
RESIZE_MODES = {name.lower(): number for number, name in ranges.RESIZE_MODES.items()}
FILLS = {name: number for number, name in ranges.FILL_MODES.items()}
# Choices built from those tables at import (discord.py reads the Literal's values).
ResizeMode = Literal[tuple(RESIZE_MODES)]
Fill = Literal[tuple(FILLS)]
Upscaler = app_commands.Transform[str, HiresUpscalerTransformer]
# Guiding images (issue 16): what runs on the control attachment (or that it is a ready map), weights.
ControlType = Literal[tuple(CONTROL_TYPES)]
ControlWeight = app_commands.Range[float, ranges.MIN_CONTROL_WEIGHT, ranges.MAX_CONTROL_WEIGHT]
ReferenceScale = app_commands.Range[float, ranges.MIN_REFERENCE_SCALE, ranges.MAX_REFERENCE_SCALE]
Guidance = app_commands.Range[float, ranges.MIN_GUIDANCE, ranges.MAX_GUIDANCE]
GUIDE_DESCRIBE = {
    "control_image": "ControlNet: an image whose edges/depth/pose guide the composition",
    "control_type": "ControlNet: what to take from control_image (default canny; '… map': it already is one)",
    "control_weight": "ControlNet: how strongly it guides (default 1; start/end: save them in a preset)",
    "reference_image": "reference image (IP-Adapter): borrow its look, style or subject",
    "reference_scale": "reference image: how strongly (default 1)",
}

# What the options every generating command shares mean (``@app_commands.describe(**DESCRIBE, ...)``).
DESCRIBE = {
    "negative": "negative prompt",
    "preset": "one of your or the server's presets (options you give here win)",
    "steps": "sampling steps",
    "cfg": "CFG scale",
    "cfg_rescale": "CFG rescale 0-1 for v-prediction models (0 = off; model cards often ask 0.7)",
    "sampler": "A1111 sampler name",
    "seed": "seed (-1 = random)",
    "count": "number of images",
    "model": "configured model name",
    "clip_skip": "CLIP skip, A1111 numbering (1 = last layer)",
}


def command_options(
    prompt: str, size: tuple[int, int] | None = None, lora: str | None = None, **fields: Any
) -> ImagineOptions:
    """A command's options for core: ``size`` splits into width and height, a ``lora`` choice appends
    its tag to the prompt, every other option keeps its name."""
    width, height = size if size else (None, None)
    return ImagineOptions(
        prompt=f"{prompt} {lora_tag(lora)}" if lora else prompt, width=width, height=height, **fields
    )


MAX_ATTACHMENT_BYTES = 32 * 1024 * 1024  # more than Discord's largest upload for a user


async def read_attachment(attachment: discord.Attachment, what: str) -> bytes:
    """The bytes of an attachment of this interaction, from the CDN URL Discord gave us (never a URL a
    user typed). Core checks that they are an image; here only what Discord already tells us."""
    if attachment.size > MAX_ATTACHMENT_BYTES:
        raise UserError(
            "image.too_large",
            f"The {what} {attachment.filename!r} is {attachment.size / 2**20:.1f} MiB; send one under "
            f"{MAX_ATTACHMENT_BYTES // 2**20} MiB.",
        )
    ctype = (attachment.content_type or "").split(";")[0].strip().lower()
    if ctype and not ctype.startswith("image/"):
        raise UserError(
            "image.invalid",
            f"The {what} {attachment.filename!r} is a {ctype} file, not an image; attach a PNG, JPEG or WebP.",
        )
    try:
        return await attachment.read()
    except discord.HTTPException as exc:
        raise UserError(
            "image.fetch", f"I could not download the {what} from Discord ({exc.status}); attach it again."
        ) from None


async def preset_autocomplete(
    interaction: discord.Interaction[ChantBot], current: str
) -> list[app_commands.Choice[str]]:
    names = await interaction.client.service.preset_names(actor_from_interaction(interaction), current)
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names[:25]]


async def prompt_autocomplete(
    interaction: discord.Interaction[ChantBot], current: str
) -> list[app_commands.Choice[str]]:
    """Tag suggestions for the prompt typed so far (``prompts.tag_file``): its last tag completed. Discord
    caps a suggestion at 100 characters, so a longer prompt gets none (the typed text is still used)."""
    pairs = interaction.client.service.complete_prompt(current)
    return [
        app_commands.Choice(name=label[:100], value=value) for label, value in pairs[:25] if len(value) <= 100
    ]
