"""Typed slash-command options: sizes within the guild's pixel limit, samplers, models and LoRAs by
autocomplete, the img2img / inpaint / hires choices, and reading an interaction's attachments."""

from __future__ import annotations

import re
from typing import Any, Literal

import discord
from discord import app_commands

from core.services import UserError

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
    if width % 8 or height % 8:
        raise UserError("size", f"size {width}x{height}: width and height must be multiples of 8")
    return width, height


def size_choices(max_pixels: int, current: str = "") -> list[app_commands.Choice[str]]:
    out = []
    for label, w, h in SIZES:
        if w * h > max_pixels:
            continue
        value = f"{w}x{h}"
        name = f"{value} ({label})"
        if current.lower() in name.lower():
            out.append(app_commands.Choice(name=name, value=value))
    return out[:25]


async def _limit_of(interaction: discord.Interaction) -> int:
    """This guild's pixel limit (an admin may have lowered the operator's default)."""
    from bot.actors import actor_from_interaction

    client = interaction.client
    try:
        limits = await client.service.guild_limits(actor_from_interaction(interaction))  # type: ignore[attr-defined]
        return int(limits.max_pixels)
    except Exception:  # autocomplete must answer: fall back to the operator's default
        return int(client.settings.limits.max_pixels)  # type: ignore[attr-defined]


class SizeTransformer(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: Any) -> tuple[int, int]:
        return parse_size(str(value))

    async def autocomplete(
        self, interaction: discord.Interaction, value: Any
    ) -> list[app_commands.Choice[str]]:
        return size_choices(await _limit_of(interaction), str(value))


def _choices(names: list[str], current: str) -> list[app_commands.Choice[str]]:
    current = current.lower()
    starts = [n for n in names if n.lower().startswith(current)]
    contains = [n for n in names if current in n.lower() and n not in starts]
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in (starts + contains)[:25]]


class SamplerTransformer(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: Any) -> str:
        return str(value)  # core validates the name and answers with the known ones

    async def autocomplete(
        self, interaction: discord.Interaction, value: Any
    ) -> list[app_commands.Choice[str]]:
        return _choices(interaction.client.service.sampler_names(), str(value))  # type: ignore[attr-defined]


class ModelTransformer(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: Any) -> str:
        return str(value)

    async def autocomplete(
        self, interaction: discord.Interaction, value: Any
    ) -> list[app_commands.Choice[str]]:
        return _choices(interaction.client.service.model_names(), str(value))  # type: ignore[attr-defined]


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
        self, interaction: discord.Interaction, value: Any
    ) -> list[app_commands.Choice[str]]:
        return _choices(interaction.client.service.lora_names(), str(value))  # type: ignore[attr-defined]


Size = app_commands.Transform[tuple[int, int], SizeTransformer]
Lora = app_commands.Transform[str, LoraTransformer]
Sampler = app_commands.Transform[str, SamplerTransformer]
Model = app_commands.Transform[str, ModelTransformer]
Steps = app_commands.Range[int, 1, 150]
Cfg = app_commands.Range[float, 1.0, 30.0]
Count = app_commands.Range[int, 1, 4]
Seed = app_commands.Range[int, -1, 2**32 - 1]
ClipSkip = app_commands.Range[int, 1, 12]
Strength = app_commands.Range[float, 0.0, 1.0]
MaskBlur = app_commands.Range[int, 0, 64]
HiresScale = app_commands.Range[float, 1.0, 4.0]
HiresSteps = app_commands.Range[int, 0, 150]
SourceJob = app_commands.Range[int, 1, 2**53]
ResizeMode = Literal["just resize", "crop and resize", "resize and fill"]
Fill = Literal["fill", "original", "latent noise", "latent nothing"]
Upscaler = Literal[
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
    "Lanczos",
    "Nearest",
    "None",
]
RESIZE_MODES = {"just resize": 0, "crop and resize": 1, "resize and fill": 2}  # A1111's numbers
FILLS = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}

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
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    from bot.actors import actor_from_interaction

    service = interaction.client.service  # type: ignore[attr-defined]
    names = await service.preset_names(actor_from_interaction(interaction), current)
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names[:25]]
