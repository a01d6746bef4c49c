"""The seam between the bot and core: everything the bot may ask of core, typed.

:class:`core.services.ChantService` implements it (a test holds the two to the same signatures); the
bot's cogs and delivery see only this, so a change on either side shows at the seam.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from core.services.types import (
    Actor,
    Description,
    GuildLimits,
    ImagineOptions,
    JobEvent,
    JobView,
    ModerationView,
    PresetView,
    QuotaView,
    Receipt,
    RemixForm,
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
    # ``status_message_id``: the message (in the actor's channel) the bot shows the job's status in,
    # posted before the submit and stored with the job in the same transaction.
    async def submit_imagine(
        self, actor: Actor, options: ImagineOptions, *, status_message_id: int | None = None
    ) -> Receipt: ...

    async def reroll(
        self, actor: Actor, message_id: int, *, status_message_id: int | None = None
    ) -> Receipt: ...

    async def variation(
        self, actor: Actor, message_id: int, *, status_message_id: int | None = None
    ) -> Receipt: ...

    async def cancel(self, actor: Actor, job_id: int) -> JobView: ...

    # the result controls (buttons): one image of a job (index, 0-based) and what to make from it; each
    # that makes a job takes ``status_message_id`` as submit_imagine does
    async def reroll_job(self, actor: Actor, job_id: int, *, status_message_id: int | None = None) -> Receipt: ...

    async def vary(
        self, actor: Actor, job_id: int, index: int, strength: str, *, status_message_id: int | None = None
    ) -> Receipt: ...

    async def remix_form(self, actor: Actor, job_id: int, index: int) -> RemixForm: ...

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
    ) -> Receipt: ...

    async def zoom_out(
        self, actor: Actor, job_id: int, index: int, factor: float, *, status_message_id: int | None = None
    ) -> Receipt: ...

    async def pan(
        self, actor: Actor, job_id: int, index: int, direction: str, *, status_message_id: int | None = None
    ) -> Receipt: ...

    async def pick(self, actor: Actor, job_id: int, index: int) -> tuple[JobView, GeneratedImage]: ...

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

    def upscaler_names(self, *, hires: bool = False) -> list[str]:
        """Upscale jobs' upscalers: the installed models, then Lanczos and Nearest (``hires``: the hires
        fix's latent and image upscalers, then the models)."""
        ...

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
        """Upscale image ``index`` (0-based) of a job, or an uploaded image, by ``scale`` or to ``size``
        (``core.services.upscale``)."""
        ...

    async def describe(
        self, actor: Actor, *, image: bytes | None = None, job_id: int | None = None, index: int = 0
    ) -> Description:
        """/describe: up to four prompts for an image (a WD14 tagger's tags; ``core.services.describe``)."""
        ...

    async def upscale_message(
        self, actor: Actor, message_id: int, *, status_message_id: int | None = None
    ) -> Receipt:
        """⬆️ on a result: its first image ×2 with the default upscaler."""
        ...

    def complete_prompt(self, text: str) -> list[tuple[str, str]]: ...

    # results and their messages
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

    async def admin_set_detailer_default(self, actor: Actor, on: bool) -> None:
        """/imagine's detailer in this guild when the option is left out."""
        ...

    async def admin_set_reroll_policy(self, actor: Actor, policy: str) -> None: ...

    async def admin_set_guides(self, actor: Actor, allowed: bool) -> None: ...

    async def admin_banned_words(
        self, actor: Actor, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]: ...

    async def admin_set_channels(self, actor: Actor, channel_ids: Sequence[int]) -> None: ...

    async def admin_add_admin_role(self, actor: Actor, role_id: int) -> None: ...

    async def admin_remove_admin_role(self, actor: Actor, role_id: int) -> None: ...

    async def admin_stats(self, actor: Actor) -> dict[str, int | float]: ...

    async def admin_moderation(
        self,
        actor: Actor,
        *,
        policy: str | None = None,
        threshold: float | None = None,
        age_restricted: str | None = None,
    ) -> ModerationView: ...

    async def admin_job(self, actor: Actor, job_id: int) -> JobView: ...
