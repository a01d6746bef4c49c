"""/imagine, /img2img, /loras and the result reactions (🔁 reroll, 🔀 variation, ❌ delete, ℹ️ parameters)."""

from __future__ import annotations

from bot.app import ChantBot
from bot.exts.imagine._cog import ImagineCog


async def setup(bot: ChantBot) -> None:
    await bot.add_cog(ImagineCog(bot))
