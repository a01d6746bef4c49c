"""Typed slash-command options: sizes within the pixel limit, samplers and models by autocomplete."""

from __future__ import annotations

import re
from typing import Any

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


def _limit_of(interaction: discord.Interaction) -> int:
    return int(interaction.client.settings.limits.max_pixels)  # type: ignore[attr-defined]


class SizeTransformer(app_commands.Transformer):
    async def transform(self, interaction: discord.Interaction, value: Any) -> tuple[int, int]:
        return parse_size(str(value))

    async def autocomplete(
        self, interaction: discord.Interaction, value: Any
    ) -> list[app_commands.Choice[str]]:
        return size_choices(_limit_of(interaction), str(value))


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


Size = app_commands.Transform[tuple[int, int], SizeTransformer]
Sampler = app_commands.Transform[str, SamplerTransformer]
Model = app_commands.Transform[str, ModelTransformer]
Steps = app_commands.Range[int, 1, 150]
Cfg = app_commands.Range[float, 1.0, 30.0]
Count = app_commands.Range[int, 1, 4]
Seed = app_commands.Range[int, -1, 2**32 - 1]
ClipSkip = app_commands.Range[int, 1, 12]


async def preset_autocomplete(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    from bot.actors import actor_from_interaction

    service = interaction.client.service  # type: ignore[attr-defined]
    names = await service.preset_names(actor_from_interaction(interaction), current)
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names[:25]]
