"""The seam between the bot and core: everything the bot may ask of core, typed.

:class:`core.services.ChantService` implements it (a test holds the two to the same signatures); the
bot's cogs and delivery see only this, so a change on either side shows at the seam.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from core.services.types import (
    Actor,
    GuildLimits,
    ImagineOptions,
    JobEvent,
    JobView,
    PresetView,
    QuotaView,
    Receipt,
)
from core.types import GeneratedImage


class EventStream(Protocol):
    """Job events in order, from subscribing on (``async for``); ``aclose()`` unsubscribes."""

    def __aiter__(self) -> EventStream: ...

    async def __anext__(self) -> JobEvent: ...

    async def aclose(self) -> None: ...


class CoreAPI(Protocol):
    # lifecycle and events
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def events(self) -> EventStream: ...

    # submit, reroll, variation, cancel
    async def submit_imagine(self, actor: Actor, options: ImagineOptions) -> Receipt: ...

    async def reroll(self, actor: Actor, message_id: int) -> Receipt: ...

    async def variation(self, actor: Actor, message_id: int) -> Receipt: ...

    async def cancel(self, actor: Actor, job_id: int) -> JobView: ...

    # reads
    async def show(self, actor: Actor, job_id: int) -> JobView: ...

    async def job_images(self, job_id: int) -> tuple[GeneratedImage, ...]: ...

    async def job_for_message(self, message_id: int) -> JobView | None: ...

    async def history(self, actor: Actor, page: int = 0, per_page: int = 10) -> tuple[list[JobView], int]: ...

    async def my_queue(self, actor: Actor) -> list[tuple[JobView, int]]: ...

    async def quota_status(self, actor: Actor) -> QuotaView: ...

    async def guild_limits(self, actor: Actor) -> GuildLimits: ...

    async def is_admin(self, actor: Actor) -> bool: ...

    async def default_size(self, actor: Actor, model: str | None) -> tuple[int, int]:
        """The size a job on ``model`` (None: the default model) gets when the user gives none."""
        ...

    def model_names(self) -> list[str]: ...

    def sampler_names(self) -> list[str]: ...

    def lora_names(self) -> list[str]: ...

    # results and their messages
    async def record_status_message(self, job_id: int, channel_id: int, message_id: int) -> None: ...

    async def record_result_messages(self, job_id: int, message_ids: Sequence[int]) -> None: ...

    async def delete_result(self, actor: Actor, message_id: int) -> JobView: ...

    async def unposted_results(self) -> list[JobView]: ...

    async def live_status_jobs(self, limit: int = 1000) -> list[tuple[JobView, int | None]]: ...

    # presets
    async def save_preset(
        self,
        actor: Actor,
        name: str,
        options: ImagineOptions | None,
        *,
        guild: bool = False,
        from_last_job: bool = False,
    ) -> None: ...

    async def delete_preset(self, actor: Actor, name: str, *, guild: bool = False) -> None: ...

    async def list_presets(self, actor: Actor) -> list[PresetView]: ...

    async def preset_names(self, actor: Actor, prefix: str) -> list[str]: ...

    # admin
    async def admin_set_quota(
        self,
        actor: Actor,
        *,
        scope: str,
        target_id: int | None,
        images: int | None,
        gpu_seconds: float | None,
        period: str,
    ) -> None: ...

    async def admin_set_limit(self, actor: Actor, name: str, value: int) -> None: ...

    async def admin_set_default_model(self, actor: Actor, model: str) -> None: ...

    async def admin_set_reroll_policy(self, actor: Actor, policy: str) -> None: ...

    async def admin_banned_words(
        self, actor: Actor, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]: ...

    async def admin_set_channels(self, actor: Actor, channel_ids: Sequence[int]) -> None: ...

    async def admin_add_admin_role(self, actor: Actor, role_id: int) -> None: ...

    async def admin_remove_admin_role(self, actor: Actor, role_id: int) -> None: ...

    async def admin_stats(self, actor: Actor) -> dict[str, int | float]: ...
