"""The result controls: persistent buttons under each result (🔁, Vary, Remix, Zoom Out, Pan, and U1–U4 /
V1–V4 on a result of several images) and the Remix form. Their state lives in the ``custom_id``, so
they work on any result, also after a restart."""

from __future__ import annotations

from bot.app import ChantBot
from bot.exts.controls._buttons import ResultControl, result_view
from bot.exts.controls._cog import ControlsCog, run_control


async def setup(bot: ChantBot) -> None:
    ResultControl.handler = run_control
    bot.add_dynamic_items(ResultControl)
    bot.delivery.result_view = result_view
    await bot.add_cog(ControlsCog(bot))
