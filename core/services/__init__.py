"""The service layer the bot calls: :class:`ChantService` (what the bot may ask is
:class:`core.services.api.CoreAPI`), its value types and its events."""

from core.services.service import ChantService
from core.services.types import (
    Actor,
    Description,
    GuildLimits,
    ImageModeration,
    ImagineOptions,
    JobCancelled,
    JobDone,
    JobEvent,
    JobFailed,
    JobProgress,
    JobQueued,
    JobStarted,
    JobView,
    ModerationView,
    PresetView,
    QuotaView,
    Receipt,
    RemixForm,
    UserError,
)

__all__ = [
    "Actor",
    "ChantService",
    "Description",
    "GuildLimits",
    "ImageModeration",
    "ImagineOptions",
    "JobCancelled",
    "JobDone",
    "JobEvent",
    "JobFailed",
    "JobProgress",
    "JobQueued",
    "JobStarted",
    "JobView",
    "ModerationView",
    "PresetView",
    "QuotaView",
    "Receipt",
    "RemixForm",
    "UserError",
]
