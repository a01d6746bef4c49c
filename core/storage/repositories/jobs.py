"""Jobs as the bot sees them: the request, results, Discord messages, history and stats.

The queue's own SQL (claims, leases, recovery, results written by a worker) is
:class:`core.queue.store.JobStore`; this repository never claims or leases a job.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.cost import job_cost
from core.storage.models import (
    FINISHED_STATES,
    JOB_KINDS,
    Job,
    JobGuideImage,
    JobImage,
    JobInput,
    JobMessage,
    utcnow,
)
from core.storage.repositories._sql import insert
from core.storage.repositories.sources import SourceRepo
from core.storage.validation import MAX_ERROR_CHARS, MAX_PROMPT_CHARS, check_id, check_json_texts, check_text
from core.types import GeneratedImage, GenerationRequest, Mode

ACTIVE_STATES = ("queued", "running")
# PostgreSQL advisory lock key of the queue caps ("chant" and 1): one lock, taken by every submit.
QUEUE_CAPS_LOCK = 0x6368616E74_0001


class JobRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _update(self, job_ids: Sequence[int], *where: Any, **values: Any) -> int:
        """UPDATE jobs (compare-and-set on ``where``), then refresh any of them this session holds."""
        result = await self.session.execute(
            update(Job)
            .where(Job.id.in_(list(job_ids)), *where)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:
            for job_id in job_ids:
                held = self.session.identity_map.get(self.session.sync_session.identity_key(Job, job_id))
                if held is not None:
                    await self.session.refresh(held)
        return result.rowcount

    # -- create and read

    async def add(
        self,
        *,
        user_id: int,
        channel_id: int,
        guild_id: int | None,
        request: GenerationRequest,
        kind: str = "imagine",
        parent_id: int | None = None,
        model_hash: str | None = None,
        created_at: datetime | None = None,
        age_restricted: bool = False,
        prompt_templates: dict[str, Any] | None = None,
    ) -> Job:
        """Insert a queued job with the full request (input images go to ``job_inputs``).

        ``age_restricted``: asked in an age-restricted channel; ``prompt_templates``: the prompts as typed
        when dynamic prompts changed them (the request holds the expansion)."""
        if kind not in JOB_KINDS:
            raise ValueError(f"job kind must be one of {', '.join(JOB_KINDS)}, got {kind!r}")
        params = request.to_dict()
        for field in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
            check_text(params[field], field.replace("_", " "), max_chars=MAX_PROMPT_CHARS, multiline=True)
        check_json_texts(params, "request")
        if prompt_templates is not None:
            for field in ("prompt", "negative_prompt"):
                text = prompt_templates.get(field)
                if text is not None:
                    check_text(text, f"{field.replace('_', ' ')} template", max_chars=MAX_PROMPT_CHARS,
                               multiline=True)
            check_json_texts(prompt_templates, "prompt templates")
        if request.model is not None:
            check_text(request.model, "model", max_chars=200)
        job = Job(
            kind=kind,
            parent_id=parent_id,
            guild_id=None if guild_id is None else check_id(guild_id, "guild id"),
            channel_id=check_id(channel_id, "channel id"),
            user_id=check_id(user_id, "user id"),
            state="queued",
            params=params,
            model=request.model,
            model_hash=model_hash,
            seed=request.seed,
            count=request.count,
            width=request.width,
            height=request.height,
            steps=request.steps,
            sampler=check_text(request.sampler, "sampler", max_chars=64),
            cost=job_cost(request),
            attempts=0,
            posted=False,
            created_at=created_at or utcnow(),
            age_restricted=bool(age_restricted),
            prompt_templates=prompt_templates,
        )
        self.session.add(job)
        await self.session.flush()
        if request.init_image is not None or request.mask_image is not None:
            sources = SourceRepo(self.session)  # stored once, whichever jobs use them
            init = None if request.init_image is None else await sources.put(request.init_image)
            mask = None if request.mask_image is None else await sources.put(request.mask_image)
            self.session.add(JobInput(job_id=job.id, init_image_id=init, mask_image_id=mask))
            await self.session.flush()
        if any(image is not None for image in request.guide_images):  # control / reference images
            sources = SourceRepo(self.session)
            for position, image in enumerate(request.guide_images):
                if image is not None:
                    source = await sources.put(image)
                    self.session.add(
                        JobGuideImage(job_id=job.id, kind="input", position=position, source_image_id=source)
                    )
            await self.session.flush()
        return job

    async def get(self, job_id: int, *, for_update: bool = False) -> Job | None:
        stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
        if for_update:
            stmt = stmt.with_for_update()
        return await self.session.scalar(stmt)

    async def request(self, job: Job) -> GenerationRequest:
        """The stored request, with its input images if it has any (None where they were pruned)."""
        guided = job.params.get("controls") or job.params.get("references")
        images = await self.inputs(job.id) if job.params.get("mode", "txt2img") != Mode.TXT2IMG or guided else {}
        return GenerationRequest.from_dict(job.params, **images)

    async def inputs(self, job_id: int) -> dict[str, Any]:
        """``init_image`` and ``mask_image`` of an img2img / inpaint job, and ``guide_images`` (control and
        reference images by position) of a guided one (None: none, or pruned)."""
        row = await self.session.get(JobInput, job_id)
        guides = (await self.session.execute(
            select(JobGuideImage.position, JobGuideImage.source_image_id)
            .where(JobGuideImage.job_id == job_id, JobGuideImage.kind == "input")
        )).all()  # fmt: skip
        ids = [row.init_image_id, row.mask_image_id] if row is not None else []
        data = await SourceRepo(self.session).data([*ids, *(source for _, source in guides)])
        out: dict[str, Any] = {}
        if row is not None:
            out.update(init_image=data.get(row.init_image_id), mask_image=data.get(row.mask_image_id))
        if guides:
            images: list[bytes | None] = [None] * (max(position for position, _ in guides) + 1)
            for position, source in guides:
                images[position] = data.get(source)
            out["guide_images"] = tuple(images)
        return out

    async def inputs_pruned(self, job_id: int) -> bool:
        """Whether an input image of this job (source, mask, control or reference) was pruned."""
        row = await self.session.get(JobInput, job_id)
        ids = [row.init_image_id, row.mask_image_id] if row is not None else []
        ids += list(await self.session.scalars(
            select(JobGuideImage.source_image_id)
            .where(JobGuideImage.job_id == job_id, JobGuideImage.kind == "input")
        ))  # fmt: skip
        data = await SourceRepo(self.session).data(ids)
        return any(data.get(i) is None for i in ids if i is not None)

    async def add_control_maps(self, job_id: int, maps: Sequence[bytes]) -> None:
        """The preprocessed control maps the engine made for a job (PNGs, shown with its result)."""
        sources = SourceRepo(self.session)
        for position, data in enumerate(maps):
            source = await sources.put(data)
            self.session.add(JobGuideImage(job_id=job_id, kind="map", position=position, source_image_id=source))
        if maps:
            await self.session.flush()

    async def control_maps(self, job_id: int) -> tuple[bytes, ...]:
        """A finished job's control maps, in order (pruned ones left out)."""
        rows = (await self.session.execute(
            select(JobGuideImage.source_image_id)
            .where(JobGuideImage.job_id == job_id, JobGuideImage.kind == "map")
            .order_by(JobGuideImage.position)
        )).scalars().all()  # fmt: skip
        data = await SourceRepo(self.session).data(rows)
        return tuple(data[i] for i in rows if data.get(i) is not None)

    async def by_message(self, message_id: int) -> Job | None:
        """The job shown by a status or result message (🔁, ❌, ℹ️ on any message we posted)."""
        return await self.session.scalar(
            select(Job)
            .join(JobMessage, JobMessage.job_id == Job.id)
            .where(JobMessage.message_id == message_id)
        )

    async def history_page(
        self, user_id: int, *, page: int = 0, per_page: int = 10, guild_id: int | None = None
    ) -> tuple[list[Job], int]:
        """One page of a user's jobs, newest first, and their total: one statement."""
        if page < 0 or not 1 <= per_page <= 100:
            raise ValueError(f"history page must be ≥ 0 and per_page 1..100, got {page}, {per_page}")
        cond = [Job.user_id == user_id]
        if guild_id is not None:
            cond.append(Job.guild_id == guild_id)
        total = select(func.count()).select_from(Job).where(*cond).scalar_subquery()
        rows = (
            await self.session.execute(
                select(Job, total.label("total"))
                .where(*cond)
                .order_by(Job.id.desc())
                .limit(per_page)
                .offset(page * per_page)
            )
        ).all()
        if rows:
            return [job for job, _ in rows], int(rows[0].total)
        return [], await self.count_for_user(user_id, guild_id=guild_id)

    async def count_for_user(self, user_id: int, *, guild_id: int | None = None) -> int:
        stmt = select(func.count()).select_from(Job).where(Job.user_id == user_id)
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        return int(await self.session.scalar(stmt) or 0)

    async def last_for_user(self, user_id: int) -> Job | None:
        return await self.session.scalar(
            select(Job).where(Job.user_id == user_id).order_by(Job.id.desc()).limit(1)
        )

    async def lock_queue(self) -> None:
        """Serialise submits until the transaction ends, so that :meth:`active_counts` stays true until
        the new job is inserted: the caps are exact.

        PostgreSQL: a transaction-level advisory lock. Under READ COMMITTED two submits of different
        users each count the queue before the other commits and both pass a cap: 100 concurrent submits
        against a guild cap of 10 accepted 11, against a global cap of 10 accepted 17 to 21. Every two
        submits may race for the global cap, so one lock covers the three caps. SQLite: nothing to do
        (``BEGIN IMMEDIATE`` already holds the database's write lock).
        """
        if self.session.bind.dialect.name == "postgresql":
            await self.session.execute(select(func.pg_advisory_xact_lock(QUEUE_CAPS_LOCK)))

    async def active_counts(self, guild_id: int | None, user_id: int) -> tuple[int, int, int]:
        """Queued + running jobs of (this user here, this guild or the DMs, everyone): one query."""
        here = Job.guild_id.is_(None) if guild_id is None else Job.guild_id == guild_id
        row = (
            await self.session.execute(
                select(
                    func.count().filter(and_(here, Job.user_id == user_id)),
                    func.count().filter(here),
                    func.count(),
                ).where(Job.state.in_(ACTIVE_STATES))
            )
        ).one()
        return int(row[0]), int(row[1]), int(row[2])

    async def active_for_user(self, user_id: int) -> list[Job]:
        """A user's queued and running jobs, oldest first (/queue)."""
        return list(
            await self.session.scalars(
                select(Job).where(Job.user_id == user_id, Job.state.in_(ACTIVE_STATES)).order_by(Job.id)
            )
        )

    async def running_ids(self) -> list[int]:
        """Running jobs, oldest first (what started while a bot process could not hear it)."""
        return list(await self.session.scalars(select(Job.id).where(Job.state == "running").order_by(Job.id)))

    async def live_with_status(self, *, limit: int = 1000) -> list[Job]:
        """Queued and running jobs that have a status message, oldest first (restart recovery)."""
        return list(
            await self.session.scalars(
                select(Job)
                .where(Job.state.in_(ACTIVE_STATES), Job.status_message_id.is_not(None))
                .order_by(Job.id)
                .limit(limit)
            )
        )

    async def finish(
        self,
        job_id: int,
        state: str,
        *,
        error: str | None = None,
        model_hash: str | None = None,
        gpu_seconds: float | None = None,
        now: datetime | None = None,
    ) -> bool:
        """queued/running → done | failed | cancelled (compare-and-set: a finished job stays finished)."""
        if state not in FINISHED_STATES:
            raise ValueError(f"a job finishes as one of {', '.join(FINISHED_STATES)}, not {state!r}")
        cond = [Job.state.in_(ACTIVE_STATES)]
        values: dict[str, Any] = {"state": state, "finished_at": now or utcnow(), "lease_expires_at": None}
        if error is not None:
            check_text(error[:MAX_ERROR_CHARS], "error", max_chars=MAX_ERROR_CHARS, multiline=True)
            values["error"] = error[:MAX_ERROR_CHARS]
        if model_hash is not None:
            values["model_hash"] = model_hash
        if gpu_seconds is not None:
            values["gpu_seconds"] = gpu_seconds
        return await self._update([job_id], *cond, **values) == 1

    async def cancel(self, job_id: int, *, now: datetime | None = None) -> bool:
        return await self.finish(job_id, "cancelled", now=now)

    # -- results

    async def add_images(
        self,
        job_id: int,
        images: Sequence[GeneratedImage],
        moderation: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[JobImage]:
        """Store result PNGs, their seeds and classifier scores, and per image its moderation decision
        (positions continue after images already stored)."""
        if moderation is not None and len(moderation) != len(images):
            raise ValueError(f"{len(moderation)} moderation decisions for {len(images)} images")
        start = int(
            await self.session.scalar(
                select(func.count()).select_from(JobImage).where(JobImage.job_id == job_id)
            )
            or 0
        )
        rows = [
            JobImage(
                job_id=job_id,
                position=start + i,
                seed=img.seed,
                subseed=img.subseed,
                infotext=check_text(img.infotext, "infotext", max_chars=4 * MAX_PROMPT_CHARS, multiline=True),
                png=img.png,
                size_bytes=len(img.png),
                moderation_score=img.score,
                moderation=None if moderation is None else moderation[i],
            )
            for i, img in enumerate(images)
        ]
        self.session.add_all(rows)
        await self.session.flush()
        return rows

    async def images(self, job_id: int) -> list[JobImage]:
        return list(
            await self.session.scalars(
                select(JobImage).where(JobImage.job_id == job_id).order_by(JobImage.position)
            )
        )

    async def seeds(self, job_id: int) -> list[int]:
        return list(
            await self.session.scalars(
                select(JobImage.seed).where(JobImage.job_id == job_id).order_by(JobImage.position)
            )
        )

    async def moderation(
        self, job_id: int, *, stored_only: bool = False
    ) -> list[tuple[float | None, dict[str, Any] | None]]:
        """Each image's classifier score and stored moderation decision, by position (no PNG bytes);
        ``stored_only``: of the images whose PNG is still stored (as :meth:`images` yields them)."""
        stmt = select(JobImage.moderation_score, JobImage.moderation).where(JobImage.job_id == job_id)
        if stored_only:
            stmt = stmt.where(JobImage.png.is_not(None))
        rows = await self.session.execute(stmt.order_by(JobImage.position))
        return [(score, decision) for score, decision in rows]

    async def blocked_positions(self, job_ids: Sequence[int]) -> dict[int, set[int]]:
        """Per job, the positions of its images whose stored moderation decision is "block" (jobs
        with none are left out)."""
        if not job_ids:
            return {}
        stmt = select(JobImage.job_id, JobImage.position).where(
            JobImage.job_id.in_(list(job_ids)), JobImage.moderation["action"].as_string() == "block"
        )
        out: dict[int, set[int]] = {}
        for job_id, position in await self.session.execute(stmt):
            out.setdefault(job_id, set()).add(position)
        return out

    async def prune_images(self, older_than: datetime, *, now: datetime | None = None) -> int:
        """Drop PNG bytes of images created before ``older_than``; seeds and infotext stay."""
        result = await self.session.execute(
            update(JobImage)
            .where(JobImage.created_at < older_than, JobImage.png.is_not(None))
            .values(png=None, pruned_at=now or utcnow())
            .execution_options(synchronize_session=False)
        )
        return result.rowcount

    # -- Discord messages

    async def set_status_message(self, job_id: int, channel_id: int, message_id: int) -> None:
        await self._update(
            [job_id],
            status_channel_id=check_id(channel_id, "channel id"),
            status_message_id=check_id(message_id, "message id"),
        )
        await self._add_messages(job_id, channel_id, [message_id], "status")

    async def add_result_messages(self, job_id: int, channel_id: int, message_ids: Sequence[int]) -> None:
        await self._add_messages(job_id, channel_id, message_ids, "result")

    async def _add_messages(
        self, job_id: int, channel_id: int, message_ids: Sequence[int], kind: str
    ) -> None:
        start = int(
            await self.session.scalar(
                select(func.count())
                .select_from(JobMessage)
                .where(JobMessage.job_id == job_id, JobMessage.kind == kind)
            )
            or 0
        )
        stmt = (
            insert(self.session, JobMessage)
            .values(
                [
                    {
                        "message_id": check_id(m, "message id"),
                        "job_id": job_id,
                        "channel_id": channel_id,
                        "kind": kind,
                        "position": start + i,
                        "created_at": utcnow(),
                    }
                    for i, m in enumerate(message_ids)
                ]
            )
            .on_conflict_do_nothing(index_elements=["message_id"])
        )
        if message_ids:
            await self.session.execute(stmt)

    async def result_message_ids(self, job_id: int) -> list[int]:
        return list(
            await self.session.scalars(
                select(JobMessage.message_id)
                .where(JobMessage.job_id == job_id, JobMessage.kind == "result")
                .order_by(JobMessage.position)
            )
        )

    async def forget_messages(self, message_ids: Sequence[int]) -> int:
        """Forget deleted Discord messages (❌): they no longer find their job."""
        result = await self.session.execute(
            delete(JobMessage).where(JobMessage.message_id.in_(list(message_ids)))
        )
        return result.rowcount

    async def mark_posted(self, job_id: int, *, now: datetime | None = None) -> bool:
        """First call for a job returns True, every later one False (post results exactly once)."""
        return (
            await self._update([job_id], Job.posted.is_(False), posted=True, posted_at=now or utcnow()) == 1
        )

    async def finished_since(self, after: datetime) -> list[int]:
        """Done or failed jobs, never posted, that finished after ``after`` (a bot process without a
        worker and without LISTEN polls these)."""
        return list(
            await self.session.scalars(
                select(Job.id).where(
                    Job.posted.is_(False), Job.state.in_(("done", "failed")), Job.finished_at > after
                )
            )
        )

    async def unposted(self, *, limit: int = 100) -> list[Job]:
        """Done or failed jobs whose result was never posted, oldest first (restart recovery)."""
        return list(
            await self.session.scalars(
                select(Job)
                .where(Job.posted.is_(False), Job.state.in_(("done", "failed")))
                .order_by(Job.id)
                .limit(limit)
            )
        )

    # -- stats

    async def moderation_counts(self, *, guild_id: int | None = None) -> dict[str, int]:
        """Result images by moderation decision ("post" | "spoiler" | "block"), and how many were not
        checked by a classifier (``unchecked``)."""
        action = JobImage.moderation["action"].as_string()
        stmt = (
            select(action, func.count(), func.count(JobImage.moderation_score))
            .join(Job, Job.id == JobImage.job_id)
            .group_by(action)
        )
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        out = {"post": 0, "spoiler": 0, "block": 0, "unchecked": 0}
        for name, images, scored in await self.session.execute(stmt):
            if name is not None:
                out[str(name)] = out.get(str(name), 0) + int(images)
            out["unchecked"] += int(images) - int(scored)
        return out

    async def stats(self, *, guild_id: int | None = None, since: datetime | None = None) -> dict[str, float]:
        stmt: Select[Any] = select(
            Job.state,
            func.count(),
            func.coalesce(func.sum(Job.count), 0),
            func.coalesce(func.sum(Job.gpu_seconds), 0.0),
        ).group_by(Job.state)
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        if since is not None:
            stmt = stmt.where(Job.created_at >= since)
        out: dict[str, float] = {"jobs": 0, "images": 0, "gpu_seconds": 0.0}
        for state, jobs, images, seconds in await self.session.execute(stmt):
            out[f"jobs_{state}"] = jobs
            out["jobs"] += jobs
            if state == "done":
                out["images"] += images
            out["gpu_seconds"] += float(seconds)
        return out
