"""An in-memory ChantService for the bot's in-process tests (no database, no engine).

It keeps the contract of :mod:`core.services` (UserError codes, events, result-message lookup,
admin = Manage Guild or an admin role) so the cogs can be tested against the fake Discord server
before and independently of the real service; the end-to-end tests run the real one.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

from PIL import Image, PngImagePlugin

from core.services import (
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
from core.types import GeneratedImage, GenerationRequest


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
        import dataclasses

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
            )
            self._emit(JobDone(view, images))

    def _new_job(self, actor: Actor, request: GenerationRequest, kind: str, parent: int | None) -> Receipt:
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
            status_message_id=None,
            result_message_ids=(),
        )
        position = sum(1 for j in self.jobs.values() if j.state == "queued")
        self._queue.put_nowait(job_id)
        self._emit(JobQueued(job_id, position, position * 0.5))
        return Receipt(job_id, position, position * 0.5)

    # the contract
    async def submit_imagine(self, actor: Actor, options: ImagineOptions) -> Receipt:
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
        )
        return self._new_job(actor, request, "imagine", None)

    async def job_for_message(self, message_id: int) -> JobView | None:
        for job in self.jobs.values():
            if message_id in job.result_message_ids:
                return job
        return None

    async def reroll(self, actor: Actor, message_id: int) -> Receipt:
        self.calls.append(("reroll", (actor, message_id)))
        job = await self.job_for_message(message_id)
        if job is None:
            raise UserError("not_found", "that message is not a chant result")
        request = job.request.replace(seed=random.randrange(2**32))
        return self._new_job(actor, request, "reroll", job.id)

    async def variation(self, actor: Actor, message_id: int) -> Receipt:
        self.calls.append(("variation", (actor, message_id)))
        job = await self.job_for_message(message_id)
        if job is None:
            raise UserError("not_found", "that message is not a chant result")
        request = job.request.replace(subseed=random.randrange(2**32), subseed_strength=0.25)
        return self._new_job(actor, request, "variation", job.id)

    async def show(self, actor: Actor, job_id: int) -> JobView:
        job = self.jobs.get(job_id)
        if job is None or job.user_id != actor.user_id:
            raise UserError("not_found", f"job #{job_id} is not one of yours")
        return job

    async def job_images(self, job_id: int) -> tuple[GeneratedImage, ...]:
        return self.images.get(job_id, ())

    async def record_status_message(self, job_id: int, channel_id: int, message_id: int) -> None:
        self._set(job_id, status_message_id=message_id)

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

    def model_names(self) -> list[str]:
        return ["fake", "fake-xl"]

    async def default_size(self, actor: Actor, model: str | None) -> tuple[int, int]:
        return (1024, 1024) if model == "fake-xl" else (512, 512)

    def sampler_names(self) -> list[str]:
        return ["Euler a", "Euler", "DPM++ 2M", "DDIM"]
