"""ChantService: everything the bot asks of core (submit, reroll, cancel, history, presets, admin).

Built by :func:`core.bootstrap.bootstrap` from Settings; the bot only translates interactions into
these calls and the results/events into messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from core.services.types import (
    Actor,
    ImagineOptions,
    JobEvent,
    JobView,
    PresetView,
    QuotaView,
    Receipt,
)
from core.types import GeneratedImage


class ChantService:
    async def submit_imagine(self, actor: Actor, options: ImagineOptions) -> Receipt:
        raise NotImplementedError

    async def reroll(self, actor: Actor, message_id: int) -> Receipt:
        raise NotImplementedError

    async def variation(self, actor: Actor, message_id: int) -> Receipt:
        raise NotImplementedError

    async def show(self, actor: Actor, job_id: int) -> JobView:
        raise NotImplementedError

    async def job_images(self, job_id: int) -> tuple[GeneratedImage, ...]:
        raise NotImplementedError

    async def job_for_message(self, message_id: int) -> JobView | None:
        raise NotImplementedError

    async def record_status_message(self, job_id: int, channel_id: int, message_id: int) -> None:
        raise NotImplementedError

    async def record_result_messages(self, job_id: int, message_ids: Sequence[int]) -> None:
        raise NotImplementedError

    async def unposted_results(self) -> list[JobView]:
        raise NotImplementedError

    async def delete_result(self, actor: Actor, message_id: int) -> JobView:
        raise NotImplementedError

    async def cancel(self, actor: Actor, job_id: int) -> JobView:
        raise NotImplementedError

    async def history(self, actor: Actor, page: int = 0, per_page: int = 10) -> tuple[list[JobView], int]:
        raise NotImplementedError

    async def my_queue(self, actor: Actor) -> list[tuple[JobView, int]]:
        raise NotImplementedError

    async def quota_status(self, actor: Actor) -> QuotaView:
        raise NotImplementedError

    async def save_preset(
        self,
        actor: Actor,
        name: str,
        options: ImagineOptions | None,
        *,
        guild: bool = False,
        from_last_job: bool = False,
    ) -> None:
        raise NotImplementedError

    async def delete_preset(self, actor: Actor, name: str, *, guild: bool = False) -> None:
        raise NotImplementedError

    async def list_presets(self, actor: Actor) -> list[PresetView]:
        raise NotImplementedError

    async def preset_names(self, actor: Actor, prefix: str) -> list[str]:
        raise NotImplementedError

    async def is_admin(self, actor: Actor) -> bool:
        raise NotImplementedError

    async def admin_set_quota(
        self,
        actor: Actor,
        *,
        scope: str,
        target_id: int | None,
        images: int | None,
        gpu_seconds: float | None,
        period: str,
    ) -> None:
        raise NotImplementedError

    async def admin_set_limit(self, actor: Actor, name: str, value: int) -> None:
        raise NotImplementedError

    async def admin_set_default_model(self, actor: Actor, model: str) -> None:
        raise NotImplementedError

    async def admin_banned_words(
        self, actor: Actor, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        raise NotImplementedError

    async def admin_set_channels(self, actor: Actor, channel_ids: Sequence[int]) -> None:
        raise NotImplementedError

    async def admin_set_reroll_policy(self, actor: Actor, policy: str) -> None:
        raise NotImplementedError

    async def admin_add_admin_role(self, actor: Actor, role_id: int) -> None:
        raise NotImplementedError

    async def admin_remove_admin_role(self, actor: Actor, role_id: int) -> None:
        raise NotImplementedError

    async def admin_stats(self, actor: Actor) -> dict[str, int | float]:
        raise NotImplementedError

    def model_names(self) -> list[str]:
        raise NotImplementedError

    def sampler_names(self) -> list[str]:
        raise NotImplementedError

    def events(self) -> AsyncIterator[JobEvent]:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError
