"""ChantService: the facade the bot holds (:class:`core.services.api.CoreAPI`). It holds no logic.

Each method is one line that hands the call to its use case, a function of one module per room:
:mod:`.submit` (imagine, reroll, variation), :mod:`.controls` (the buttons under a result),
:mod:`.cancel`, :mod:`.reads`, :mod:`.results`, :mod:`.presets`, :mod:`.prompts`, :mod:`.admin`; the events come from :mod:`.announcer` through the ledger of
:mod:`.events`. Built by :func:`core.bootstrap.bootstrap`.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.config import Settings
from core.queue.worker import Worker
from core.services import admin, cancel, controls, describe, presets, prompts, reads, results, submit, upscale
from core.services.api import EventStream
from core.services.context import Context
from core.services.runtime import Runtime
from core.services.types import (
    Actor,
    Description,
    GuildLimits,
    ImagineOptions,
    JobView,
    ModerationView,
    PresetView,
    QuotaView,
    Receipt,
    RemixForm,
)
from core.storage.db import Database
from core.types import GeneratedImage


class ChantService:
    """Every user-facing refusal is a :class:`~core.services.types.UserError`."""

    def __init__(self, ctx: Context, runtime: Runtime) -> None:
        self._ctx = ctx
        self._runtime = runtime

    @property
    def settings(self) -> Settings:
        return self._ctx.settings

    @property
    def db(self) -> Database:
        return self._ctx.db

    @property
    def worker(self) -> Worker | None:
        """The in-process worker (benchmarks and tests read its counters)."""
        return self._ctx.worker

    # lifecycle and events

    async def start(self) -> None:
        await self._runtime.start()

    async def stop(self) -> None:
        await self._runtime.stop()
        self._ctx.images.close()

    def events(self) -> EventStream:
        return self._ctx.ledger.hub.subscribe()

    # submit, reroll, variation, cancel

    async def submit_imagine(
        self, actor: Actor, options: ImagineOptions, *, status_message_id: int | None = None
    ) -> Receipt:
        return await submit.submit_imagine(self._ctx, actor, options, status_message_id=status_message_id)

    async def reroll(self, actor: Actor, message_id: int, *, status_message_id: int | None = None) -> Receipt:
        return await submit.reroll(self._ctx, actor, message_id, status_message_id=status_message_id)

    async def variation(
        self, actor: Actor, message_id: int, *, status_message_id: int | None = None
    ) -> Receipt:
        return await submit.variation(self._ctx, actor, message_id, status_message_id=status_message_id)

    async def cancel(self, actor: Actor, job_id: int) -> JobView:
        return await cancel.cancel(self._ctx, actor, job_id)

    # the result controls

    async def reroll_job(self, actor: Actor, job_id: int, *, status_message_id: int | None = None) -> Receipt:
        return await controls.reroll_job(self._ctx, actor, job_id, status_message_id=status_message_id)

    async def vary(
        self, actor: Actor, job_id: int, index: int, strength: str, *, status_message_id: int | None = None
    ) -> Receipt:
        return await controls.vary(self._ctx, actor, job_id, index, strength, status_message_id=status_message_id)

    async def remix_form(self, actor: Actor, job_id: int, index: int) -> RemixForm:
        return await controls.remix_form(self._ctx, actor, job_id, index)

    async def remix(
        self,
        actor: Actor,
        job_id: int,
        index: int,
        *,
        prompt: str,
        negative: str,
        seed: int | None,
        status_message_id: int | None = None,
    ) -> Receipt:
        return await controls.remix(
            self._ctx, actor, job_id, index, prompt=prompt, negative=negative, seed=seed,
            status_message_id=status_message_id,
        )  # fmt: skip

    async def zoom_out(
        self, actor: Actor, job_id: int, index: int, factor: float, *, status_message_id: int | None = None
    ) -> Receipt:
        return await controls.zoom_out(self._ctx, actor, job_id, index, factor, status_message_id=status_message_id)

    async def pan(
        self, actor: Actor, job_id: int, index: int, direction: str, *, status_message_id: int | None = None
    ) -> Receipt:
        return await controls.pan(self._ctx, actor, job_id, index, direction, status_message_id=status_message_id)

    async def pick(self, actor: Actor, job_id: int, index: int) -> tuple[JobView, GeneratedImage]:
        return await controls.pick(self._ctx, actor, job_id, index)

    # reads

    async def show(self, actor: Actor, job_id: int) -> JobView:
        return await reads.show(self._ctx, actor, job_id)

    async def job_images(self, job_id: int) -> tuple[GeneratedImage, ...]:
        return await reads.job_images(self._ctx, job_id)

    async def job_for_message(self, message_id: int) -> JobView | None:
        return await reads.job_for_message(self._ctx, message_id)

    async def history(self, actor: Actor, page: int = 0, per_page: int = 10) -> tuple[list[JobView], int]:
        return await reads.history(self._ctx, actor, page, per_page)

    async def my_queue(self, actor: Actor) -> list[tuple[JobView, int]]:
        return await reads.my_queue(self._ctx, actor)

    async def quota_status(self, actor: Actor) -> QuotaView:
        return await reads.quota_status(self._ctx, actor)

    async def guild_limits(self, actor: Actor) -> GuildLimits:
        return await reads.guild_limits(self._ctx, actor)

    async def is_admin(self, actor: Actor) -> bool:
        return await reads.is_admin(self._ctx, actor)

    async def default_size(self, actor: Actor, model: str | None) -> tuple[int, int]:
        return await reads.default_size(self._ctx, actor, model)

    def model_names(self) -> list[str]:
        return self._ctx.catalog.models()

    def sampler_names(self) -> list[str]:
        return self._ctx.catalog.samplers()

    def lora_names(self) -> list[str]:
        return self._ctx.catalog.loras()

    def upscaler_names(self, *, hires: bool = False) -> list[str]:
        return self._ctx.catalog.hires_upscalers() if hires else upscale.upscaler_names(self._ctx)

    async def upscale(
        self,
        actor: Actor,
        *,
        job_id: int | None = None,
        index: int = 0,
        image: bytes | None = None,
        scale: float | None = None,
        upscaler: str | None = None,
        detail: float | None = None,
        size: tuple[int, int] | None = None,
        status_message_id: int | None = None,
    ) -> Receipt:
        return await upscale.upscale(
            self._ctx, actor, job_id=job_id, index=index, image=image, scale=scale, upscaler=upscaler,
            detail=detail, size=size, status_message_id=status_message_id,
        )  # fmt: skip

    async def describe(
        self, actor: Actor, *, image: bytes | None = None, job_id: int | None = None, index: int = 0
    ) -> Description:
        return await describe.describe(self._ctx, actor, image=image, job_id=job_id, index=index)

    async def upscale_message(
        self, actor: Actor, message_id: int, *, status_message_id: int | None = None
    ) -> Receipt:
        return await upscale.upscale_message(self._ctx, actor, message_id, status_message_id=status_message_id)

    def complete_prompt(self, text: str) -> list[tuple[str, str]]:
        return prompts.complete_prompt(self._ctx, text)

    # results and their messages

    async def record_result_messages(self, job_id: int, message_ids: Sequence[int]) -> None:
        await results.record_result_messages(self._ctx, job_id, message_ids)

    async def delete_result(self, actor: Actor, message_id: int) -> JobView:
        return await results.delete_result(self._ctx, actor, message_id)

    async def unposted_results(self) -> list[JobView]:
        return await results.unposted_results(self._ctx)

    async def live_status_jobs(self, limit: int = 1000) -> list[tuple[JobView, int | None]]:
        return await results.live_status_jobs(self._ctx, limit)

    # presets

    async def save_preset(
        self,
        actor: Actor,
        name: str,
        options: ImagineOptions | None,
        *,
        guild: bool = False,
        from_last_job: bool = False,
    ) -> None:
        await presets.save_preset(self._ctx, actor, name, options, guild=guild, from_last_job=from_last_job)

    async def delete_preset(self, actor: Actor, name: str, *, guild: bool = False) -> None:
        await presets.delete_preset(self._ctx, actor, name, guild=guild)

    async def list_presets(self, actor: Actor) -> list[PresetView]:
        return await presets.list_presets(self._ctx, actor)

    async def preset_names(self, actor: Actor, prefix: str) -> list[str]:
        return await presets.preset_names(self._ctx, actor, prefix)

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
    ) -> None:
        await admin.set_quota(
            self._ctx,
            actor,
            scope=scope,
            target_id=target_id,
            images=images,
            gpu_seconds=gpu_seconds,
            period=period,
        )

    async def admin_set_limit(self, actor: Actor, name: str, value: int) -> None:
        await admin.set_limit(self._ctx, actor, name, value)

    async def admin_set_default_model(self, actor: Actor, model: str) -> None:
        await admin.set_default_model(self._ctx, actor, model)

    async def admin_set_detailer_default(self, actor: Actor, on: bool) -> None:
        await admin.set_detailer_default(self._ctx, actor, on)

    async def admin_set_reroll_policy(self, actor: Actor, policy: str) -> None:
        await admin.set_reroll_policy(self._ctx, actor, policy)

    async def admin_set_guides(self, actor: Actor, allowed: bool) -> None:
        await admin.set_guides(self._ctx, actor, allowed)

    async def admin_banned_words(
        self, actor: Actor, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        return await admin.banned_words(self._ctx, actor, add=add, remove=remove)

    async def admin_set_channels(self, actor: Actor, channel_ids: Sequence[int]) -> None:
        await admin.set_channels(self._ctx, actor, channel_ids)

    async def admin_add_admin_role(self, actor: Actor, role_id: int) -> None:
        await admin.admin_roles(self._ctx, actor, role_id, add=True)

    async def admin_remove_admin_role(self, actor: Actor, role_id: int) -> None:
        await admin.admin_roles(self._ctx, actor, role_id, add=False)

    async def admin_stats(self, actor: Actor) -> dict[str, int | float]:
        return await admin.stats(self._ctx, actor)

    async def admin_moderation(
        self,
        actor: Actor,
        *,
        policy: str | None = None,
        threshold: float | None = None,
        age_restricted: str | None = None,
    ) -> ModerationView:
        return await admin.set_moderation(
            self._ctx, actor, policy_name=policy, threshold=threshold, age_restricted=age_restricted
        )

    async def admin_job(self, actor: Actor, job_id: int) -> JobView:
        return await admin.job(self._ctx, actor, job_id)
