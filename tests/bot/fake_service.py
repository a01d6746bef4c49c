"""An in-memory ChantService for the bot's in-process tests (no database, no engine).

It keeps the contract of :mod:`core.services` (UserError codes, events, result-message lookup,
admin = Manage Guild or an admin role) so the cogs can be tested against the fake Discord server
before and independently of the real service; the end-to-end tests run the real one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

from PIL import Image, PngImagePlugin

from core import ranges
from core.services import (
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
from core.types import ControlInput, GeneratedImage, GenerationRequest, Mode


def png_with_parameters(text: str, seed: int, size: int = 16, noise: bool = False) -> bytes:
    rng = random.Random(seed)
    if noise:
        img = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    else:
        img = Image.new("RGB", (size, size), (seed % 256, (seed >> 8) % 256, 128))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def infotext(req: GenerationRequest, seed: int) -> str:
    return (
        f"{req.prompt}\nNegative prompt: {req.negative_prompt}\nSteps: {req.steps}, Sampler: {req.sampler}, "
        f"CFG scale: {req.cfg_scale:g}, Seed: {seed}, Size: {req.width}x{req.height}, Model hash: 0123456789, "
        f"Model: fake"
    )


class FakeService:
    def __init__(
        self, *, step_delay_s: float = 0.02, image_size: int = 16, noisy_images: bool = False
    ) -> None:
        self.step_delay_s = step_delay_s
        self.image_size = image_size
        self.noisy_images = noisy_images
        self.jobs: dict[int, JobView] = {}
        self.images: dict[int, tuple[GeneratedImage, ...]] = {}
        self.admin_roles: dict[int | None, set[int]] = {}
        self.presets: dict[tuple[int, str], ImagineOptions] = {}
        self.calls: list[tuple[str, tuple]] = []
        self.posted: dict[int, list[int]] = {}
        self.max_steps = 50
        self.max_pixels: dict[int | None, int] = {}  # per guild; 1024² unless set
        self.loras = ["add_detail", "detail_tweaker", "watercolor"]
        self._ids = itertools.count(1)
        self._subscribers: list[asyncio.Queue[JobEvent]] = []
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.started = False
        self.hold = asyncio.Event()  # cleared = the worker pauses before each job
        self.hold.set()
        self.explode = False  # submit raises a non-UserError (unexpected failure path)
        self.submit_delay_s = 0.0  # a slow database
        # Moderation stub: a word in the prompt -> the decision for every image of the job (as core's
        # worker stores it); age-restricted channels post everything.
        self.moderation: dict[str, str | tuple[str, ...]] = {}
        self.tags: list[tuple[str, str]] = []  # (label, value) for prompt autocomplete

    # lifecycle
    async def start(self) -> None:
        self.started = True
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()

    def events(self) -> AsyncIterator[JobEvent]:
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._subscribers.append(queue)

        async def gen() -> AsyncIterator[JobEvent]:
            while True:
                yield await queue.get()

        return gen()

    def _emit(self, event: JobEvent) -> None:
        for q in self._subscribers:
            q.put_nowait(event)

    def _set(self, job_id: int, **changes) -> JobView:
        self.jobs[job_id] = view = dataclasses.replace(self.jobs[job_id], **changes)
        return view

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            await self.hold.wait()
            job = self.jobs[job_id]
            if job.state != "queued":
                continue
            self._set(job_id, state="running")
            self._emit(JobStarted(job_id))
            total = job.request.steps
            for step in range(1, total + 1):
                await asyncio.sleep(self.step_delay_s)
                if self.jobs[job_id].state == "cancelled":
                    break
                preview = png_with_parameters("", step, 8) if step % 5 == 0 else None
                self._emit(JobProgress(job_id, step, total, (total - step) * self.step_delay_s, preview))
            if self.jobs[job_id].state == "cancelled":
                self._emit(JobCancelled(self.jobs[job_id]))
                continue
            if "FAIL" in job.request.prompt:
                view = self._set(
                    job_id, state="failed", error="the engine said no", finished_at=datetime.now(UTC)
                )
                self._emit(JobFailed(view, "the engine said no"))
                continue
            seeds = tuple(job.request.seed + i for i in range(job.request.count))
            images = tuple(
                GeneratedImage(
                    png_with_parameters(infotext(job.request, s), s, self.image_size, self.noisy_images),
                    s,
                    -1,
                    infotext(job.request, s),
                )
                for s in seeds
            )
            self.images[job_id] = images
            view = self._set(
                job_id,
                state="done",
                seeds=seeds,
                finished_at=datetime.now(UTC),
                model=job.request.model or "fake",
                model_hash="0123456789",
                moderation=tuple(self._decide(job, index=n) for n in range(len(images))),
            )
            maps = tuple(png_with_parameters("", n, 8) for n, _ in enumerate(job.request.controls))
            self._emit(JobDone(view, images, maps))

    def _decide(self, job: JobView, age_restricted: bool | None = None, index: int = 0) -> ImageModeration:
        """``moderation[word]``: one action for every image, or a tuple of actions, one per image."""
        age_restricted = job.age_restricted if age_restricted is None else age_restricted
        for word, action in self.moderation.items():
            if word in job.request.prompt and not age_restricted:
                action = action if isinstance(action, str) else action[index % len(action)]
                if action == "post":
                    break
                return ImageModeration(
                    action, 0.97, "scored 0.97, at or over the limit of 0.80", "guild", 0.8
                )
        return ImageModeration("post", 0.02, "scored 0.02, under the limit of 0.80", "guild", 0.8)

    def _new_job(
        self,
        actor: Actor,
        request: GenerationRequest,
        kind: str,
        parent: int | None,
        status_message_id: int | None = None,
    ) -> Receipt:
        job_id = next(self._ids)
        self.jobs[job_id] = JobView(
            id=job_id,
            guild_id=actor.guild_id,
            channel_id=actor.channel_id,
            user_id=actor.user_id,
            state="queued",
            request=request,
            seeds=(),
            model=request.model,
            model_hash=None,
            error=None,
            created_at=datetime.now(UTC),
            finished_at=None,
            parent_id=parent,
            kind=kind,
            status_message_id=status_message_id,
            result_message_ids=(),
            age_restricted=bool(actor.age_restricted),
        )
        position = sum(1 for j in self.jobs.values() if j.state == "queued")
        self._queue.put_nowait(job_id)
        self._emit(JobQueued(job_id, position, position * 0.5))
        return Receipt(job_id, position, position * 0.5)

    # the contract
    async def submit_imagine(
        self, actor: Actor, options: ImagineOptions, *, status_message_id: int | None = None
    ) -> Receipt:
        self.calls.append(("submit_imagine", (actor, options)))
        if self.explode:
            raise RuntimeError("database exploded (secret details)")
        if self.submit_delay_s:
            await asyncio.sleep(self.submit_delay_s)
        if options.steps is not None and options.steps > self.max_steps:
            raise UserError(
                "limit.steps", f"steps {options.steps} is over this server's limit of {self.max_steps}"
            )
        if "(" in options.prompt and ")" not in options.prompt:
            raise UserError("prompt", "unclosed '('", column=options.prompt.index("(") + 1)
        if options.preset:
            base = self.presets.get((actor.user_id, options.preset))
            if base is None:
                raise UserError("not_found", f"no preset named {options.preset!r}")
        request = GenerationRequest(
            prompt=options.prompt,
            negative_prompt=options.negative or "",
            steps=options.steps or 5,
            cfg_scale=options.cfg or 7.0,
            sampler=options.sampler or "Euler a",
            seed=options.seed if options.seed not in (None, -1) else random.randrange(2**32),
            width=options.width or 512,
            height=options.height or 512,
            count=options.count or 1,
            model=options.model,
            clip_skip=options.clip_skip,
            controls=(ControlInput(image=options.control_image, module="canny"),) if options.control_image else (),
        )
        return self._new_job(actor, request, "imagine", None, status_message_id)

    async def job_for_message(self, message_id: int) -> JobView | None:
        for job in self.jobs.values():
            if message_id in job.result_message_ids:
                return job
        return None

    async def reroll(self, actor: Actor, message_id: int, *, status_message_id: int | None = None) -> Receipt:
        self.calls.append(("reroll", (actor, message_id)))
        job = await self.job_for_message(message_id)
        if job is None:
            raise UserError("not_found", "that message is not a chant result")
        request = job.request.replace(seed=random.randrange(2**32))
        return self._new_job(actor, request, "reroll", job.id, status_message_id)

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
        self.calls.append(("upscale", (actor, job_id, index, image, scale, upscaler, detail, size)))
        request = GenerationRequest(prompt="", mode=Mode.UPSCALE, init_image=image or b"png", upscaler=upscaler or "")
        return self._new_job(actor, request, "upscale", job_id, status_message_id)

    async def describe(
        self, actor: Actor, *, image: bytes | None = None, job_id: int | None = None, index: int = 0
    ) -> Description:
        self.calls.append(("describe", (actor, image, job_id, index)))
        return Description("fake-tagger", ("1girl, smile, long hair", "1girl, smile"), (("1girl", 0.9),))

    async def upscale_message(
        self, actor: Actor, message_id: int, *, status_message_id: int | None = None
    ) -> Receipt:
        self.calls.append(("upscale_message", (actor, message_id)))
        job = await self.job_for_message(message_id)
        if job is None:
            raise UserError("not_found", "that message is not a chant result")
        request = job.request.replace(mode=Mode.UPSCALE, upscaler="R-ESRGAN 4x+")
        return self._new_job(actor, request, "upscale", job.id, status_message_id)

    async def variation(
        self, actor: Actor, message_id: int, *, status_message_id: int | None = None
    ) -> Receipt:
        self.calls.append(("variation", (actor, message_id)))
        job = await self.job_for_message(message_id)
        if job is None:
            raise UserError("not_found", "that message is not a chant result")
        request = job.request.replace(subseed=random.randrange(2**32), subseed_strength=0.25)
        return self._new_job(actor, request, "variation", job.id, status_message_id)

    async def show(self, actor: Actor, job_id: int) -> JobView:
        job = self.jobs.get(job_id)
        if job is None or job.user_id != actor.user_id:
            raise UserError("not_found", f"job #{job_id} is not one of yours")
        here = tuple(
            self._decide(job, bool(actor.age_restricted), n) for n in range(len(self.images.get(job_id, ())))
        )
        if here and all(m.blocked for m in here):
            raise UserError("moderation", "That image is blocked in this channel.")
        return dataclasses.replace(job, moderation=here)

    # the result controls: each records its call and queues a job as core would build it

    def _control_source(self, job_id: int, index: int) -> JobView:
        job = self.jobs.get(job_id)
        if job is None or job.state != "done":
            raise UserError("not_found", f"there is no finished job #{job_id}")
        if not 0 <= index < len(job.seeds):
            raise UserError("not_found", f"job #{job_id} has no image {index + 1}")
        return job

    async def reroll_job(self, actor: Actor, job_id: int, *, status_message_id: int | None = None) -> Receipt:
        self.calls.append(("reroll_job", (actor, job_id)))
        job = self._control_source(job_id, 0)
        request = job.request.replace(seed=random.randrange(2**32))
        return self._new_job(actor, request, "reroll", job_id, status_message_id)

    async def vary(
        self, actor: Actor, job_id: int, index: int, strength: str, *, status_message_id: int | None = None
    ) -> Receipt:
        self.calls.append(("vary", (actor, job_id, index, strength)))
        job = self._control_source(job_id, index)
        request = job.request.replace(
            seed=job.seeds[index],
            subseed=random.randrange(2**32),
            subseed_strength={"subtle": 0.15, "strong": 0.5}[strength],
        )
        return self._new_job(actor, request, "vary", job_id, status_message_id)

    async def remix_form(self, actor: Actor, job_id: int, index: int) -> RemixForm:
        job = self._control_source(job_id, index)
        return RemixForm(job.request.prompt, job.request.negative_prompt, job.seeds[index])

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
        self.calls.append(("remix", (actor, job_id, index, prompt, negative, seed)))
        job = self._control_source(job_id, index)
        if "(" in prompt and ")" not in prompt:
            raise UserError("prompt", "unclosed '('", column=prompt.index("(") + 1)
        request = job.request.replace(
            prompt=prompt, negative_prompt=negative, seed=random.randrange(2**32) if seed is None else seed
        )
        return self._new_job(actor, request, "remix", job_id, status_message_id)

    async def zoom_out(
        self, actor: Actor, job_id: int, index: int, factor: float, *, status_message_id: int | None = None
    ) -> Receipt:
        self.calls.append(("zoom_out", (actor, job_id, index, factor)))
        job = self._control_source(job_id, index)
        request = job.request.replace(seed=random.randrange(2**32))
        return self._new_job(actor, request, "zoom", job_id, status_message_id)

    async def pan(
        self, actor: Actor, job_id: int, index: int, direction: str, *, status_message_id: int | None = None
    ) -> Receipt:
        self.calls.append(("pan", (actor, job_id, index, direction)))
        job = self._control_source(job_id, index)
        request = job.request.replace(seed=random.randrange(2**32))
        return self._new_job(actor, request, "pan", job_id, status_message_id)

    async def pick(self, actor: Actor, job_id: int, index: int) -> tuple[JobView, GeneratedImage]:
        self.calls.append(("pick", (actor, job_id, index)))
        job = self._control_source(job_id, index)
        decision = self._decide(job, bool(actor.age_restricted), index)
        if decision.blocked:
            raise UserError("moderation", "That image is blocked in this channel.")
        return dataclasses.replace(job, moderation=(decision,)), self.images[job_id][index]

    def complete_prompt(self, text: str) -> list[tuple[str, str]]:
        return [(label, value) for label, value in self.tags if value.startswith(text.rpartition(",")[0])][
            :25
        ]

    async def admin_moderation(
        self,
        actor: Actor,
        *,
        policy: str | None = None,
        threshold: float | None = None,
        age_restricted: str | None = None,
    ) -> ModerationView:
        await self._require_admin(actor)
        self.calls.append(("admin_moderation", (actor, policy, threshold, age_restricted)))
        return ModerationView(policy or "off", threshold or 0.8, age_restricted or "allow", False, "off")

    async def admin_job(self, actor: Actor, job_id: int) -> JobView:
        await self._require_admin(actor)
        job = self.jobs.get(job_id)
        if job is None:
            raise UserError("not_found", f"no job #{job_id}")
        return job

    async def job_images(self, job_id: int) -> tuple[GeneratedImage, ...]:
        return self.images.get(job_id, ())

    async def record_result_messages(self, job_id: int, message_ids: Sequence[int]) -> None:
        self.posted.setdefault(job_id, []).extend(message_ids)
        self._set(job_id, result_message_ids=(*self.jobs[job_id].result_message_ids, *message_ids))

    async def unposted_results(self) -> list[JobView]:
        return [j for j in self.jobs.values() if j.state in ("done", "failed") and not j.result_message_ids]

    async def delete_result(self, actor: Actor, message_id: int) -> JobView:
        job = await self.job_for_message(message_id)
        if job is None:
            raise UserError("not_found", "that message is not a chant result")
        if job.user_id != actor.user_id and not await self.is_admin(actor):
            raise UserError("permission", "only the owner or an admin can delete this result")
        return job

    async def cancel(self, actor: Actor, job_id: int) -> JobView:
        job = self.jobs.get(job_id)
        if job is None:
            raise UserError("not_found", f"no job #{job_id}")
        was = job.state
        view = self._set(job_id, state="cancelled")
        if was == "queued":
            self._emit(JobCancelled(view))
        return view

    async def live_status_jobs(self, limit: int = 1000) -> list[tuple[JobView, int | None]]:
        """Queued/running jobs with a status message to bring back after a restart (none survive here)."""
        return []

    async def history(self, actor: Actor, page: int = 0, per_page: int = 10) -> tuple[list[JobView], int]:
        mine = sorted((j for j in self.jobs.values() if j.user_id == actor.user_id), key=lambda j: -j.id)
        return mine[page * per_page : (page + 1) * per_page], len(mine)

    async def my_queue(self, actor: Actor) -> list[tuple[JobView, int]]:
        return [
            (j, n)
            for n, j in enumerate(
                j
                for j in self.jobs.values()
                if j.user_id == actor.user_id and j.state in ("queued", "running")
            )
        ]

    async def quota_status(self, actor: Actor) -> QuotaView:
        used = sum(j.request.count for j in self.jobs.values() if j.user_id == actor.user_id)
        return QuotaView(used, 100, 0.0, None, "day", datetime.now(UTC) + timedelta(hours=3), "guild")

    async def save_preset(self, actor, name, options, *, guild=False, from_last_job=False) -> None:
        self.presets[(actor.user_id, name)] = options or ImagineOptions(prompt="")

    async def delete_preset(self, actor, name, *, guild=False) -> None:
        if self.presets.pop((actor.user_id, name), None) is None:
            raise UserError("not_found", f"you have no preset named {name!r}")

    async def list_presets(self, actor: Actor) -> list[PresetView]:
        return [PresetView(n, "user", o) for (u, n), o in self.presets.items() if u == actor.user_id]

    async def preset_names(self, actor: Actor, prefix: str) -> list[str]:
        return [p.name for p in await self.list_presets(actor) if p.name.startswith(prefix)][:25]

    async def is_admin(self, actor: Actor) -> bool:
        return actor.manage_guild or bool(set(actor.role_ids) & self.admin_roles.get(actor.guild_id, set()))

    async def _require_admin(self, actor: Actor) -> None:
        if not await self.is_admin(actor):
            raise UserError("permission", "admins only")

    async def admin_set_limit(self, actor: Actor, name: str, value: int) -> None:
        await self._require_admin(actor)
        self.calls.append(("admin_set_limit", (actor, name, value)))
        if name == "max_steps":
            self.max_steps = value

    async def admin_stats(self, actor: Actor) -> dict[str, int | float]:
        await self._require_admin(actor)
        return {"jobs": len(self.jobs), "images": sum(len(i) for i in self.images.values())}

    async def guild_limits(self, actor: Actor) -> GuildLimits:
        return GuildLimits(self.max_steps, self.max_pixels.get(actor.guild_id, 1024 * 1024), 4, 4096 * 4096)

    def lora_names(self) -> list[str]:
        return list(self.loras)

    def upscaler_names(self, *, hires: bool = False) -> list[str]:
        models = ["R-ESRGAN 4x+", "4x-UltraSharp"]
        return [*ranges.UPSCALERS, *models] if hires else models

    def model_names(self) -> list[str]:
        return ["fake", "fake-xl"]

    async def default_size(self, actor: Actor, model: str | None) -> tuple[int, int]:
        return (1024, 1024) if model == "fake-xl" else (512, 512)

    def sampler_names(self) -> list[str]:
        return ["Euler a", "Euler", "DPM++ 2M", "DDIM"]
