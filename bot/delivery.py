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
* Where the bot may not post (403: no Send Messages / Attach Files), the requester gets the result
  privately (the interaction's follow-up while its token lives, else a DM), the status message is
  finished (in the channel, else through the interaction) and the job counts as posted.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
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
UPSCALE = "⬆️"  # the result's first image ×2 (the bot adds it under results that are not upscales)
INFO = "ℹ️"
INFO_EMOJIS = ("ℹ️", "ℹ")  # with and without the variation selector
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
    editable: bool = True  # False once Discord refused an edit (no permission): no more progress edits
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
        """``interaction``: the command whose response is the status message; while its token lives it
        can still finish the status and tell the requester privately when the channel is closed to us."""
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
        elif isinstance(event, JobDone | JobFailed | JobCancelled):
            job = event.job
            if job.id not in self.tracked and job.id not in self._posted and job.kind != "show":
                # Not ours yet (the submitter is between submit and track()), or another process's:
                # track() takes it from here, or _post_untracked_later does.
                self._finished_early[job.id] = event
                self._spawn(self._post_untracked_later(job.id))
                return
            self._finish(job.id)
            if isinstance(event, JobDone):
                self._spawn(self._deliver_done(job, event.images, event.control_maps))
            else:
                self._spawn(
                    self._deliver_failed(
                        job, "cancelled" if isinstance(event, JobCancelled) else event.reason
                    )
                )

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
        if t.status_message_id is not None and t.editable and (t.flusher is None or t.flusher.done()):
            t.flusher = asyncio.create_task(self._flush(t))

    async def first_status(self, t: Tracked, edit: Callable[[], Awaitable[object]]) -> None:
        """The status message's first text, by ``edit`` (the interaction's own edit ends its "thinking…"),
        in turn with the progress edits and the result: never over the job's end."""
        async with t.lock:
            if not t.finished:
                await edit()
                t.last_edit = asyncio.get_running_loop().time()

    async def _flush(self, t: Tracked) -> None:
        loop = asyncio.get_running_loop()
        while t.pending is not None and not t.finished:
            wait = t.last_edit + self.interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            async with t.lock:  # after the first status, never over the result
                if t.finished or t.pending is None:
                    return
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
            if isinstance(exc, discord.Forbidden):
                t.editable = False  # it stays so: the end of the job finishes it another way

    # -- results -------------------------------------------------------------------------------------
    async def _deliver_done(
        self, job: JobView, images: tuple[GeneratedImage, ...], maps: tuple[bytes, ...] = ()
    ) -> None:
        t = self.tracked.get(job.id)
        async with t.lock if t is not None else contextlib.nullcontext():
            if job.id in self._posted:
                return
            self._posted.add(job.id)
            try:
                await self.post_images(job, images, reply_to=t.reply_to if t else None, maps=maps)
            except discord.Forbidden as exc:
                await self._undeliverable(t, job, images, exc)
            except Exception:
                self._posted.discard(job.id)
                log.exception("could not post the result of job %s", job.id)
                return
            else:
                await self._delete_status(t, job)
                await self._tell_withheld(t, job, images)
        self._forget(job.id)

    async def _post_untracked_later(self, job_id: int, delay: float = 5.0) -> None:
        await asyncio.sleep(delay)
        early = self._finished_early.pop(job_id, None)
        if early is not None:  # nobody tracked it (e.g. another bot process submitted it): post anyway
            job = early.job
            self.tracked.setdefault(
                job_id, Tracked(job_id, job.channel_id, job.guild_id, job.status_message_id)
            )
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
        maps: tuple[bytes, ...] = (),
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
        fitted = await self._fitted(job, images, decisions, self.upload_limit(job.guild_id))
        files = _files(fitted)
        # The preprocessed ControlNet maps after the images, as sd-webui-controlnet shows them.
        files += _files(await asyncio.to_thread(
            lambda: [render.fit_to_limit(m, self.upload_limit(job.guild_id), stem=f"chant-{job.id}-control-{n}")
                     for n, m in enumerate(maps)]
        ))  # fmt: skip
        if any(f.resized for f in fitted):
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
        # ⬆️ offered on what is not itself an upscale (an upscale's own 🔁 / ⬆️ still work when a user adds them)
        for emoji in (REROLL, VARIATION) if job.kind == "upscale" else (REROLL, VARIATION, UPSCALE):
            with contextlib.suppress(discord.HTTPException):
                await message.add_reaction(emoji)
        return message

    async def _tell_withheld(
        self, t: Tracked | None, job: JobView, images: tuple[GeneratedImage, ...]
    ) -> None:
        """The requester's private notice for the images moderation kept out of the channel."""
        withheld = [m for m in _moderation(job, images) if m.blocked]
        if withheld:
            await self.tell_privately(
                job.user_id, render.withheld_text(job.id, len(withheld), len(images), withheld[0].reason), t
            )

    async def tell_privately(self, user_id: int, text: str, t: Tracked | None = None) -> None:
        """A private notice to a user: an ephemeral follow-up to the interaction that asked, while its
        token lives; else a direct message."""
        interaction = t.interaction if t is not None else None
        if interaction is not None and _token_lives(interaction):
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

    @staticmethod
    async def _fitted(
        job: JobView, images: tuple[GeneratedImage, ...], decisions: list[ImageModeration], limit: int
    ) -> list[render.FittedImage]:
        """The images moderation lets through (a spoilered one as a ``SPOILER_`` attachment), each fitted
        to ``limit``. Re-encoding a large result to fit takes seconds: not on the event loop."""

        def fit() -> list[render.FittedImage]:
            return [
                render.fit_to_limit(
                    image.png,
                    limit,
                    stem=f"{'SPOILER_' if m.action == 'spoiler' else ''}chant-{job.id}-{n}-{image.seed}",
                )
                for n, (image, m) in enumerate(zip(images, decisions, strict=True))
                if not m.blocked
            ]

        return await asyncio.to_thread(fit)

    # -- where the bot may not post ------------------------------------------------------------------
    async def _undeliverable(
        self,
        t: Tracked | None,
        job: JobView,
        images: tuple[GeneratedImage, ...],
        exc: discord.HTTPException,
        *,
        end: str = "",
    ) -> None:
        """The job's end could not be shown in its channel (the bot lacks Send Messages or Attach Files
        there; slash commands still work): the requester gets it privately, the status message says so,
        and the job counts as posted (a restart does not try again); ``/show`` posts it where we may.
        Moderation holds privately too: what it blocks stays out, what it spoilers stays spoilered."""
        log.warning("may not post the end of job %s in channel %s: %s", job.id, job.channel_id, exc)
        where = f"I could not post in <#{job.channel_id}>: I am missing a permission there (Send Messages or Attach Files)."
        if images:
            text = (
                f"Your result of job #{job.id}. {where} `/show job:{job.id}` posts it again wherever I can "
                "post, or a server admin can give me the permission."
            )
        else:
            text = f"{end} ({where})"
        await self.send_privately(job, images, text, t.interaction if t is not None else None)
        with contextlib.suppress(Exception):
            await self.service.record_result_messages(job.id, [])  # told; kept for /show
        done = (
            f"<@{job.user_id}> job #{job.id} is done, but I could not post it here (missing permission). "
            f"I sent it to you privately; `/show job:{job.id}` posts it where I can."
        )
        await self._finish_status(t, job, done if images else end)

    async def send_privately(
        self,
        job: JobView,
        images: tuple[GeneratedImage, ...],
        text: str,
        interaction: discord.Interaction | None,
    ) -> bool:
        """``text`` (and the images) to the job's requester only: an ephemeral follow-up while the
        interaction's token lives, else a DM. False when neither went through. The images go as their
        moderation says (``job.moderation``), as in the channel: never a way around a block or a spoiler."""
        limit = min(self.upload_limit(job.guild_id), render.DEFAULT_UPLOAD_LIMIT)
        decisions = _moderation(job, images)
        fitted = await self._fitted(job, images, decisions, limit) if images else []
        withheld = [m for m in decisions if m.blocked]
        if withheld:
            text += " " + render.withheld_text(job.id, len(withheld), len(images), withheld[0].reason)
        text = render.truncate(text, render.MESSAGE_LIMIT)
        if interaction is not None and _token_lives(interaction):
            try:
                await interaction.followup.send(text, files=_files(fitted), ephemeral=True)
                return True
            except discord.HTTPException as exc:
                log.info("could not follow up on job %s: %s", job.id, exc)
        try:
            channel = await self.bot.create_dm(discord.Object(id=job.user_id))
            await channel.send(text, files=_files(fitted))
            return True
        except discord.HTTPException as exc:
            log.warning("could not tell user %s about job %s: %s", job.user_id, job.id, exc)
            return False

    async def _finish_status(self, t: Tracked | None, job: JobView, text: str) -> None:
        """The status message's last text: by the channel, else by the interaction (no channel
        permission needed), else the message goes."""
        message_id = (t.status_message_id if t else None) or job.status_message_id
        if message_id is None:
            return
        message = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id).get_partial_message(
            message_id
        )
        with contextlib.suppress(discord.HTTPException):
            await message.edit(content=text, attachments=[])
            return
        interaction = t.interaction if t is not None else None
        if interaction is not None and _token_lives(interaction):
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(content=text, attachments=[])
                return
        with contextlib.suppress(discord.HTTPException):
            await message.delete()

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
            interaction = t.interaction if t is not None else None
            try:
                if message_id is None:
                    message: discord.abc.Snowflake = await channel.send(text)
                else:
                    try:
                        message = await channel.get_partial_message(message_id).edit(
                            content=text, attachments=[]
                        )
                    except discord.Forbidden:
                        if interaction is None or not _token_lives(interaction):
                            raise
                        message = await interaction.edit_original_response(content=text, attachments=[])
                await self.service.record_result_messages(job.id, [message.id])
            except discord.Forbidden as exc:
                await self._undeliverable(t, job, (), exc, end=text)
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


def _files(fitted: list[render.FittedImage]) -> list[discord.File]:
    """Fresh files for one send (discord.py closes what it sent)."""
    return [discord.File(io.BytesIO(f.data), filename=f.filename) for f in fitted]


def _token_lives(interaction: discord.Interaction) -> bool:
    """An interaction's token works for 15 minutes; a minute's margin for the request in flight."""
    return discord.utils.utcnow() < interaction.expires_at - timedelta(minutes=1)
