"""The buttons: one :class:`ResultControl` (a ``DynamicItem``) whose ``custom_id`` holds the job, the
image (its 0-based position in the job) and the action, and the rows they are laid out in."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import discord

from bot.app import ChantBot
from core.services import JobView

MAX_PER_ROW = 5  # Discord's limit of buttons in one action row

# What a click runs: (interaction, job id, image index, action).
Handler = Callable[[discord.Interaction[ChantBot], int, int, str], Awaitable[None]]


@dataclass(frozen=True)
class Action:
    label: str | None
    emoji: str | None = None
    style: discord.ButtonStyle = discord.ButtonStyle.secondary


# Short codes: a custom_id is at most 100 characters and outlives every version of this table, so a
# code is never reused for something else.
ACTIONS: dict[str, Action] = {
    "rr": Action(None, "🔁"),
    "vsub": Action("Vary (Subtle)", "🪄"),
    "vstr": Action("Vary (Strong)", "🪄"),
    "rmx": Action("Remix", "🖌️"),
    "z15": Action("Zoom Out 1.5×", "🔍"),
    "z2": Action("Zoom Out 2×", "🔍"),
    "pl": Action(None, "⬅️"),
    "pr": Action(None, "➡️"),
    "pu": Action(None, "⬆️"),
    "pd": Action(None, "⬇️"),
    "up2": Action("Upscale 2×", "✨"),  # an upscale job of the image (issue 15), the server's default upscaler
    "up4": Action("Upscale 4×", "✨"),
    "u": Action("U"),  # pick image n of several: posted alone, with the controls above
    "v": Action("V"),  # Vary (Strong) of image n of several (Midjourney's V1–V4)
}


class ResultControl(
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"chant:c:(?P<job>\d{1,20}):(?P<index>\d{1,2}):(?P<action>[a-z0-9]{1,4})",
):
    """A button under a result. ``index``: the image it acts on (0-based; 🔁 acts on the whole job)."""

    # Set by the extension's setup() (the handler posts these views, so it cannot be imported here).
    handler: ClassVar[Handler | None] = None

    def __init__(self, job_id: int, index: int, action: str, *, row: int | None = None) -> None:
        spec = ACTIONS[action]
        label = f"{spec.label}{index + 1}" if action in ("u", "v") else spec.label
        super().__init__(
            discord.ui.Button(
                style=spec.style,
                label=label,
                emoji=spec.emoji,
                custom_id=f"chant:c:{job_id}:{index}:{action}",
                row=row,
            )
        )
        self.job_id = job_id
        self.index = index
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /
    ) -> ResultControl:
        if match["action"] not in ACTIONS:  # a code this version does not know: ignored (logged)
            raise ValueError(f"unknown result control {match['action']!r}")
        return cls(int(match["job"]), int(match["index"]), match["action"])

    async def callback(self, interaction: discord.Interaction[ChantBot]) -> None:
        handler = ResultControl.handler
        if handler is None:  # the extension is not set up: nothing to run
            raise RuntimeError("ResultControl.handler is not set (bot.exts.controls setup)")
        await handler(interaction, self.job_id, self.index, self.action)


def single_view(job_id: int, index: int) -> discord.ui.View:
    """Under one image: Vary, Remix and 🔁; Zoom Out and Upscale; Pan."""
    view = discord.ui.View(timeout=None)
    rows = (("vsub", "vstr", "rmx", "rr"), ("z15", "z2", "up2", "up4"), ("pl", "pr", "pu", "pd"))
    for row, actions in enumerate(rows):
        for action in actions:
            view.add_item(ResultControl(job_id, index, action, row=row))
    return view


def upscale_view(job_id: int, index: int) -> discord.ui.View:
    """Under an upscale: Zoom Out and Upscale again; Pan (Vary, Remix and 🔁 would make the same image)."""
    view = discord.ui.View(timeout=None)
    for row, actions in enumerate((("z15", "z2", "up2", "up4"), ("pl", "pr", "pu", "pd"))):
        for action in actions:
            view.add_item(ResultControl(job_id, index, action, row=row))
    return view


def grid_view(job_id: int, shown: Sequence[int]) -> discord.ui.View:
    """Under several images: U1–U4 (that image alone, with its own controls), V1–V4 (Vary (Strong) of it),
    then 🔁 and Remix (from the first image)."""
    view = discord.ui.View(timeout=None)
    picks = list(shown)[:MAX_PER_ROW]
    for row, action in enumerate(("u", "v")):
        for index in picks:
            view.add_item(ResultControl(job_id, index, action, row=row))
    view.add_item(ResultControl(job_id, picks[0], "rr", row=2))
    view.add_item(ResultControl(job_id, picks[0], "rmx", row=2))
    return view


def result_view(job: JobView, shown: Sequence[int]) -> discord.ui.View | None:
    """The controls under a posted result (``shown``: the positions of the images posted)."""
    if job.state != "done" or not shown:
        return None
    if job.kind == "upscale":
        return upscale_view(job.id, shown[0])
    return single_view(job.id, shown[0]) if len(job.seeds) == 1 else grid_view(job.id, shown)
