"""Value types of the service layer: what the bot sends in and what it renders.

The bot builds an :class:`Actor` and :class:`ImagineOptions` from an interaction, calls core through
:class:`core.services.api.CoreAPI`, and turns :class:`Receipt`, :class:`JobView` and the job events
into Discord messages. A :class:`UserError` is always safe to show to the user as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from core.types import GeneratedImage, GenerationRequest


@dataclass(frozen=True)
class Actor:
    """Who is asking (built by the bot from the interaction)."""

    user_id: int
    guild_id: int | None  # None in DMs
    channel_id: int
    role_ids: tuple[int, ...] = ()
    manage_guild: bool = False  # the member's Manage Guild permission
    display_name: str = ""
    # The channel is age-restricted (Discord's nsfw flag; a thread: its parent's). None = not known (a
    # reaction in a channel the bot has not cached): a job's own channel then counts as the job recorded.
    age_restricted: bool | None = False


class UserError(Exception):
    """A refusal the user can act on; ``str(exc)`` is a complete, friendly, specific message.

    ``code`` names the kind ("limit.steps", "quota", "queue.user_limit", "prompt", "banned_word",
    "permission", "not_found", ...), ``column`` points into the prompt for prompt errors and
    ``retry_after_s`` says when a quota or queue limit frees up.
    """

    def __init__(
        self, code: str, message: str, *, column: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.column = column
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"UserError({self.code!r}, {str(self)!r})"


@dataclass(frozen=True)
class ImagineOptions:
    """Options of one /imagine; None means guild/preset/default."""

    prompt: str
    negative: str | None = None
    preset: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg: float | None = None
    cfg_rescale: float | None = None  # CFG rescale φ, 0..1 (v-prediction models); 0 = off
    sampler: str | None = None
    seed: int | None = None
    count: int | None = None
    model: str | None = None
    clip_skip: int | None = None
    # img2img / inpaint: the uploaded source (raw file bytes, checked by core) or a job whose first
    # image becomes the source; a mask (white = repaint) makes it an inpaint job.
    init_image: bytes | None = None
    mask_image: bytes | None = None
    source_job: int | None = None
    strength: float | None = None  # denoising strength, 0-1
    resize_mode: int | None = None  # A1111: 0 just resize, 1 crop and resize, 2 resize and fill
    mask_blur: int | None = None
    masked_only: bool | None = None  # A1111 "Inpaint area: Only masked"
    fill: int | None = None  # A1111 masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing
    # hires fix (txt2img)
    hires: bool | None = None
    hires_scale: float | None = None
    hires_steps: int | None = None  # 0 = as many as the first pass
    hires_strength: float | None = None
    upscaler: str | None = None  # Latent, Lanczos, ... (core.ranges.UPSCALERS) or an upscaler model
    # after decoding (issue 15): the server's face restorer and detailer model ([postprocess])
    face_restore: bool | None = None
    detailer: bool | None = None
    # Guiding images (issue 16, core.services.guides): a ControlNet unit from an attachment and a reference
    # image (IP-Adapter). control_start/control_end come from presets (no command option).
    control_image: bytes | None = None
    control_type: str | None = None  # a key of core.services.guides.CONTROL_TYPES ("canny", "canny map", …)
    control_weight: float | None = None
    control_start: float | None = None
    control_end: float | None = None
    reference_image: bytes | None = None
    reference_scale: float | None = None


@dataclass(frozen=True)
class GuildLimits:
    """The limits that apply to requests in one guild (or in DMs), for option choices."""

    max_steps: int
    max_pixels: int
    max_images: int
    max_input_pixels: int


@dataclass(frozen=True)
class Receipt:
    job_id: int
    position: int  # 1 = next to run (0 = running)
    eta_s: float | None


@dataclass(frozen=True)
class ImageModeration:
    """One image's moderation (:class:`core.moderation.Decision`) for the place it is posted to."""

    action: str  # post | spoiler | block
    score: float | None  # the classifier's; None = not checked
    reason: str  # one sentence for the requester or an admin
    rule: str = "off"  # dm | guild | age-restricted channel | off
    threshold: float | None = None
    charged: bool = True
    policy: dict | None = None  # the policy that applied (stored decisions; for admins)

    @property
    def blocked(self) -> bool:
        return self.action == "block"


@dataclass(frozen=True)
class JobView:
    """One stored job, for /history, /show, ℹ️ and captions."""

    id: int
    guild_id: int | None
    channel_id: int
    user_id: int
    state: str  # queued | running | done | failed | cancelled
    request: GenerationRequest
    seeds: tuple[int, ...]
    model: str | None  # the model it ran on (until then: the one asked for; None = the default)
    model_hash: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    parent_id: int | None
    kind: str  # imagine | reroll | variation | show | vary | remix | zoom | pan | upscale
    status_message_id: int | None
    result_message_ids: tuple[int, ...]
    # Per image, its moderation: where the job was asked (as stored by the worker), or for /show and the
    # controls where the image would be posted now. Empty: not decided yet (not done).
    moderation: tuple[ImageModeration, ...] = ()
    # The prompts as typed, when dynamic prompts / wildcards changed them (``request`` holds the
    # expansion): {"prompt": ..., "negative_prompt": ..., "wildcards": [...]}.
    prompt_templates: dict | None = None
    age_restricted: bool = False  # asked in an age-restricted channel


@dataclass(frozen=True)
class ModerationView:
    """A guild's moderation settings as they apply (its admins' choices, else the operator's)."""

    policy: str  # off | spoiler | block
    threshold: float
    age_restricted: str  # allow | spoiler | same
    classifier: bool  # the operator configured a classifier (without one every image is "not checked")
    dm_policy: str


@dataclass(frozen=True)
class RemixForm:
    """What the Remix form opens with: the image's prompts as typed (a dynamic prompt's template) and
    its seed."""

    prompt: str
    negative: str
    seed: int


@dataclass(frozen=True)
class QuotaView:
    """The actor's usage against the quota rule that applies to them (limit None = unlimited)."""

    used_images: int
    limit_images: int | None
    used_gpu_seconds: float
    limit_gpu_seconds: float | None
    period: str  # hour | day
    resets_at: datetime | None
    source: str = "default"  # default | guild | role | user: which rule applies


@dataclass(frozen=True)
class PresetView:
    name: str
    scope: str  # user | guild
    options: ImagineOptions


# Events the bot renders (async iterator from ChantService.events()).


@dataclass(frozen=True)
class JobQueued:
    job_id: int
    position: int
    eta_s: float | None


@dataclass(frozen=True)
class JobStarted:
    job_id: int


@dataclass(frozen=True)
class JobProgress:
    job_id: int
    step: int
    total: int
    eta_s: float | None
    preview_png: bytes | None


@dataclass(frozen=True)
class JobDone:
    job: JobView
    images: tuple[GeneratedImage, ...]
    control_maps: tuple[bytes, ...] = ()  # preprocessed ControlNet maps (PNG), posted with the images


@dataclass(frozen=True)
class JobFailed:
    job: JobView
    reason: str  # safe to show


@dataclass(frozen=True)
class JobCancelled:
    job: JobView


JobEvent = JobQueued | JobStarted | JobProgress | JobDone | JobFailed | JobCancelled


@dataclass(frozen=True)
class Description:
    """/describe's answer: up to four prompts (long to short) from a tagger's tags."""

    tagger: str
    prompts: tuple[str, ...]
    tags: tuple[tuple[str, float], ...]  # characters then general tags, with their probabilities
