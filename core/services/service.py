"""ChantService: everything the bot asks of core (submit, reroll, cancel, history, presets, admin).

Built by :func:`core.bootstrap.bootstrap` from Settings; the bot only translates interactions into
these calls and the results/events into messages. Each call is one transaction over the
repositories of :mod:`core.storage`; the jobs table is the queue (see :mod:`core.queue.worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import logging
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, select

from core.config import Settings
from core.queue import notify
from core.queue.notify import EVENTS, JOBS, Note
from core.queue.positions import QueuePositions
from core.queue.store import JobStore
from core.services.checks import find_banned, parse_for_user
from core.services.events import EventHub
from core.services.images import fit_size, load_mask, load_source
from core.services.types import (
    Actor,
    GuildLimits,
    ImagineOptions,
    JobCancelled,
    JobDone,
    JobEvent,
    JobFailed,
    JobProgress,
    JobQueued,
    JobStarted,
    JobView,
    PresetView,
    QuotaView,
    Receipt,
    UserError,
)
from core.storage.db import Database
from core.storage.models import Guild, Job
from core.storage.repositories import (
    GUILD_LIMIT_FIELDS,
    PresetLimitReached,
    QuotaExceeded,
    Repositories,
    quota_window,
)
from core.types import GeneratedImage, GenerationRequest, Mode


@dataclass(frozen=True)
class Caps:
    per_user: int
    per_guild: int
    global_: int

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
# 🔀: the same request and seed, plus a random A1111 variation seed mixed in at this strength: close
# to the original (composition kept), visibly different in the details.
VARIATION_STRENGTH = 0.25
# Hires fix upscalers the engine knows (core.engine.image_modes.upscaler_names(); a test keeps them equal).
UPSCALERS = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
    "Lanczos",
    "Nearest",
    "None",
)
MAX_HIRES_SCALE = 4.0
DEFAULT_SAMPLERS = ("Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DDIM", "LMS", "Heun")
HIRES_FIELDS = ("hires", "hires_scale", "hires_steps", "hires_strength", "upscaler")
PRESET_FIELDS = (
    "prompt",
    "negative",
    "width",
    "height",
    "steps",
    "cfg",
    "sampler",
    "count",
    "model",
    "clip_skip",
    *HIRES_FIELDS,
    "strength",  # applies when the preset is used with a source image (/img2img)
)
SETTABLE_LIMITS = (*GUILD_LIMIT_FIELDS,)


def utcnow() -> datetime:
    return datetime.now(UTC)



class ChantService:
    """See the contract in the module docstring; every user-facing refusal is a :class:`UserError`."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        engine: Any = None,
        worker: Any = None,
        hub: EventHub | None = None,
        store: JobStore | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.engine = engine
        self.worker = worker
        self.hub = hub or EventHub()
        self.store = store or JobStore(
            db,
            worker_id="service",
            lease_seconds=settings.queue.lease_seconds,
            max_attempts=settings.queue.max_attempts,
        )
        self.rng = rng or random.SystemRandom()
        self._started_at: datetime | None = None
        self._announced: set[int] = set()  # finished jobs this process already announced
        self._started: set[int] = set()
        self._positions: dict[int, int] = {}
        self._announcer: asyncio.Task | None = None  # recomputing queue positions (one at a time)
        self._announce_again = False
        self._tasks: list[asyncio.Task] = []
        self._pg_conn: Any = None
        self.queue = QueuePositions(self.store, default_weight=settings.queue.default_guild_weight)
        if worker is not None:
            worker.listener = self

    # ================================================================== submit, reroll, variation

    async def submit_imagine(self, actor: Actor, options: ImagineOptions) -> Receipt:
        async with self.db.session() as s:
            guild = await self._guild(s, actor)
            self._check_channel(actor, guild)
            request = await self._build_request(s, actor, guild, options)
        return await self._enqueue(actor, guild, request, kind="imagine")

    async def reroll(self, actor: Actor, message_id: int) -> Receipt:
        job, guild, stored = await self._job_for_action(actor, message_id)
        request = stored.replace(seed=self.rng.randrange(MAX_SEED + 1), subseed=-1)
        return await self._enqueue(actor, guild, request, kind="reroll", parent_id=job.id)

    async def variation(self, actor: Actor, message_id: int) -> Receipt:
        job, guild, base = await self._job_for_action(actor, message_id)
        request = base.replace(subseed=self.rng.randrange(MAX_SEED + 1), subseed_strength=VARIATION_STRENGTH)
        return await self._enqueue(actor, guild, request, kind="variation", parent_id=job.id)

    async def _job_for_action(
        self, actor: Actor, message_id: int
    ) -> tuple[Job, Guild | None, GenerationRequest]:
        async with self.db.session() as s:
            repos = Repositories(s)
            job = await repos.jobs.by_message(message_id)
            if job is None:
                raise UserError("not_found", "That message is not a chant result I know about.")
            guild = await self._guild(s, actor)
            self._check_channel(actor, guild)
            if (
                guild is not None
                and guild.reroll_policy == "owner"
                and job.user_id != actor.user_id
                and not self._admin(actor, guild)
            ):
                raise UserError(
                    "permission", "On this server only the person who made an image can reroll it."
                )
            # Re-check the request against today's limits (an admin may have lowered them).
            stored = await repos.jobs.request(job)  # with its input images (img2img, inpaint)
            self._check_limits(stored, guild)
            return job, guild, stored

    async def _enqueue(
        self,
        actor: Actor,
        guild: Guild | None,
        request: GenerationRequest,
        *,
        kind: str,
        parent_id: int | None = None,
    ) -> Receipt:
        caps = self._caps(guild)
        gid = actor.guild_id
        charges = {
            "images": float(request.count),
            "gpu_seconds": await self._estimate_seconds(request),
        }
        over: str | None = None
        try:
            async with self.db.transaction(write=True) as s:
                repos = Repositories(s)
                await repos.quotas.lock_user(gid, actor.user_id)
                n_user, n_guild, n_all = await _active_counts(s, gid, actor.user_id)
                if n_user >= caps.per_user:
                    over = "user"
                elif n_guild >= caps.per_guild:
                    over = "guild"
                elif n_all >= caps.global_:
                    over = "global"
                if over is not None:
                    raise _Over()
                allowances = await repos.quotas.effective(gid, actor.user_id, actor.role_ids)
                entries = await repos.quotas.reserve(gid, actor.user_id, charges, allowances)
                try:
                    job = await repos.jobs.add(
                        user_id=actor.user_id,
                        channel_id=actor.channel_id,
                        guild_id=gid,
                        request=request,
                        kind=kind,
                        parent_id=parent_id,
                    )
                except ValueError as exc:
                    raise UserError("invalid", f"I cannot store that request: {exc}.") from None
                await repos.quotas.attach(entries, job.id)
                await notify.send(s, JOBS, Note("queued", job.id))
                job_id = job.id
        except _Over:
            raise await self._cap_error(over or "global", caps, actor) from None
        except QuotaExceeded as exc:
            raise UserError("quota", self._quota_message(exc), retry_after_s=exc.retry_after_s) from None
        if self.worker is not None:
            self.worker.wake()
        positions = await self._queue_positions()
        position, eta = positions.get(job_id, (1, None))
        self._positions[job_id] = position
        self.hub.publish(JobQueued(job_id, position, eta))
        return Receipt(job_id, position, eta)

    async def _estimate_seconds(self, request: GenerationRequest) -> float:
        return await self.queue.estimate_seconds(request)

    @staticmethod
    def _quota_message(exc: QuotaExceeded) -> str:
        u = exc.usage
        unit = "images" if u.unit == "images" else "GPU seconds"
        return (
            f"You have used {u.used:g} of your {u.allowance:g} {unit} this {u.period}, and this request "
            f"needs {exc.requested:g}. Your quota resets at {u.resets_at:%H:%M} UTC "
            f"(<t:{int(u.resets_at.timestamp())}:R>)."
        )

    async def _cap_error(self, limit: str, caps: Caps, actor: Actor) -> UserError:
        retry = await self.queue.retry_hint(limit, actor.guild_id, actor.user_id)
        when = (
            f" Try again in about {max(1, round(retry))} s."
            if retry is not None
            else " Try again when one finishes."
        )
        if limit == "user":
            msg = f"You already have {caps.per_user} jobs waiting or running, the most allowed here.{when}"
            code = "queue.user_limit"
        elif limit == "guild":
            msg = f"This server already has {caps.per_guild} jobs waiting or running, its limit.{when}"
            code = "queue.guild_limit"
        else:
            msg = f"The bot's queue is full ({caps.global_} jobs).{when}"
            code = "queue.global_limit"
        return UserError(code, msg, retry_after_s=retry)

    # ================================================================== building a request

    def _limits(self, guild: Guild | None) -> dict[str, int]:
        base = self.settings.limits
        out = {name: getattr(base, name) for name in GUILD_LIMIT_FIELDS}
        if guild is not None:
            for name in GUILD_LIMIT_FIELDS:
                value = getattr(guild, name)
                if value is not None:
                    out[name] = value
        return out

    def _caps(self, guild: Guild | None) -> Caps:
        lim = self._limits(guild)
        return Caps(
            lim["max_queued_per_user"], lim["max_queued_per_guild"], self.settings.limits.max_queued_global
        )

    async def _guild(self, s, actor: Actor) -> Guild | None:
        if actor.guild_id is None:
            return None
        return await Repositories(s).guilds.get(actor.guild_id)

    def _check_channel(self, actor: Actor, guild: Guild | None) -> None:
        if actor.guild_id is None and self.settings.discord.dm_mode == "refuse":
            raise UserError("dm", "I do not take requests in direct messages. Use /imagine in a server.")
        if guild is not None and guild.channel_ids and actor.channel_id not in guild.channel_ids:
            channels = ", ".join(f"<#{c}>" for c in guild.channel_ids[:10])
            raise UserError("channel", f"I only answer in these channels on this server: {channels}.")

    async def _preset_params(self, s, actor: Actor, name: str) -> dict[str, Any]:
        repos = Repositories(s)
        try:
            preset = await repos.presets.get("user", actor.user_id, name)
            if preset is None and actor.guild_id is not None:
                preset = await repos.presets.get("guild", actor.guild_id, name)
        except ValueError as exc:
            raise UserError("preset", f"That is not a valid preset name: {exc}.") from None
        if preset is None:
            raise UserError("not_found", f"There is no preset called {name!r}. See /preset list.")
        return dict(preset.params)

    async def _build_request(
        self, s, actor: Actor, guild: Guild | None, options: ImagineOptions
    ) -> GenerationRequest:
        preset = await self._preset_params(s, actor, options.preset) if options.preset else {}
        prompt = options.prompt
        fragment = preset.get("prompt") or ""
        if fragment:
            prompt = (
                fragment.replace("{prompt}", prompt) if "{prompt}" in fragment else f"{prompt}, {fragment}"
            )

        def pick(name: str, default: Any) -> Any:
            value = getattr(options, name)
            if value is not None:
                return value
            return preset.get(name, default) if preset.get(name) is not None else default

        default_model = (
            guild.default_model if guild is not None else None
        ) or self.settings.engine.default_model
        seed = options.seed if options.seed is not None and options.seed != -1 else None
        if seed is None:
            seed = self.rng.randrange(MAX_SEED + 1)
        try:
            request = GenerationRequest(
                prompt=prompt,
                negative_prompt=pick("negative", "") or "",
                width=int(pick("width", 512)),
                height=int(pick("height", 512)),
                steps=int(pick("steps", 20)),
                cfg_scale=float(pick("cfg", 7.0)),
                sampler=str(pick("sampler", "Euler a")),
                seed=int(seed),
                count=int(pick("count", 1)),
                model=pick("model", default_model),
                clip_skip=pick("clip_skip", None),
            )
        except (TypeError, ValueError) as exc:
            raise UserError("invalid", f"One of the options has the wrong type: {exc}.") from None
        # A preset's hires fix applies to text-to-image, its strength to image-to-image.
        has_source = options.init_image is not None or options.source_job is not None
        from_preset = {
            name: preset[name]
            for name in (("strength",) if has_source else HIRES_FIELDS)
            if getattr(options, name) is None and preset.get(name) is not None
        }
        if from_preset:
            options = dataclasses.replace(options, **from_preset)
        request = await self._image_modes(s, actor, guild, options, request)
        self._check_limits(request, guild)
        self._check_text(request, guild)
        return request

    async def _image_modes(
        self, s, actor: Actor, guild: Guild | None, options: ImagineOptions, request: GenerationRequest
    ) -> GenerationRequest:
        """img2img / inpaint from an uploaded image or an earlier job's first image; hires fix."""
        o = options
        changes: dict[str, Any] = {}
        for name, value in (("strength", o.strength), ("hires_strength", o.hires_strength)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise UserError("invalid", f"{name} must be between 0 and 1 (you gave {value:g}).")
        data = o.init_image
        if o.source_job is not None:
            if data is not None:
                raise UserError("invalid", "Give either an image or a job to start from, not both.")
            data = await self._job_source(s, actor, o.source_job)
        if data is None:
            if o.mask_image is not None:
                raise UserError("invalid", "A mask needs a source image to repaint: attach one too.")
            image_options = ("strength", "resize_mode", "mask_blur", "masked_only", "fill")
            given = [n for n in image_options if getattr(o, n) is not None]
            if given:
                raise UserError("invalid", f"{', '.join(given)} only apply with a source image.")
        else:
            max_input = self._max_input_pixels()
            source = load_source(data, max_pixels=max_input)
            mask = (
                load_mask(o.mask_image, (source.width, source.height), max_pixels=max_input)
                if o.mask_image is not None
                else None
            )
            inpaint = mask is not None or source.transparent  # transparent pixels are repainted
            changes.update(
                init_image=source.png, mask_image=mask, mode=Mode.INPAINT if inpaint else Mode.IMG2IMG
            )
            if o.width is None and o.height is None:  # no size asked for: the source's, within the limit
                changes["width"], changes["height"] = fit_size(
                    source.width, source.height, self._limits(guild)["max_pixels"]
                )
            for name, field in (
                ("strength", "denoising_strength"),
                ("resize_mode", "resize_mode"),
                ("mask_blur", "mask_blur"),
                ("masked_only", "inpaint_full_res"),
                ("fill", "inpainting_fill"),
            ):
                if getattr(o, name) is not None:
                    changes[field] = getattr(o, name)
        hires_given = [
            n
            for n in ("hires_scale", "hires_steps", "hires_strength", "upscaler")
            if getattr(o, n) is not None
        ]
        if o.hires or (hires_given and o.hires is None):
            if data is not None:
                raise UserError(
                    "invalid", "Hires fix is for text-to-image; leave it off with a source image."
                )
            changes["enable_hr"] = True
            for name, field in (
                ("hires_scale", "hr_scale"),
                ("hires_steps", "hr_second_pass_steps"),
                ("hires_strength", "hr_denoising_strength"),
                ("upscaler", "hr_upscaler"),
            ):
                if getattr(o, name) is not None:
                    changes[field] = getattr(o, name)
        elif hires_given:
            raise UserError("invalid", f"{', '.join(hires_given)} only apply with hires on.")
        try:
            return request.replace(**changes) if changes else request
        except (TypeError, ValueError) as exc:
            raise UserError("invalid", f"One of the options has the wrong type: {exc}.") from None

    def _max_input_pixels(self) -> int:
        """The engine's limit for uploaded sources and masks (``engine.max_input_megapixels``)."""
        return int(self.settings.engine.max_input_megapixels * 1_000_000)

    async def _job_source(self, s, actor: Actor, job_id: int) -> bytes:
        """The first image of a job the actor may see (the "use as source" path)."""
        repos = Repositories(s)
        job = await repos.jobs.get(job_id)
        if job is None or not self._may_see(actor, job):
            raise UserError("not_found", f"There is no job {job_id} that you can see.")
        rows = [r for r in await repos.jobs.images(job_id) if r.png is not None]
        if not rows:
            raise UserError(
                "not_found",
                f"Job {job_id} has no image to start from (it is {job.state}, or its image expired).",
            )
        return rows[0].png

    def _check_limits(self, r: GenerationRequest, guild: Guild | None) -> None:
        lim = self._limits(guild)
        if not r.prompt.strip():
            raise UserError("prompt", "The prompt is empty: describe the image you want.")
        if len(r.prompt) > self.settings.limits.max_prompt_chars:
            raise UserError(
                "limit.prompt",
                f"The prompt is {len(r.prompt)} characters long; the limit is {self.settings.limits.max_prompt_chars}.",
            )
        if not 1 <= r.steps <= lim["max_steps"]:
            raise UserError(
                "limit.steps",
                f"Steps must be between 1 and {lim['max_steps']} here (you asked for {r.steps}).",
            )
        for name, value in (("width", r.width), ("height", r.height)):
            if value < 64 or value % 8:
                raise UserError(
                    "limit.size",
                    f"The {name} must be a multiple of 8 and at least 64 (you asked for {value}).",
                )
        if r.width * r.height > lim["max_pixels"]:
            side = int(lim["max_pixels"] ** 0.5) // 8 * 8
            raise UserError(
                "limit.pixels",
                f"{r.width}×{r.height} is larger than this server allows ({lim['max_pixels']:,} pixels, "
                f"e.g. {side}×{side}). Choose a smaller size.",
            )
        if not 1 <= r.count <= lim["max_images"]:
            raise UserError(
                "limit.images",
                f"Count must be between 1 and {lim['max_images']} here (you asked for {r.count}).",
            )
        if not 1.0 <= r.cfg_scale <= 30.0:
            raise UserError(
                "limit.cfg", f"CFG scale must be between 1 and 30 (you asked for {r.cfg_scale:g})."
            )
        if not 0 <= r.seed <= MAX_SEED:
            raise UserError("seed", f"The seed must be between 0 and {MAX_SEED} (or -1 for random).")
        if r.clip_skip is not None and not 1 <= r.clip_skip <= 12:
            raise UserError("clip_skip", f"CLIP skip must be between 1 and 12 (you asked for {r.clip_skip}).")
        self._check_modes(r, lim)
        samplers = self.sampler_names()
        if samplers and r.sampler not in samplers:
            raise UserError("sampler", f"I do not know the sampler {r.sampler!r}. Pick one from the list.")
        models = self.model_names()
        if models and r.model is not None and r.model not in models:
            raise UserError("model", f"I do not know the model {r.model!r}. Pick one from the list.")

    def _check_modes(self, r: GenerationRequest, lim: dict[str, int]) -> None:
        """img2img / inpaint / hires values (checked again on reroll, against today's limits)."""
        if r.mode != Mode.TXT2IMG:
            if r.init_image is None:
                raise UserError("invalid", "This job needs its source image, which is no longer stored.")
            if not 0.0 <= r.denoising_strength <= 1.0:
                raise UserError(
                    "invalid", f"strength must be between 0 and 1 (you gave {r.denoising_strength:g})."
                )
            if r.resize_mode not in (0, 1, 2):
                raise UserError("invalid", "resize_mode must be 0 (just resize), 1 (crop) or 2 (fill).")
            if r.inpainting_fill not in (0, 1, 2, 3):
                raise UserError(
                    "invalid", "fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)."
                )
            if not 0 <= r.mask_blur <= 64:
                raise UserError("invalid", f"mask_blur must be between 0 and 64 (you gave {r.mask_blur}).")
        if r.enable_hr:
            if r.hr_upscaler not in UPSCALERS:
                raise UserError(
                    "invalid",
                    f"I do not know the upscaler {r.hr_upscaler!r}; choose one of: {', '.join(UPSCALERS)}.",
                )
            if not 1.0 <= r.hr_scale <= MAX_HIRES_SCALE:
                raise UserError(
                    "invalid",
                    f"hires_scale must be between 1 and {MAX_HIRES_SCALE:g} (you gave {r.hr_scale:g}).",
                )
            if not 0.0 < r.hr_denoising_strength <= 1.0:
                raise UserError(
                    "invalid",
                    f"hires_strength must be above 0 and at most 1 (you gave {r.hr_denoising_strength:g}).",
                )
            if not 0 <= r.hr_second_pass_steps <= lim["max_steps"]:
                raise UserError(
                    "limit.steps",
                    f"hires_steps must be between 0 and {lim['max_steps']} here "
                    f"(you asked for {r.hr_second_pass_steps}).",
                )
            w, h = (
                (r.hr_resize_x, r.hr_resize_y)
                if r.hr_resize_x and r.hr_resize_y
                else (int(r.width * r.hr_scale) // 8 * 8, int(r.height * r.hr_scale) // 8 * 8)
            )
            if w * h > lim["max_pixels"]:
                raise UserError(
                    "limit.pixels",
                    f"Hires fix would make {w}×{h}, larger than this server allows "
                    f"({lim['max_pixels']:,} pixels). Lower hires_scale or the size.",
                )

    def _check_networks(self, plan, field: str) -> None:
        """Unknown LoRA names are refused before queueing, with the closest known names."""
        loras = [n for n in plan.networks if n.kind == "lora" and n.positional]
        if not loras:
            return
        dirs = [d for d in self.settings.engine.lora_dirs if Path(d).is_dir()]
        if not dirs:
            return  # the folders live with a remote worker: the engine checks the names at run time
        known = self.lora_names()
        lowered = {k.lower(): k for k in known}
        for net in loras:
            name = net.positional[0]
            if name in known or name.lower() in lowered:
                continue
            close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
            hint = (
                f" Did you mean {', '.join(repr(lowered[c]) for c in close)}?"
                if close
                else " See /loras for the list."
            )
            raise UserError("lora", f"Your {field} uses the LoRA {name!r}, which I do not have.{hint}")

    def lora_names(self) -> list[str]:
        """LoRA names for autocomplete and /loras (file stems in the configured folders)."""
        from core.engine.networks.resolve import list_networks  # torch-free

        try:
            return list_networks(self.settings.engine.lora_dirs)
        except (OSError, ValueError):
            log.exception("could not list the LoRA folders")
            return []

    async def guild_limits(self, actor: Actor) -> GuildLimits:
        """The limits that apply to the actor's requests here (for size choices and option ranges)."""
        async with self.db.session() as s:
            lim = self._limits(await self._guild(s, actor))
        return GuildLimits(
            max_steps=lim["max_steps"],
            max_pixels=lim["max_pixels"],
            max_images=lim["max_images"],
            max_input_pixels=self._max_input_pixels(),
        )

    def _check_text(self, r: GenerationRequest, guild: Guild | None) -> None:
        banned = list(guild.banned_words) if guild is not None else []
        for field, value in (("prompt", r.prompt), ("negative prompt", r.negative_prompt)):
            if not value:
                continue
            plan = parse_for_user(value, r.steps, negative=field != "prompt")
            self._check_networks(plan, field)
            word = find_banned(plan, banned) if banned else None
            if word is not None:
                raise UserError(
                    "banned_word", f"Your {field} contains {word!r}, which this server does not allow."
                )

    # ================================================================== reading jobs

    async def show(self, actor: Actor, job_id: int) -> JobView:
        async with self.db.session() as s:
            job = await Repositories(s).jobs.get(job_id)
            if job is None or not self._may_see(actor, job):
                raise UserError("not_found", f"There is no job {job_id} that you can see.")
            return await self._view(s, job)

    @staticmethod
    def _may_see(actor: Actor, job: Job) -> bool:
        return job.user_id == actor.user_id or (job.guild_id is not None and job.guild_id == actor.guild_id)

    async def job_images(self, job_id: int) -> tuple[GeneratedImage, ...]:
        async with self.db.session() as s:
            rows = await Repositories(s).jobs.images(job_id)
            return tuple(
                GeneratedImage(r.png, r.seed, r.subseed, r.infotext) for r in rows if r.png is not None
            )

    async def job_for_message(self, message_id: int) -> JobView | None:
        async with self.db.session() as s:
            job = await Repositories(s).jobs.by_message(message_id)
            return None if job is None else await self._view(s, job)

    async def record_status_message(self, job_id: int, channel_id: int, message_id: int) -> None:
        async with self.db.transaction(write=True) as s:
            await Repositories(s).jobs.set_status_message(job_id, channel_id, message_id)

    async def record_result_messages(self, job_id: int, message_ids: Sequence[int]) -> None:
        async with self.db.transaction(write=True) as s:
            repos = Repositories(s)
            job = await repos.jobs.get(job_id)
            if job is None:
                raise UserError("not_found", f"There is no job {job_id}.")
            await repos.jobs.mark_posted(job_id)
            await repos.jobs.add_result_messages(job_id, job.channel_id, list(message_ids))

    async def unposted_results(self) -> list[JobView]:
        """Done/failed jobs never posted that finished before this service started (restart recovery).

        Jobs that finish later arrive as events; together each result reaches the bot once.
        """
        # The first of start() and this call draws the line between "backlog" and "events".
        cutoff = self._started_at = self._started_at or utcnow()
        async with self.db.session() as s:
            jobs = await Repositories(s).jobs.unposted(limit=1000)
            out = []
            for job in jobs:
                if job.finished_at is not None and job.finished_at <= cutoff:
                    self._announced.add(job.id)
                    out.append(await self._view(s, job))
            return out

    async def live_status_jobs(self, limit: int = 1000) -> list[tuple[JobView, int | None]]:
        """Queued and running jobs that have a status message (restart recovery: the bot tracks them
        again, so their live progress continues), each with the result message a reroll or variation
        answers (its parent's first result), or None."""
        async with self.db.session() as s:
            repos = Repositories(s)
            rows = await s.scalars(
                select(Job)
                .where(Job.state.in_(("queued", "running")), Job.status_message_id.is_not(None))
                .order_by(Job.id)
                .limit(limit)
            )
            out = []
            for job in rows:
                reply_to = None
                if job.parent_id is not None and job.kind in ("reroll", "variation"):
                    parent_messages = await repos.jobs.result_message_ids(job.parent_id)
                    reply_to = parent_messages[0] if parent_messages else None
                out.append((await self._view(s, job), reply_to))
            return out

    async def delete_result(self, actor: Actor, message_id: int) -> JobView:
        async with self.db.transaction(write=True) as s:
            repos = Repositories(s)
            job = await repos.jobs.by_message(message_id)
            if job is None:
                raise UserError("not_found", "That message is not a chant result I know about.")
            guild = await self._guild(s, actor)
            if job.user_id != actor.user_id:
                if not self._admin(actor, guild) or job.guild_id != actor.guild_id:
                    raise UserError(
                        "permission", "Only the person who made this image or a server admin can delete it."
                    )
                await repos.audit.add(
                    actor.guild_id, actor.user_id, "result.delete", str(job.id), {"message_id": message_id}
                )
            view = await self._view(s, job)
            await repos.jobs.forget_messages([message_id])
            return view

    async def cancel(self, actor: Actor, job_id: int) -> JobView:
        async with self.db.transaction(write=True) as s:
            repos = Repositories(s)
            job = await repos.jobs.get(job_id, for_update=not self.db.is_sqlite)
            if job is None or not self._may_see(actor, job):
                raise UserError("not_found", f"There is no job {job_id} that you can see.")
            guild = await self._guild(s, actor)
            if job.user_id != actor.user_id:
                if not self._admin(actor, guild) or job.guild_id != actor.guild_id:
                    raise UserError(
                        "permission",
                        "Only the person who asked for this job or a server admin can cancel it.",
                    )
                await repos.audit.add(
                    actor.guild_id, actor.user_id, "job.cancel", str(job_id), {"owner": job.user_id}
                )
            was = job.state
            if not await repos.jobs.cancel(job_id):
                raise UserError(
                    "not_cancellable", f"Job {job_id} is already {job.state}; there is nothing to cancel."
                )
            await repos.quotas.refund(job_id)
            await notify.send(s, JOBS, Note("cancel", job_id))
            await s.refresh(job)
            view = await self._view(s, job)
        if self.worker is not None:
            if was == "running":
                self.worker.cancel(job_id)
            self.worker.wake()
        self._announced.add(job_id)
        self.hub.publish(JobCancelled(view))
        return view

    async def history(self, actor: Actor, page: int = 0, per_page: int = 10) -> tuple[list[JobView], int]:
        if page < 0 or not 1 <= per_page <= 100:
            raise UserError("invalid", "Pages start at 0 and hold 1 to 100 jobs.")
        async with self.db.session() as s:
            repos = Repositories(s)
            jobs, total = await repos.jobs.history_page(actor.user_id, page=page, per_page=per_page)
            return [await self._view(s, j) for j in jobs], total

    async def my_queue(self, actor: Actor) -> list[tuple[JobView, int]]:
        positions = await self._queue_positions()
        async with self.db.session() as s:
            rows = await s.scalars(
                select(Job)
                .where(Job.user_id == actor.user_id, Job.state.in_(("queued", "running")))
                .order_by(Job.id)
            )
            out = []
            for job in rows:
                out.append((await self._view(s, job), positions.get(job.id, (0, None))[0]))
            return sorted(out, key=lambda pair: (pair[1], pair[0].id))

    async def quota_status(self, actor: Actor) -> QuotaView:
        async with self.db.session() as s:
            repos = Repositories(s)
            allowances = await repos.quotas.effective(actor.guild_id, actor.user_id, actor.role_ids)
            usage = await repos.quotas.status(actor.guild_id, actor.user_id, allowances)
            by_unit = {u.unit: u for u in usage}
            source = {a.unit: a.scope for a in allowances}
            main = by_unit.get("images") or by_unit.get("gpu_seconds")
            period = main.period if main is not None else "day"
            start, _ = quota_window(period, utcnow())
            used_images = (
                by_unit["images"].used
                if "images" in by_unit
                else await repos.quotas.used(actor.guild_id, actor.user_id, "images", start)
            )
            used_gpu = (
                by_unit["gpu_seconds"].used
                if "gpu_seconds" in by_unit
                else await repos.quotas.used(actor.guild_id, actor.user_id, "gpu_seconds", start)
            )
            return QuotaView(
                used_images=round(used_images),
                limit_images=int(by_unit["images"].allowance) if "images" in by_unit else None,
                used_gpu_seconds=round(used_gpu, 1),
                limit_gpu_seconds=by_unit["gpu_seconds"].allowance if "gpu_seconds" in by_unit else None,
                period=period,
                resets_at=main.resets_at if main is not None else None,
                source=source.get(main.unit, "default") if main is not None else "default",
            )

    async def _view(self, s, job: Job) -> JobView:
        repos = Repositories(s)
        seeds = tuple(await repos.jobs.seeds(job.id)) or tuple(job.seed + i for i in range(job.count))
        return JobView(
            id=job.id,
            guild_id=job.guild_id,
            channel_id=job.channel_id,
            user_id=job.user_id,
            state=job.state,
            request=GenerationRequest.from_dict(job.params),
            seeds=seeds,
            model_hash=job.model_hash,
            error=job.error,
            created_at=job.created_at,
            finished_at=job.finished_at,
            parent_id=job.parent_id,
            kind=job.kind,
            status_message_id=job.status_message_id,
            result_message_ids=tuple(await repos.jobs.result_message_ids(job.id)),
        )

    async def view(self, job_id: int) -> JobView | None:
        async with self.db.session() as s:
            job = await Repositories(s).jobs.get(job_id)
            return None if job is None else await self._view(s, job)

    # ================================================================== queue positions

    async def _queue_positions(self) -> dict[int, tuple[int, float | None]]:
        return await self.queue.positions()

    async def _announce_positions(self) -> None:
        positions = await self._queue_positions()
        for job_id, (position, eta) in positions.items():
            if position and self._positions.get(job_id) != position:
                self._positions[job_id] = position
                self.hub.publish(JobQueued(job_id, position, eta))
        for job_id in list(self._positions):
            if job_id not in positions:
                del self._positions[job_id]

    # ================================================================== presets

    async def save_preset(
        self,
        actor: Actor,
        name: str,
        options: ImagineOptions | None,
        *,
        guild: bool = False,
        from_last_job: bool = False,
    ) -> None:
        if from_last_job:
            async with self.db.session() as s:
                last = await Repositories(s).jobs.last_for_user(actor.user_id)
            if last is None:
                raise UserError("not_found", "You have no jobs yet to save a preset from.")
            r = GenerationRequest.from_dict(last.params)
            params: dict[str, Any] = {
                "prompt": r.prompt,
                "negative": r.negative_prompt or None,
                "width": r.width,
                "height": r.height,
                "steps": r.steps,
                "cfg": r.cfg_scale,
                "sampler": r.sampler,
                "count": r.count,
                "model": r.model,
                "clip_skip": r.clip_skip,
            }
            if r.enable_hr:
                params.update(
                    hires=True,
                    hires_scale=r.hr_scale,
                    hires_steps=r.hr_second_pass_steps,
                    hires_strength=r.hr_denoising_strength,
                    upscaler=r.hr_upscaler,
                )
            if r.mode != Mode.TXT2IMG:
                params["strength"] = r.denoising_strength
        elif options is not None:
            params = {f: getattr(options, f) for f in PRESET_FIELDS}
        else:
            raise UserError("invalid", "Give the preset some options, or save it from your last job.")
        params = {k: v for k, v in params.items() if v is not None and v != ""}
        if len(params) == 0:
            raise UserError("invalid", "A preset needs at least one option.")
        async with self.db.transaction(write=True) as s:
            repos = Repositories(s)
            owner_kind, owner_id = "user", actor.user_id
            if guild:
                await self._require_admin(s, actor)
                owner_kind, owner_id = "guild", actor.guild_id
            try:
                await repos.presets.save(owner_kind, owner_id, name, params, created_by=actor.user_id)
            except PresetLimitReached as exc:
                raise UserError("preset.limit", f"{exc}.") from None
            except ValueError as exc:
                raise UserError("preset", f"I cannot save that preset: {exc}.") from None
            if guild:
                await repos.audit.add(actor.guild_id, actor.user_id, "preset.save", name, {"params": params})

    async def delete_preset(self, actor: Actor, name: str, *, guild: bool = False) -> None:
        async with self.db.transaction(write=True) as s:
            repos = Repositories(s)
            owner_kind, owner_id = "user", actor.user_id
            if guild:
                await self._require_admin(s, actor)
                owner_kind, owner_id = "guild", actor.guild_id
            try:
                deleted = await repos.presets.delete(owner_kind, owner_id, name)
            except ValueError as exc:
                raise UserError("preset", f"That is not a valid preset name: {exc}.") from None
            if deleted is None:
                raise UserError(
                    "not_found", f"There is no {'server ' if guild else ''}preset called {name!r}."
                )
            if guild:
                await repos.audit.add(
                    actor.guild_id, actor.user_id, "preset.delete", name, {"params": deleted.params}
                )

    async def list_presets(self, actor: Actor) -> list[PresetView]:
        async with self.db.session() as s:
            repos = Repositories(s)
            out = [
                PresetView(p.name, "user", _options(p.params))
                for p in await repos.presets.list("user", actor.user_id)
            ]
            if actor.guild_id is not None:
                out += [
                    PresetView(p.name, "guild", _options(p.params))
                    for p in await repos.presets.list("guild", actor.guild_id)
                ]
            return out

    async def preset_names(self, actor: Actor, prefix: str) -> list[str]:
        async with self.db.session() as s:
            repos = Repositories(s)
            try:
                names = await repos.presets.names("user", actor.user_id, prefix)
                if actor.guild_id is not None and len(names) < 25:
                    names += await repos.presets.names("guild", actor.guild_id, prefix, limit=25 - len(names))
            except ValueError:
                return []
            return list(dict.fromkeys(names))[:25]

    # ================================================================== admin

    def _admin(self, actor: Actor, guild: Guild | None) -> bool:
        if actor.guild_id is None:
            return False
        if actor.manage_guild:
            return True
        return guild is not None and any(r in guild.admin_role_ids for r in actor.role_ids)

    async def is_admin(self, actor: Actor) -> bool:
        async with self.db.session() as s:
            return self._admin(actor, await self._guild(s, actor))

    async def _require_admin(self, s, actor: Actor) -> None:
        if actor.guild_id is None:
            raise UserError("permission", "Admin settings belong to a server; use this command in one.")
        if not self._admin(actor, await self._guild(s, actor)):
            raise UserError(
                "permission",
                "Only server admins (Manage Server permission or a chant admin role) can do this.",
            )

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
        if scope not in ("guild", "role", "user"):
            raise UserError("invalid", "The quota scope must be guild, role or user.")
        if scope != "guild" and target_id is None:
            raise UserError("invalid", f"Name the {scope} this quota is for.")
        if period not in ("hour", "day"):
            raise UserError("invalid", "The quota period must be hour or day.")
        for label, value in (("images", images), ("GPU seconds", gpu_seconds)):
            if value is not None and value < 0:
                raise UserError("invalid", f"A quota of {label} cannot be negative.")
        async with self.db.transaction(write=True) as s:
            await self._require_admin(s, actor)
            repos = Repositories(s)
            for unit, value in (("images", images), ("gpu_seconds", gpu_seconds)):
                if value is None:
                    await repos.quotas.delete_rule(actor.guild_id, scope, target_id, unit, period)
                else:
                    await repos.quotas.set_rule(
                        actor.guild_id, scope, target_id, unit, period, value, updated_by=actor.user_id
                    )
            await repos.audit.add(
                actor.guild_id,
                actor.user_id,
                "quota.set",
                f"{scope}:{target_id or 0}",
                {"images": images, "gpu_seconds": gpu_seconds, "period": period},
            )

    async def admin_set_limit(self, actor: Actor, name: str, value: int) -> None:
        if name not in SETTABLE_LIMITS:
            raise UserError(
                "invalid", f"Unknown limit {name!r}; choose one of: {', '.join(SETTABLE_LIMITS)}."
            )
        ceiling = getattr(self.settings.limits, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ceiling:
            raise UserError(
                "invalid", f"{name} must be a whole number from 1 to {ceiling} (the bot operator's maximum)."
            )
        await self._admin_update(actor, "limit.set", name, **{name: value})

    async def admin_set_default_model(self, actor: Actor, model: str) -> None:
        names = self.model_names()
        if names and model not in names:
            raise UserError("model", f"I do not know the model {model!r}. Pick one from the list.")
        await self._admin_update(actor, "model.default", model, default_model=model)

    async def admin_set_reroll_policy(self, actor: Actor, policy: str) -> None:
        if policy not in ("everyone", "owner"):
            raise UserError("invalid", "The reroll policy must be 'everyone' or 'owner'.")
        await self._admin_update(actor, "reroll.policy", policy, reroll_policy=policy)

    async def _admin_update(self, actor: Actor, action: str, target: str, **changes: Any) -> None:
        async with self.db.transaction(write=True) as s:
            await self._require_admin(s, actor)
            repos = Repositories(s)
            try:
                before = await repos.guilds.update(actor.guild_id, **changes)
            except ValueError as exc:
                raise UserError("invalid", f"{exc}.") from None
            await repos.audit.add(
                actor.guild_id, actor.user_id, action, target, {"before": before, "after": changes}
            )

    async def admin_banned_words(
        self, actor: Actor, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> list[str]:
        async with self.db.transaction(write=True) as s:
            await self._require_admin(s, actor)
            repos = Repositories(s)
            try:
                words = list((await repos.guilds.get_or_create(actor.guild_id)).banned_words)
                if add:
                    words = await repos.guilds.add_banned_words(actor.guild_id, add)
                if remove:
                    words = await repos.guilds.remove_banned_words(actor.guild_id, remove)
            except ValueError as exc:
                raise UserError("invalid", f"{exc}.") from None
            if add or remove:
                await repos.audit.add(
                    actor.guild_id,
                    actor.user_id,
                    "banned_words",
                    "",
                    {"add": list(add), "remove": list(remove)},
                )
            return words

    async def admin_set_channels(self, actor: Actor, channel_ids: Sequence[int]) -> None:
        async with self.db.transaction(write=True) as s:
            await self._require_admin(s, actor)
            repos = Repositories(s)
            try:
                ids = await repos.guilds.set_channels(actor.guild_id, channel_ids)
            except ValueError as exc:
                raise UserError("invalid", f"{exc}.") from None
            await repos.audit.add(actor.guild_id, actor.user_id, "channels.set", "", {"channels": ids})

    async def admin_add_admin_role(self, actor: Actor, role_id: int) -> None:
        await self._admin_roles(actor, role_id, add=True)

    async def admin_remove_admin_role(self, actor: Actor, role_id: int) -> None:
        await self._admin_roles(actor, role_id, add=False)

    async def _admin_roles(self, actor: Actor, role_id: int, *, add: bool) -> None:
        async with self.db.transaction(write=True) as s:
            await self._require_admin(s, actor)
            repos = Repositories(s)
            try:
                if add:
                    await repos.guilds.add_admin_role(actor.guild_id, role_id)
                else:
                    await repos.guilds.remove_admin_role(actor.guild_id, role_id)
            except ValueError as exc:
                raise UserError("invalid", f"{exc}.") from None
            await repos.audit.add(
                actor.guild_id, actor.user_id, "admin_role.add" if add else "admin_role.remove", str(role_id)
            )

    async def admin_stats(self, actor: Actor) -> dict[str, int | float]:
        async with self.db.session() as s:
            await self._require_admin(s, actor)
            stats = await Repositories(s).jobs.stats(guild_id=actor.guild_id)
        stats["queued_all_guilds"] = await self.queue.queued()
        return stats

    # ================================================================== lists

    def model_names(self) -> list[str]:
        if self.engine is not None:
            return list(self.engine.model_names())
        return sorted(self.settings.engine.models)

    def sampler_names(self) -> list[str]:
        if self.engine is not None:
            return list(self.engine.sampler_names())
        return list(DEFAULT_SAMPLERS)

    # ================================================================== events and lifecycle

    def events(self) -> AsyncIterator[JobEvent]:
        return self.hub.subscribe()

    async def start(self) -> None:
        self._started_at = self._started_at or utcnow()
        if self.worker is not None:
            self.worker.start()
        if not self.db.is_sqlite:
            await self._listen()
        if self.worker is None or not self.db.is_sqlite:
            self._tasks.append(asyncio.create_task(self._poll_finished(), name="chant-poll-finished"))

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
            if self.engine is not None and hasattr(self.engine, "close"):
                self.engine.close()  # frees the GPU (the service's worker owned the engine)
        if self._announcer is not None:
            self._tasks.append(self._announcer)
            self._announcer = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._pg_conn is not None:
            with contextlib.suppress(Exception):
                await self._pg_conn.close()
            self._pg_conn = None

    # WorkerListener (the in-process worker reports here) --------------------------------------

    async def job_started(self, job_id: int) -> None:
        if job_id in self._started:
            return
        self._started.add(job_id)
        if len(self._started) > 20_000:
            self._started = set(sorted(self._started)[10_000:])
        self._positions.pop(job_id, None)
        self.hub.publish(JobStarted(job_id))
        self._positions_changed()

    def _positions_changed(self) -> None:
        """Recompute and announce queue positions soon, in the background: a worker starting a batch of
        16 jobs must not wait for 16 queue scans (the GPU would idle), and the scans coalesce."""
        if self._announcer is not None and not self._announcer.done():
            self._announce_again = True
            return
        self._announcer = asyncio.create_task(self._announce_loop(), name="chant-positions")

    async def _announce_loop(self) -> None:
        while True:
            self._announce_again = False
            try:
                await self._announce_positions()
            except Exception:
                log.exception("could not update queue positions")
            if not self._announce_again:
                return

    async def job_progress(
        self, job_id: int, step: int, total: int, eta_s: float | None, preview_png: bytes | None
    ) -> None:
        self.hub.publish(JobProgress(job_id, step, total, eta_s, preview_png))
        if self.worker is not None and not self.db.is_sqlite and preview_png is None:
            await notify.publish(self.db, EVENTS, Note("progress", job_id, step, total, eta_s))

    async def job_finished(self, job_id: int) -> None:
        if job_id in self._announced:
            return
        self._announced.add(job_id)  # before any await: NOTIFY and the poller may race here
        if len(self._announced) > 20_000:  # bounded memory: forget the oldest announcements
            self._announced = set(sorted(self._announced)[10_000:])
        async with self.db.session() as s:
            job = await Repositories(s).jobs.get(job_id)
            if job is None or job.state not in ("done", "failed", "cancelled"):
                self._announced.discard(job_id)
                return
            self._started.discard(job_id)
            view = await self._view(s, job)
        if view.state == "done":
            self.hub.publish(JobDone(view, await self.job_images(job_id)))
        elif view.state == "failed":
            self.hub.publish(JobFailed(view, view.error or "The job failed."))
        else:
            self.hub.publish(JobCancelled(view))

    # Other processes (PostgreSQL LISTEN/NOTIFY, with polling as the fallback) -------------------

    async def _listen(self) -> None:
        self._pg_conn = await notify.listen(self.db, EVENTS, self._on_notify)

    def _on_notify(self, note: Note) -> None:
        kind, job_id = note.kind, note.job_id
        if kind == "progress":
            if self.worker is None or job_id not in self.worker.running_ids:
                self.hub.publish(JobProgress(job_id, note.step, note.total, note.eta_s, None))
        elif kind == "started":
            self._tasks.append(asyncio.create_task(self.job_started(job_id)))
        elif kind in ("done", "failed", "cancelled"):
            self._tasks.append(asyncio.create_task(self.job_finished(job_id)))
        self._tasks = [t for t in self._tasks if not t.done()]

    async def _poll_finished(self) -> None:
        interval = max(0.05, self.settings.queue.poll_interval_s)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.session() as s:
                    ids = list(
                        await s.scalars(
                            select(Job.id).where(
                                Job.posted.is_(False),
                                Job.state.in_(("done", "failed")),
                                Job.finished_at > (self._started_at or utcnow()),
                            )
                        )
                    )
                for job_id in ids:
                    if job_id not in self._announced:
                        await self.job_finished(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("polling for finished jobs failed")


class _Over(Exception):
    """Internal: a queue cap was hit inside the submit transaction (rolled back, then reported)."""


async def _active_counts(s, guild_id: int | None, user_id: int) -> tuple[int, int, int]:
    """Queued + running jobs of (this user here, this guild or the DMs, everyone): one query."""
    here = Job.guild_id.is_(None) if guild_id is None else Job.guild_id == guild_id
    row = (
        await s.execute(
            select(
                func.count().filter(and_(here, Job.user_id == user_id)),
                func.count().filter(here),
                func.count(),
            ).where(Job.state.in_(("queued", "running")))
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def _options(params: dict[str, Any]) -> ImagineOptions:
    known = {f.name for f in dataclasses.fields(ImagineOptions)}
    data = {k: v for k, v in params.items() if k in known}
    data.setdefault("prompt", "")
    return ImagineOptions(**data)
