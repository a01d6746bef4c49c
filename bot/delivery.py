"""The one event consumer: renders ``service.events()`` into status edits and result posts.

* Status messages (queue position, then progress bar + ETA + optional preview) are edited through the
  channel endpoint at most once every ``settings.discord.progress_edit_interval_s`` per job (a
  trailing edit always shows the latest state).
* Results are posted with the bot's channel permissions (``channel.send``), not the interaction
  token, so a queue wait longer than 15 minutes still delivers. Each result gets 🔁 and is recorded
  with ``service.record_result_messages`` (which makes it rerollable after restarts).
* Each image is posted as its moderation decision says (``JobView.moderation``, made by core for the
  place it goes to): as it is, as a ``SPOILER_`` attachment, or not at all — then the requester is
  told privately (an ephemeral follow-up while their interaction lives, else a DM).
* Under a result go the persistent buttons of ``result_view`` (set by the controls extension).
* On start, results finished while the bot was down (``service.unposted_results()``) are posted.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import discord

from bot import render
from core.config import Settings
from core.services import (
    ImageModeration,
    JobCancelled,
    JobDone,
    JobEvent,
    JobFailed,
    JobProgress,
    JobQueued,
    JobStarted,
    JobView,
)
from core.services.api import CoreAPI, EventStream
from core.types import GeneratedImage

log = logging.getLogger(__name__)
T = TypeVar("T")

REROLL = "🔁"
VARIATION = "🔀"
DELETE = "❌"
INFO = "ℹ️"
INFO_EMOJIS = ("ℹ️", "ℹ")  # with and without the variation selector
INTERACTION_LIFETIME_S = 14 * 60  # an interaction's token answers for 15 minutes; keep a margin
POSTED = ImageModeration("post", None, "not moderated")
UNMATCHED = ImageModeration(
    "block", None, "its moderation decision could not be matched to it", charged=False
)

# The buttons under a result: (the job, the positions of the images posted) -> a view, or None.
ResultView = Callable[[JobView, Sequence[int]], "discord.ui.View | None"]


@dataclass
class Tracked:
    job_id: int
    channel_id: int
    guild_id: int | None
    status_message_id: int | None
    reply_to: int | None = None  # a reroll answers the original result message
    prompt: str = ""
    # The interaction that asked for the job (a command, a button, a form): what a private notice goes
    # through while it lives.
    interaction: discord.Interaction | None = None
    last_edit: float = -1e9
    pending: tuple[str, bytes | None] | None = None
    flusher: asyncio.Task[None] | None = None
    edits: int = 0
    finished: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def result_caption(job: JobView, images: tuple[GeneratedImage, ...] = (), note: str | None = None) -> str:
    req = job.request
    seeds = job.seeds or tuple(i.seed for i in images)
    return render.caption(
        prompt=req.prompt,
        seeds=seeds,
        sampler=req.sampler,
        steps=req.steps,
        cfg=req.cfg_scale,
        model=job.model,
        job_id=job.id,
        width=req.width,
        height=req.height,
        user_mention=f"<@{job.user_id}>",
        note=note,
    )


class Delivery:
    def __init__(self, bot: discord.Client, service: CoreAPI, settings: Settings) -> None:
        self.bot = bot
        self.service = service
        self.interval = float(settings.discord.progress_edit_interval_s)
        self.previews = bool(settings.discord.previews)
        self.tracked: dict[int, Tracked] = {}
        self.upload_limits: dict[int | None, int] = {}
        self._posted: set[int] = set()
        self._finished_early: dict[int, JobEvent] = {}
        self._task: asyncio.Task[None] | None = None
        self._events: EventStream | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()  # set once subscribed and the backlog is posted
        self.result_view: ResultView | None = None  # the controls extension sets it

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chant-delivery")

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop reading events; give posts in flight ``grace_s`` to finish and be recorded."""
        if self._task is not None:
            self._task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        if self._events is not None:
            with contextlib.suppress(Exception):
                await self._events.aclose()  # unsubscribe from the service's event hub
        tasks = [t for t in [self._task, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def until_done(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` so that a shutdown gives it the grace period instead of cancelling it.

        For the steps after a job is queued (post its status message, record the message id): cut
        between the two, the job would lose its live status after a restart.
        """
        return await asyncio.shield(self._spawn(coro))

    async def _run(self) -> None:
        events = self._events = self.service.events()
        first = asyncio.ensure_future(anext(events))  # subscribe before reading the backlog
        await asyncio.sleep(0)
        try:
            await self.post_backlog()
        except Exception:
            log.exception("could not post the results finished while the bot was away")
        self.ready.set()
        pending: asyncio.Future[JobEvent] | None = first
        while True:
            try:
                event = await pending if pending is not None else await anext(events)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the job event stream failed; resubscribing in 1s")
                await asyncio.sleep(1)
                events = self._events = self.service.events()
                pending = None
                continue
            pending = None
            try:
                self.handle(event)
            except Exception:
                log.exception("could not render event %r", event)

    async def post_backlog(self) -> None:
        # Jobs queued before a restart: track their status messages again, so progress goes on.
        try:
            for job, reply_to in await self.service.live_status_jobs():
                if job.id not in self.tracked and job.status_message_id is not None:
                    self.track(
                        job.id,
                        job.channel_id,
                        job.guild_id,
                        job.status_message_id,
                        reply_to=reply_to,
                        prompt=job.request.prompt,
                    )
        except Exception:
            log.exception("could not restore the live status of queued jobs")
        for job in await self.service.unposted_results():
            if job.state == "done":
                images = await self.service.job_images(job.id)
                await self._deliver_done(job, images)
            elif job.state in ("failed", "cancelled"):
                await self._deliver_failed(job, job.error or job.state)

    # -- tracking ----------------------------------------------------------------------------------
    def remember_upload_limit(self, guild_id: int | None, limit: int | None) -> None:
        if limit:
            self.upload_limits[guild_id] = int(limit)

    def upload_limit(self, guild_id: int | None) -> int:
        if guild_id in self.upload_limits:
            return self.upload_limits[guild_id]
        guild = self.bot.get_guild(guild_id) if guild_id else None
        return guild.filesize_limit if guild is not None else render.DEFAULT_UPLOAD_LIMIT

    def track(
        self,
        job_id: int,
        channel_id: int,
        guild_id: int | None,
        status_message_id: int | None,
        *,
        reply_to: int | None = None,
        prompt: str = "",
        interaction: discord.Interaction | None = None,
    ) -> Tracked:
        tracked = self.tracked.get(job_id)
        if tracked is None:
            tracked = self.tracked[job_id] = Tracked(
                job_id, channel_id, guild_id, status_message_id, reply_to, prompt, interaction=interaction
            )
        else:
            tracked.status_message_id = status_message_id or tracked.status_message_id
            tracked.reply_to = reply_to or tracked.reply_to
            tracked.interaction = interaction or tracked.interaction
        early = self._finished_early.pop(job_id, None)
        if early is not None:  # the job finished before the submitter got its receipt back
            self.handle(early)
        return tracked

    # -- events --------------------------------------------------------------------------------------
    def handle(self, event: JobEvent) -> None:
        if isinstance(event, JobQueued):
            t = self.tracked.get(event.job_id)
            if t is not None and not t.finished:
                self._update_status(t, render.queued_text(event.position, event.eta_s, job_id=event.job_id))
        elif isinstance(event, JobStarted):
            t = self.tracked.get(event.job_id)
            if t is not None and not t.finished:
                self._update_status(t, render.queued_text(0, None, job_id=event.job_id))
        elif isinstance(event, JobProgress):
            t = self.tracked.get(event.job_id)
            if t is not None and not t.finished and event.total > 0:
                step = min(max(event.step, 0), event.total)
                text = render.progress_text(
                    step, event.total, event.eta_s, job_id=event.job_id, prompt=t.prompt
                )
                self._update_status(t, text, event.preview_png if self.previews else None)
        elif isinstance(event, JobDone):
            self._finish(event.job.id)
            self._spawn(self._deliver_done(event.job, event.images))
        elif isinstance(event, JobFailed):
            self._finish(event.job.id)
            self._spawn(self._deliver_failed(event.job, event.reason))
        elif isinstance(event, JobCancelled):
            self._finish(event.job.id)
            self._spawn(self._deliver_failed(event.job, "cancelled"))

    def _finish(self, job_id: int) -> None:
        t = self.tracked.get(job_id)
        if t is not None:
            t.finished = True
            t.pending = None
            if t.flusher is not None and not t.flusher.done():
                t.flusher.cancel()

    def _update_status(self, t: Tracked, content: str, preview: bytes | None = None) -> None:
        # Keep the newest preview until an edit carries it, even if later steps bring none.
        t.pending = (content, preview or (t.pending[1] if t.pending else None))
        if t.status_message_id is not None and (t.flusher is None or t.flusher.done()):
            t.flusher = asyncio.create_task(self._flush(t))

    async def _flush(self, t: Tracked) -> None:
        loop = asyncio.get_running_loop()
        while t.pending is not None and not t.finished:
            wait = t.last_edit + self.interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            content, preview = t.pending
            t.pending = None
            t.last_edit = loop.time()
            t.edits += 1
            await self._edit_status(t, content, preview)

    async def _edit_status(self, t: Tracked, content: str, preview: bytes | None) -> None:
        if t.status_message_id is None:
            return
        message = self.bot.get_partial_messageable(t.channel_id, guild_id=t.guild_id).get_partial_message(
            t.status_message_id
        )
        try:
            if preview:
                fitted = render.fit_to_limit(preview, self.upload_limit(t.guild_id), stem="preview")
                await message.edit(
                    content=content,
                    attachments=[discord.File(io.BytesIO(fitted.data), filename=fitted.filename)],
                )
            else:
                await message.edit(content=content)
        except discord.HTTPException as exc:
            log.warning("could not edit the status of job %s: %s", t.job_id, exc)

    # -- results -------------------------------------------------------------------------------------
    async def _deliver_done(self, job: JobView, images: tuple[GeneratedImage, ...]) -> None:
        t = self.tracked.get(job.id)
        if t is None and job.id not in self._posted and job.status_message_id is None and job.kind != "show":
            # Not ours yet (the submitter is still between submit and track): wait for track().
            self._finished_early[job.id] = JobDone(job, images)
            self._spawn(self._post_untracked_later(job.id))
            return
        async with t.lock if t is not None else contextlib.nullcontext():
            if job.id in self._posted:
                return
            self._posted.add(job.id)
            try:
                await self.post_images(job, images, reply_to=t.reply_to if t else None)
            except Exception:
                self._posted.discard(job.id)
                log.exception("could not post the result of job %s", job.id)
                return
            await self._delete_status(t, job)
            withheld = [m for m in _moderation(job, images) if m.blocked]
            if withheld:
                await self.tell_privately(
                    job.user_id,
                    render.withheld_text(job.id, len(withheld), len(images), withheld[0].reason),
                    t,
                )
        self._forget(job.id)

    async def _post_untracked_later(self, job_id: int, delay: float = 5.0) -> None:
        await asyncio.sleep(delay)
        early = self._finished_early.pop(job_id, None)
        if early is not None:  # nobody tracked it (e.g. another bot process submitted it): post anyway
            self.tracked.setdefault(job_id, Tracked(job_id, early.job.channel_id, early.job.guild_id, None))
            self.handle(early)

    async def post_images(
        self,
        job: JobView,
        images: tuple[GeneratedImage, ...],
        *,
        reply_to: int | None = None,
        note: str | None = None,
        record: bool = True,
        controls: bool = True,
        view: discord.ui.View | None = None,
    ) -> discord.Message | None:
        """Post the job's images as their moderation says (``job.moderation``, aligned with ``images``):
        blocked ones are left out, spoilered ones sent as ``SPOILER_`` attachments; with every image
        blocked nothing is posted (None; the job still counts as posted). Under them go ``view``, or
        with ``controls`` the result's buttons (``result_view``)."""
        if not images:
            raise ValueError(f"job {job.id} has no images to post")
        decisions = _moderation(job, images)
        shown = [n for n, m in enumerate(decisions) if not m.blocked]
        if not shown:
            if record:
                await self.service.record_result_messages(job.id, [])
            return None
        limit = self.upload_limit(job.guild_id)
        files = []
        resized = False
        for n in shown:
            image = images[n]
            spoiler = "SPOILER_" if decisions[n].action == "spoiler" else ""
            fitted = render.fit_to_limit(image.png, limit, stem=f"{spoiler}chant-{job.id}-{n}-{image.seed}")
            resized |= fitted.resized
            files.append(discord.File(io.BytesIO(fitted.data), filename=fitted.filename))
        if resized:
            note = ((note + " · ") if note else "") + "re-encoded to fit this server's upload limit"
        if len(shown) < len(images):
            withheld = (
                f"{len(images) - len(shown)} of {len(images)} images withheld by this server's moderation"
            )
            note = ((note + " · ") if note else "") + withheld
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        reference = (
            discord.MessageReference(message_id=reply_to, channel_id=job.channel_id, fail_if_not_exists=False)
            if reply_to
            else None
        )
        # Per-image buttons name images by their position in the job: only when every image is there.
        if view is None and controls and self.result_view is not None and len(images) == len(job.seeds):
            view = self.result_view(job, shown)
        message = await channel.send(
            result_caption(job, images, note),
            files=files,
            reference=reference,
            allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]),
            **({"view": view} if view is not None else {}),
        )
        if record:
            await self.service.record_result_messages(job.id, [message.id])
        for emoji in (REROLL, VARIATION):
            with contextlib.suppress(discord.HTTPException):
                await message.add_reaction(emoji)
        return message

    async def tell_privately(self, user_id: int, text: str, t: Tracked | None = None) -> None:
        """A private notice to a user: an ephemeral follow-up to the interaction that asked, while its
        token lives; else a direct message."""
        interaction = t.interaction if t is not None else None
        if (
            interaction is not None
            and time.time() - interaction.created_at.timestamp() < INTERACTION_LIFETIME_S
        ):
            try:
                await interaction.followup.send(text, ephemeral=True)
                return
            except discord.HTTPException as exc:
                log.info("could not follow up interaction %s (%s); sending a DM", interaction.id, exc)
        try:
            channel = await self.bot.create_dm(discord.Object(id=user_id))
            await channel.send(text)
        except discord.HTTPException as exc:
            log.info("could not DM user %s: %s", user_id, exc)

    async def _delete_status(self, t: Tracked | None, job: JobView) -> None:
        message_id = (t.status_message_id if t else None) or job.status_message_id
        if message_id is None:
            return
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        with contextlib.suppress(discord.HTTPException):
            await channel.get_partial_message(message_id).delete()

    async def _deliver_failed(self, job: JobView, reason: str) -> None:
        t = self.tracked.get(job.id)
        async with t.lock if t is not None else contextlib.nullcontext():
            if job.id in self._posted:
                return
            self._posted.add(job.id)
            what = "was cancelled" if reason == "cancelled" else f"failed: {reason}"
            text = render.truncate(f"<@{job.user_id}> job #{job.id} {what}", render.MESSAGE_LIMIT)
            channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            message_id = (t.status_message_id if t else None) or job.status_message_id
            try:
                if message_id is not None:
                    message = await channel.get_partial_message(message_id).edit(content=text, attachments=[])
                else:
                    message = await channel.send(text)
                await self.service.record_result_messages(job.id, [message.id])
            except Exception:
                self._posted.discard(job.id)
                log.exception("could not report the end of job %s", job.id)
                return
        self._forget(job.id)

    def _forget(self, job_id: int) -> None:
        """Drop per-job state once its end is posted; remember posted ids only for a while."""
        self.tracked.pop(job_id, None)
        if len(self._posted) > 10_000:
            for old in sorted(self._posted)[:5_000]:
                self._posted.discard(old)


def _moderation(job: JobView, images: tuple[GeneratedImage, ...]) -> list[ImageModeration]:
    """Each image's decision: ``job.moderation`` (core's, aligned with the images). None made (an
    in-memory test service): posted as it is; decisions that do not match the images: none is posted."""
    if not job.moderation:
        return [POSTED] * len(images)
    if len(job.moderation) != len(images):
        log.error(
            "job %s: %d moderation decisions for %d images; posting none",
            job.id,
            len(job.moderation),
            len(images),
        )
        return [UNMATCHED] * len(images)
    return list(job.moderation)
