"""The worker's SQL: the jobs table is the queue's source of truth.

Claiming is one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`` (PostgreSQL;
SQLite serialises writers with ``BEGIN IMMEDIATE`` and ignores the row lock), so two workers never
run the same job. A claimed job carries a lease (owner + expiry) that its worker renews; a job whose
lease ran out goes back to the queue (``attempts`` < max) or is failed with a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, and_, case, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import moderation
from core.cost import standard_images
from core.queue import notify
from core.queue.fair import QueuedJob
from core.queue.notify import EVENTS, JOBS, Note
from core.storage.db import Database
from core.storage.models import Guild, Job
from core.storage.repositories import Repositories, moderation_of
from core.types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

# Claims and lease renewals need not wait for the WAL flush: if the server crashed and lost such a
# commit, the job would still be queued (or its lease shorter) and another worker might run it too,
# but only the lease holder can store a result (``complete`` checks the lease): nothing is stored twice.
_ASYNC_COMMIT = text("SET LOCAL synchronous_commit TO OFF")


def batch_key(request: GenerationRequest) -> tuple:
    """Jobs with equal keys may share one engine call: what shapes the loop (``request.batch_key()``)
    and the LoRA set, the part the engine adds (``core.engine.batch.batch_key``).

    Torch-free (tags are read as ``core.prompt`` reads them); a job with a bad tag gets a key of its
    own, so it fails alone.
    """
    from core.engine.networks import networks_key
    from core.prompt.text import extract_networks, strip_comments

    try:
        networks = networks_key(extract_networks(strip_comments(request.prompt)[0])[1])
    except ValueError:
        networks = ("unreadable", request.prompt)
    return (*request.batch_key(), networks)


_CLAIM_PG = text(
    f"""
    WITH picked AS (
        SELECT id FROM jobs
        WHERE id = ANY(CAST(:ids AS BIGINT[])) AND state = 'queued'
        ORDER BY array_position(CAST(:ids AS BIGINT[]), id)
        LIMIT :n
        FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs SET state = 'running', lease_owner = :owner, lease_expires_at = :until,
                    attempts = jobs.attempts + 1, started_at = :now
    FROM picked WHERE jobs.id = picked.id
    RETURNING jobs.id, jobs.params, jobs.attempts, pg_notify(:channel, {notify.started_sql("jobs.id")})
    """
).columns(id=BigInteger, params=JSON, attempts=Integer)

CRASHED_TWICE = "This job stopped the worker {n} times, so it was not retried again. Try other settings."


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Active:
    """A queued or running job of the stored queue."""

    job: QueuedJob
    running: bool
    started_at: datetime | None  # when it was claimed (running jobs)
    worker: str | None  # the worker holding its lease (running jobs)


@dataclass(frozen=True)
class QueueStatus:
    """For ``chant queue status``."""

    states: dict[str, int]  # jobs per state
    busiest: list[tuple[int | None, int]]  # (guild, queued jobs), the ten with the most
    running: list[tuple[int, int | None, str | None, datetime | None]]  # (job, guild, worker, lease until)


@dataclass(frozen=True)
class Claimed:
    job_id: int
    request: GenerationRequest
    attempts: int


class JobStore:
    def __init__(
        self,
        db: Database,
        *,
        worker_id: str,
        lease_seconds: float,
        max_attempts: int = 2,
        moderation_policy: moderation.OperatorPolicy | None = None,
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        # The operator's [moderation] settings: each result is moderated as it is stored.
        self.moderation = moderation_policy or moderation.OperatorPolicy()

    @property
    def is_postgres(self) -> bool:
        return not self.db.is_sqlite

    # ------------------------------------------------------------------ queue snapshot

    async def queued_ids(self, *, after: int = 0) -> list[int]:
        """Ids of queued jobs (newer than ``after``), oldest first."""
        async with self.db.session() as s:
            rows = await s.scalars(
                select(Job.id).where(Job.state == "queued", Job.id > after).order_by(Job.id)
            )
            return list(rows)

    async def load(self, ids: Sequence[int]) -> list[QueuedJob]:
        """Scheduler entries (with batch keys) for these job ids."""
        if not ids:
            return []
        async with self.db.session() as s:
            rows = await s.execute(
                select(Job.id, Job.guild_id, Job.user_id, Job.cost, Job.params, Job.attempts).where(
                    Job.id.in_(list(ids))
                )
            )
            out = []
            for job_id, guild_id, user_id, cost, params, attempts in rows:
                # A job retried after its worker died runs alone: if it kills the worker again,
                # it takes no innocent batch-mates with it.
                request = GenerationRequest.from_dict(params)
                key = ("retry", job_id) if attempts else batch_key(request)
                out.append(QueuedJob(job_id, guild_id, user_id, standard_images(cost), key, request.count))
            return sorted(out, key=lambda j: j.job_id)

    async def guild_weights(self) -> dict[int, float]:
        """Operator weights of the guilds that have one other than 1.0."""
        async with self.db.session() as s:
            return await Repositories(s).guilds.weights()

    async def active(self) -> list[Active]:
        """The stored queue, oldest first: every queued and running job (no batch keys: positions and
        ETAs do not need them)."""
        async with self.db.session() as s:
            rows = await s.execute(
                select(
                    Job.id, Job.guild_id, Job.user_id, Job.cost, Job.state, Job.started_at, Job.lease_owner
                )
                .where(Job.state.in_(("queued", "running")))
                .order_by(Job.id)
            )
            return [
                Active(QueuedJob(job_id, gid, uid, standard_images(cost)), state == "running", started, owner)
                for job_id, gid, uid, cost, state, started, owner in rows
            ]

    # ------------------------------------------------------------------ claim, lease, finish

    async def claim(
        self, ids: Sequence[int], now: datetime | None = None, *, limit: int | None = None
    ) -> list[Claimed]:
        """Atomically take still-queued jobs among ``ids`` (state running, lease, attempts + 1).

        With ``limit``, only the first ``limit`` available ones in the order of ``ids`` (the fair
        order): rows another worker holds are skipped, not waited for. Result in ``ids`` order.
        """
        if not ids:
            return []
        ids = list(ids)
        now = now or utcnow()
        rank = case({job_id: i for i, job_id in enumerate(ids)}, value=Job.id)
        inner = select(Job.id).where(Job.id.in_(ids), Job.state == "queued")
        if limit is not None:
            inner = inner.order_by(rank).limit(limit)
        candidates = inner.with_for_update(skip_locked=True).scalar_subquery()
        stmt = (
            update(Job)
            .where(Job.id.in_(candidates))
            .values(
                state="running",
                lease_owner=self.worker_id,
                lease_expires_at=now + self.lease,
                attempts=Job.attempts + 1,
                started_at=now,
            )
            .returning(Job.id, Job.params, Job.attempts)
            .execution_options(synchronize_session=False)
        )
        if self.is_postgres:
            rows = await self._claim_pg(ids, now, limit)
        else:
            async with self.db.transaction(write=True) as s:
                rows = [tuple(row) for row in (await s.execute(stmt)).all()]
        where = {job_id: i for i, job_id in enumerate(ids)}
        rows = sorted(rows, key=lambda row: where[row[0]])
        out = []
        for job_id, params, attempts in rows:
            images: dict[str, Any] = {}
            guided = params.get("controls") or params.get("references")  # control / reference images
            if params.get("mode", "txt2img") != "txt2img" or guided:  # img2img / inpaint: their input images
                async with self.db.session() as s:
                    images = await Repositories(s).jobs.inputs(job_id)
            out.append(Claimed(job_id, GenerationRequest.from_dict(params, **images), attempts))
        return out

    async def _claim_pg(self, ids: list[int], now: datetime, limit: int | None) -> list[tuple]:
        """PostgreSQL: one statement picks (fair order, ``SKIP LOCKED``), leases and NOTIFYs."""
        params = {
            "ids": ids,
            "n": limit if limit is not None else len(ids),
            "owner": self.worker_id,
            "until": now + self.lease,
            "now": now,
            "channel": EVENTS,
        }
        async with self.db.engine.begin() as conn:  # Core connection: the hot path skips the ORM
            await conn.execute(_ASYNC_COMMIT)
            result = await conn.execute(_CLAIM_PG, params)
            return [tuple(row[:3]) for row in result.all()]

    async def renew(self, ids: Sequence[int], now: datetime | None = None) -> set[int]:
        """Extend our leases; returns the ids still ours and running (the others were cancelled or lost)."""
        if not ids:
            return set()
        now = now or utcnow()
        stmt = (
            update(Job)
            .where(Job.id.in_(list(ids)), Job.state == "running", Job.lease_owner == self.worker_id)
            .values(lease_expires_at=now + self.lease)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        if self.is_postgres:
            async with self.db.engine.begin() as conn:
                await conn.execute(_ASYNC_COMMIT)
                return set((await conn.execute(stmt)).scalars())
        async with self.db.transaction(write=True) as s:
            return set((await s.execute(stmt)).scalars())

    async def complete(self, job_id: int, result: GenerationResult, gpu_seconds: float) -> bool:
        """Store the images and mark the job done; False if the job is no longer ours (cancelled)."""
        async with self.db.transaction(write=True) as s:
            return await self._complete(s, job_id, result, gpu_seconds)

    async def complete_many(self, items: Sequence[tuple[int, GenerationResult, float]]) -> set[int]:
        """:meth:`complete` for a batch's jobs in ONE transaction (one commit, not one per job);
        returns the ids stored (the others are no longer ours). All or nothing on an error."""
        done: set[int] = set()
        async with self.db.transaction(write=True) as s:
            for job_id, result, gpu_seconds in items:
                if await self._complete(s, job_id, result, gpu_seconds):
                    done.add(job_id)
        return done

    async def _complete(
        self, s: AsyncSession, job_id: int, result: GenerationResult, gpu_seconds: float
    ) -> bool:
        now = utcnow()
        res = await s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "running", Job.lease_owner == self.worker_id)
            .values(
                state="done",
                finished_at=now,
                gpu_seconds=gpu_seconds,
                model_hash=result.model_hash[:16] if result.model_hash else None,
                model=result.model_name[:200] or None,  # the model it ran on, for the caption
                lease_owner=None,
                lease_expires_at=None,
                error=None,
            )
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            return False
        repos = Repositories(s)
        decisions = await self._moderate(s, job_id, result)
        await repos.jobs.add_images(job_id, result.images, [stored for _, stored in decisions])
        await repos.jobs.add_control_maps(job_id, result.control_maps)
        actual = {"gpu_seconds": gpu_seconds}
        charged = sum(decision.charged for decision, _ in decisions)
        if charged < len(decisions):  # blocked only because it could not be checked: refunded
            actual["images"] = float(charged)
        await repos.quotas.commit(job_id, actual=actual)
        await notify.send(s, EVENTS, Note("done", job_id))
        return True

    async def _moderate(
        self, s: AsyncSession, job_id: int, result: GenerationResult
    ) -> list[tuple[moderation.Decision, dict]]:
        """Each image's moderation decision for the place its job was asked in, under the policy of
        now (the worker scored the images; ``GeneratedImage.score`` None = not checked)."""
        guild_id, age_restricted = (
            await s.execute(select(Job.guild_id, Job.age_restricted).where(Job.id == job_id))
        ).one()
        place = moderation.place_of(guild_id, age_restricted)
        guild = None
        if guild_id is not None:
            guild = moderation_of(await s.get(Guild, guild_id), self.moderation.default)
        out = []
        for image in result.images:
            decision = moderation.decide(image.score, place, guild, self.moderation)
            out.append((decision, moderation.record(decision, place, guild, self.moderation)))
        return out

    async def fail(self, job_id: int, reason: str, *, only_if_ours: bool = True) -> bool:
        """Mark a running job failed (quota refunded); False if it is no longer ours."""
        now = utcnow()
        cond = [Job.id == job_id, Job.state == "running"]
        if only_if_ours:
            cond.append(Job.lease_owner == self.worker_id)
        async with self.db.transaction(write=True) as s:
            res = await s.execute(
                update(Job)
                .where(*cond)
                .values(
                    state="failed",
                    finished_at=now,
                    error=reason[:4000],
                    lease_owner=None,
                    lease_expires_at=None,
                )
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:
                return False
            await Repositories(s).quotas.refund(job_id)
            await notify.send(s, EVENTS, Note("failed", job_id))
        return True

    async def release(self, job_id: int) -> None:
        """Give a running job back to the queue (e.g. on shutdown); the attempt is not counted."""
        async with self.db.transaction(write=True) as s:
            await s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "running", Job.lease_owner == self.worker_id)
                .values(state="queued", lease_owner=None, lease_expires_at=None, attempts=Job.attempts - 1)
                .execution_options(synchronize_session=False)
            )
            await notify.send(s, JOBS, Note("queued", job_id))

    async def recover(
        self, *, all_running: bool = False, now: datetime | None = None
    ) -> tuple[list[int], list[int]]:
        """Return orphaned jobs to the queue, or fail them after ``max_attempts``.

        Orphans are running jobs whose lease expired — or, for the single process of an embedded
        SQLite setup at start (``all_running``), every running job. Returns (requeued, failed) ids.
        """
        now = now or utcnow()
        orphan = Job.state == "running"
        if not all_running:
            orphan = and_(orphan, or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))
        async with self.db.transaction(write=True) as s:
            rows = (
                await s.execute(select(Job.id, Job.attempts).where(orphan).with_for_update(skip_locked=True))
            ).all()
            requeue = [job_id for job_id, attempts in rows if attempts < self.max_attempts]
            failed = [job_id for job_id, attempts in rows if attempts >= self.max_attempts]
            if requeue:
                await s.execute(
                    update(Job)
                    .where(Job.id.in_(requeue))
                    .values(state="queued", lease_owner=None, lease_expires_at=None)
                    .execution_options(synchronize_session=False)
                )
            for job_id, attempts in rows:
                if job_id in failed:
                    await s.execute(
                        update(Job)
                        .where(Job.id == job_id)
                        .values(
                            state="failed",
                            finished_at=now,
                            error=CRASHED_TWICE.format(n=attempts),
                            lease_owner=None,
                            lease_expires_at=None,
                        )
                        .execution_options(synchronize_session=False)
                    )
                    await Repositories(s).quotas.refund(job_id)
            for job_id in failed:
                await notify.send(s, EVENTS, Note("failed", job_id))
            if requeue:
                await notify.send(s, JOBS, Note("queued", requeue[0]))
        if requeue or failed:
            log.warning("recovered orphaned jobs: requeued %s, failed %s", requeue, failed)
        return requeue, failed

    async def status(self) -> QueueStatus:
        async with self.db.session() as s:
            states = await s.execute(select(Job.state, func.count()).group_by(Job.state))
            busiest = await s.execute(
                select(Job.guild_id, func.count())
                .where(Job.state == "queued")
                .group_by(Job.guild_id)
                .order_by(func.count().desc())
                .limit(10)
            )
            running = await s.execute(
                select(Job.id, Job.guild_id, Job.lease_owner, Job.lease_expires_at).where(
                    Job.state == "running"
                )
            )
            return QueueStatus(
                {state: n for state, n in states}, [tuple(r) for r in busiest], [tuple(r) for r in running]
            )

    async def blocked(self, job_ids: Sequence[int]) -> dict[int, set[int]]:
        """The images moderation blocked, per job: their positions, which are the indexes of the job's
        result (a job's images are stored once, when it completes)."""
        async with self.db.session() as s:
            return await Repositories(s).jobs.blocked_positions(job_ids)

    async def state_of(self, job_id: int) -> str | None:
        async with self.db.session() as s:
            return await s.scalar(select(Job.state).where(Job.id == job_id))

    async def throughput(self, last: int = 20) -> float | None:
        """Measured standard images (:mod:`core.cost`) per GPU second over the last finished jobs (None
        without data)."""
        async with self.db.session() as s:
            sub = (
                select(Job.cost, Job.gpu_seconds)
                .where(Job.state == "done", Job.gpu_seconds > 0)
                .order_by(Job.id.desc())
                .limit(last)
                .subquery()
            )
            cost, secs = (await s.execute(select(func.sum(sub.c.cost), func.sum(sub.c.gpu_seconds)))).one()
            if not cost or not secs:
                return None
            return standard_images(float(cost)) / float(secs)
