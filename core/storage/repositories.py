"""Repositories: typed queries over one :class:`AsyncSession`. They flush, they never commit.

The service layer owns transactions::

    async with db.transaction(write=True) as session:
        repos = Repositories(session)
        entries = await repos.quotas.reserve(guild_id, user_id, {"images": 2}, allowances)
        job = await repos.jobs.add(user_id=..., channel_id=..., guild_id=..., request=request)
        await repos.quotas.attach(entries, job.id)

Read-check-write operations (``QuotaRepo.reserve``, ``JobRepo.claim``, ``JobRepo.mark_posted``) are
written as compare-and-set statements or under a row lock, so they stay correct with several
processes; on SQLite run them in ``Database.write_session()`` (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from core.storage.models import (
    DM_GUILD,
    FINISHED_STATES,
    JOB_KINDS,
    AuditEntry,
    Guild,
    Job,
    JobImage,
    JobInput,
    JobMessage,
    Preset,
    QuotaLock,
    QuotaRule,
    UsageEntry,
    UTCDateTime,
    utcnow,
)
from core.storage.validation import (
    MAX_ADMIN_ROLES,
    MAX_BANNED_WORDS,
    MAX_CHANNELS,
    MAX_ERROR_CHARS,
    MAX_NAME_CHARS,
    MAX_PROMPT_CHARS,
    MAX_WORD_CHARS,
    check_id,
    check_json_texts,
    check_name,
    check_text,
)
from core.types import GeneratedImage, GenerationRequest, Mode

MAX_PRESETS_PER_OWNER = 25  # Discord's autocomplete shows 25 choices
QUOTA_UNITS = ("images", "gpu_seconds")
QUOTA_PERIODS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
QUOTA_SCOPES = ("guild", "role", "user")


def _insert(session: AsyncSession, table: Any) -> Any:
    """The dialect's INSERT (with ``on_conflict_do_*``) for this session's database."""
    dialect = session.bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _guild_key(guild_id: int | None) -> int:
    return DM_GUILD if guild_id is None else check_id(guild_id, "guild id")


# --------------------------------------------------------------------------------------------- guilds

GUILD_LIMIT_FIELDS = ("max_steps", "max_pixels", "max_images", "max_queued_per_user", "max_queued_per_guild")


class GuildRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, guild_id: int) -> Guild | None:
        return await self.session.get(Guild, guild_id)

    async def get_or_create(self, guild_id: int) -> Guild:
        check_id(guild_id, "guild id")
        await self.session.execute(
            _insert(self.session, Guild)
            .values(
                id=guild_id,
                reroll_policy="everyone",
                weight=1.0,
                banned_words=[],
                channel_ids=[],
                admin_role_ids=[],
                created_at=utcnow(),
                updated_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        guild = await self.session.get(Guild, guild_id, populate_existing=True)
        assert guild is not None
        return guild

    async def update(self, guild_id: int, **changes: Any) -> dict[str, Any]:
        """Set guild settings; returns the previous values of the changed fields (for the audit).

        Fields: the limits in :data:`GUILD_LIMIT_FIELDS` (positive int or None = config default),
        ``default_model`` (name or None), ``reroll_policy`` ("everyone" | "owner"), ``weight`` (> 0).
        """
        guild = await self.get_or_create(guild_id)
        before: dict[str, Any] = {}
        for name, value in changes.items():
            if name in GUILD_LIMIT_FIELDS:
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ValueError(f"{name} must be a positive whole number, got {value!r}")
            elif name == "default_model":
                if value is not None:
                    check_text(value, "default model", max_chars=200, empty=False)
            elif name == "reroll_policy":
                if value not in ("everyone", "owner"):
                    raise ValueError(f"reroll policy must be 'everyone' or 'owner', got {value!r}")
            elif name == "weight":
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                    raise ValueError(f"weight must be a positive number, got {value!r}")
                value = float(value)
            else:
                raise ValueError(f"unknown guild setting {name!r}")
            before[name] = getattr(guild, name)
            setattr(guild, name, value)
        await self.session.flush()
        return before

    async def add_banned_words(self, guild_id: int, words: Iterable[str]) -> list[str]:
        guild = await self.get_or_create(guild_id)
        current = list(guild.banned_words)
        known = {w.casefold() for w in current}
        for word in words:
            check_text(word, "banned word", max_chars=MAX_WORD_CHARS, empty=False)
            word = word.strip()
            if word.casefold() not in known:
                current.append(word)
                known.add(word.casefold())
        if len(current) > MAX_BANNED_WORDS:
            raise ValueError(f"a guild can ban at most {MAX_BANNED_WORDS} words")
        guild.banned_words = current
        await self.session.flush()
        return current

    async def remove_banned_words(self, guild_id: int, words: Iterable[str]) -> list[str]:
        guild = await self.get_or_create(guild_id)
        drop = {w.strip().casefold() for w in words}
        guild.banned_words = [w for w in guild.banned_words if w.casefold() not in drop]
        await self.session.flush()
        return list(guild.banned_words)

    async def set_channels(self, guild_id: int, channel_ids: Iterable[int]) -> list[int]:
        """Channels where the bot answers; empty = every channel."""
        ids = list(dict.fromkeys(check_id(c, "channel id") for c in channel_ids))
        if len(ids) > MAX_CHANNELS:
            raise ValueError(f"at most {MAX_CHANNELS} channels can be listed")
        guild = await self.get_or_create(guild_id)
        guild.channel_ids = ids
        await self.session.flush()
        return ids

    async def add_admin_role(self, guild_id: int, role_id: int) -> list[int]:
        check_id(role_id, "role id")
        guild = await self.get_or_create(guild_id)
        if role_id not in guild.admin_role_ids:
            if len(guild.admin_role_ids) >= MAX_ADMIN_ROLES:
                raise ValueError(f"a guild can have at most {MAX_ADMIN_ROLES} admin roles")
            guild.admin_role_ids = [*guild.admin_role_ids, role_id]
        await self.session.flush()
        return list(guild.admin_role_ids)

    async def remove_admin_role(self, guild_id: int, role_id: int) -> list[int]:
        guild = await self.get_or_create(guild_id)
        guild.admin_role_ids = [r for r in guild.admin_role_ids if r != role_id]
        await self.session.flush()
        return list(guild.admin_role_ids)

    async def weights(self) -> dict[int, float]:
        """Fair-queue weights of guilds that differ from 1.0."""
        rows = await self.session.execute(select(Guild.id, Guild.weight).where(Guild.weight != 1.0))
        return {gid: w for gid, w in rows}


# -------------------------------------------------------------------------------------------- presets


class PresetLimitReached(ValueError):
    """The owner already has :data:`MAX_PRESETS_PER_OWNER` presets."""


class PresetRepo:
    """Presets of a user (``owner_kind="user"``) or a guild (``"guild"``); names case-insensitive."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _where(self, owner_kind: str, owner_id: int) -> Any:
        if owner_kind not in ("user", "guild"):
            raise ValueError(f"preset owner must be 'user' or 'guild', got {owner_kind!r}")
        check_id(owner_id, f"{owner_kind} id")
        return and_(Preset.owner_kind == owner_kind, Preset.owner_id == owner_id)

    async def _lock_owner(self, owner_kind: str, owner_id: int) -> None:
        """Serialise saves per owner so the 25-preset cap and name uniqueness hold under concurrency.

        PostgreSQL: a transaction-scoped advisory lock (user ids as keys, guild ids negated).
        SQLite: ``Database.write_session()`` already holds the write lock.
        """
        self._where(owner_kind, owner_id)
        if self.session.bind.dialect.name == "postgresql":
            key = owner_id if owner_kind == "user" else -owner_id
            await self.session.execute(select(func.pg_advisory_xact_lock(key)))

    async def get(self, owner_kind: str, owner_id: int, name: str) -> Preset | None:
        key = check_name(name, "preset name").casefold()
        return await self.session.scalar(
            select(Preset).where(self._where(owner_kind, owner_id), Preset.name_key == key)
        )

    async def save(
        self, owner_kind: str, owner_id: int, name: str, params: Mapping[str, Any], *, created_by: int
    ) -> tuple[Preset, bool]:
        """Create or replace (same name, any case) a preset; returns ``(preset, created)``."""
        check_name(name, "preset name")
        params = dict(check_json_texts(dict(params), "preset"))
        await self._lock_owner(owner_kind, owner_id)
        existing = await self.get(owner_kind, owner_id, name)
        if existing is not None:
            existing.name, existing.params, existing.created_by = name, params, created_by
            await self.session.flush()
            return existing, False
        count = await self.session.scalar(
            select(func.count()).select_from(Preset).where(self._where(owner_kind, owner_id))
        )
        if (count or 0) >= MAX_PRESETS_PER_OWNER:
            raise PresetLimitReached(
                f"at most {MAX_PRESETS_PER_OWNER} presets per {owner_kind}: delete one before saving {name!r}"
            )
        preset = Preset(
            owner_kind=owner_kind,
            owner_id=owner_id,
            name=name,
            name_key=name.casefold(),
            params=params,
            created_by=check_id(created_by, "creator id"),
        )
        self.session.add(preset)
        await self.session.flush()
        return preset, True

    async def list(self, owner_kind: str, owner_id: int) -> list[Preset]:
        rows = await self.session.scalars(
            select(Preset).where(self._where(owner_kind, owner_id)).order_by(Preset.name_key)
        )
        return list(rows)

    async def names(self, owner_kind: str, owner_id: int, prefix: str = "", limit: int = 25) -> list[str]:
        """Names starting with ``prefix`` (case-insensitive), for autocomplete."""
        check_text(prefix, "prefix", max_chars=MAX_NAME_CHARS)
        key = prefix.casefold()
        stmt = select(Preset.name).where(self._where(owner_kind, owner_id)).order_by(Preset.name_key)
        if key:
            # A range on name_key instead of LIKE: no wildcards to escape in user text.
            stmt = stmt.where(Preset.name_key >= key, Preset.name_key < key + "\U0010ffff")
        return list(await self.session.scalars(stmt.limit(limit)))

    async def delete(self, owner_kind: str, owner_id: int, name: str) -> Preset | None:
        preset = await self.get(owner_kind, owner_id, name)
        if preset is not None:
            await self.session.delete(preset)
            await self.session.flush()
        return preset


# ----------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Recovery:
    requeued: list[int]
    failed: list[int]


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
    ) -> Job:
        """Insert a queued job with the full request (input images go to ``job_inputs``)."""
        if kind not in JOB_KINDS:
            raise ValueError(f"job kind must be one of {', '.join(JOB_KINDS)}, got {kind!r}")
        params = request.to_dict()
        for field in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
            check_text(params[field], field.replace("_", " "), max_chars=MAX_PROMPT_CHARS, multiline=True)
        check_json_texts(params, "request")
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
            cost=float(request.width * request.height * request.steps * request.count),
            attempts=0,
            posted=False,
            created_at=created_at or utcnow(),
        )
        self.session.add(job)
        await self.session.flush()
        if request.init_image is not None or request.mask_image is not None:
            self.session.add(
                JobInput(job_id=job.id, init_image=request.init_image, mask_image=request.mask_image)
            )
            await self.session.flush()
        return job

    async def get(self, job_id: int, *, for_update: bool = False) -> Job | None:
        stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
        if for_update:
            stmt = stmt.with_for_update()
        return await self.session.scalar(stmt)

    async def request(self, job: Job) -> GenerationRequest:
        """The stored request, with its input images if it has any."""
        images: dict[str, bytes | None] = {}
        if job.params.get("mode", "txt2img") != Mode.TXT2IMG:
            inputs = await self.session.get(JobInput, job.id)
            if inputs is not None:
                images = {"init_image": inputs.init_image, "mask_image": inputs.mask_image}
        return GenerationRequest.from_dict(job.params, **images)

    async def by_message(self, message_id: int) -> Job | None:
        """The job shown by a status or result message (🔁, ❌, ℹ️ on any message we posted)."""
        return await self.session.scalar(
            select(Job)
            .join(JobMessage, JobMessage.job_id == Job.id)
            .where(JobMessage.message_id == message_id)
        )

    async def history(
        self, user_id: int, *, limit: int = 10, offset: int = 0, guild_id: int | None = None
    ) -> list[Job]:
        """A user's jobs, newest first (``guild_id`` narrows to one guild)."""
        stmt = select(Job).where(Job.user_id == user_id)
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        return list(await self.session.scalars(stmt.order_by(Job.id.desc()).limit(limit).offset(offset)))

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

    async def children(self, job_id: int) -> list[Job]:
        return list(await self.session.scalars(select(Job).where(Job.parent_id == job_id).order_by(Job.id)))

    # -- the queue

    def _active(self) -> Any:
        return Job.state.in_(("queued", "running"))

    async def queued(self, *, limit: int | None = None, guild_id: int | None = None) -> list[Job]:
        """Queued jobs in submit order (the queue rebuilds itself from this on start)."""
        stmt = select(Job).where(Job.state == "queued").order_by(Job.id)
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        return list(await self.session.scalars(stmt))

    async def lock_queued(self, job_ids: Sequence[int]) -> list[Job]:
        """``SELECT … FOR UPDATE SKIP LOCKED`` on these queued jobs (PostgreSQL; plain select on SQLite).

        Workers pass the fair order's front and claim what they got, in the order they asked.
        """
        if not job_ids:
            return []
        stmt = select(Job).where(Job.id.in_(job_ids), Job.state == "queued").with_for_update(skip_locked=True)
        rows = {job.id: job for job in await self.session.scalars(stmt)}
        return [rows[i] for i in job_ids if i in rows]

    async def count_active(
        self, *, user_id: int | None = None, guild_id: int | None = None, dm: bool = False
    ) -> int:
        """Queued + running jobs, for one user, one guild (``dm=True``: DMs), or everyone."""
        stmt = select(func.count()).select_from(Job).where(self._active())
        if user_id is not None:
            stmt = stmt.where(Job.user_id == user_id)
        if dm:
            stmt = stmt.where(Job.guild_id.is_(None))
        elif guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        return int(await self.session.scalar(stmt) or 0)

    async def claim(
        self, job_id: int, owner: str, lease_until: datetime, *, now: datetime | None = None
    ) -> bool:
        """queued → running for ``owner`` (compare-and-set: exactly one claimer wins)."""
        now = now or utcnow()
        changed = await self._update(
            [job_id],
            Job.state == "queued",
            state="running",
            lease_owner=check_text(owner, "worker id", max_chars=200),
            lease_expires_at=lease_until,
            attempts=Job.attempts + 1,
            started_at=now,
        )
        return changed == 1

    async def renew_lease(self, job_id: int, owner: str, lease_until: datetime) -> bool:
        """Extend a running job's lease; False if the job is no longer ours (expired and re-queued)."""
        changed = await self._update(
            [job_id], Job.state == "running", Job.lease_owner == owner, lease_expires_at=lease_until
        )
        return changed == 1

    async def recover_expired(
        self, *, now: datetime | None = None, max_attempts: int = 2, owner: str | None = None
    ) -> Recovery:
        """Running jobs whose lease expired (or all of ``owner``'s, after that worker restarted):
        back to the queue if they have attempts left, else failed with a reason."""
        now = now or utcnow()
        cond = Job.state == "running"
        cond = (
            and_(cond, Job.lease_owner == owner)
            if owner is not None
            else and_(cond, Job.lease_expires_at < now)
        )
        rows = list(
            await self.session.execute(
                select(Job.id, Job.attempts).where(cond).order_by(Job.id).with_for_update(skip_locked=True)
            )
        )
        requeue = [i for i, attempts in rows if attempts < max_attempts]
        fail = [i for i, attempts in rows if attempts >= max_attempts]
        if requeue:
            await self._update(
                requeue, cond, state="queued", lease_owner=None, lease_expires_at=None, started_at=None
            )
        if fail:
            await self._update(
                fail,
                cond,
                state="failed",
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now,
                error=f"the worker stopped while running this job {max_attempts} times; it was not retried again",
            )
        return Recovery(requeue, fail)

    async def finish(
        self,
        job_id: int,
        state: str,
        *,
        error: str | None = None,
        model_hash: str | None = None,
        gpu_seconds: float | None = None,
        owner: str | None = None,
        now: datetime | None = None,
    ) -> bool:
        """running/queued → done | failed | cancelled (compare-and-set; ``owner`` must hold the lease)."""
        if state not in FINISHED_STATES:
            raise ValueError(f"a job finishes as one of {', '.join(FINISHED_STATES)}, not {state!r}")
        cond = [self._active()]
        if owner is not None:
            cond.append(Job.lease_owner == owner)
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

    async def add_images(self, job_id: int, images: Sequence[GeneratedImage]) -> list[JobImage]:
        """Store result PNGs and their seeds (positions continue after images already stored)."""
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
            _insert(self.session, JobMessage)
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


# --------------------------------------------------------------------------------------------- quotas


@dataclass(frozen=True)
class Allowance:
    """The allowance that applies to one user for one unit and period, and where it came from."""

    unit: str
    period: str
    allowance: float
    scope: str  # guild | role | user
    target_id: int


@dataclass(frozen=True)
class QuotaUsage:
    unit: str
    period: str
    used: float  # reserved + committed in the current window
    allowance: float
    window_start: datetime
    resets_at: datetime

    @property
    def remaining(self) -> float:
        return max(0.0, self.allowance - self.used)


class QuotaExceeded(Exception):
    """A reservation would pass an allowance. ``str(exc)`` is safe to show the user."""

    def __init__(self, usage: QuotaUsage, requested: float) -> None:
        self.usage, self.requested = usage, requested
        unit = "images" if usage.unit == "images" else "GPU seconds"
        super().__init__(
            f"quota reached: {usage.used:g} of {usage.allowance:g} {unit} per {usage.period} used, "
            f"{requested:g} more requested; resets at {usage.resets_at:%Y-%m-%d %H:%M} UTC"
        )

    @property
    def retry_after_s(self) -> float:
        return max(0.0, (self.usage.resets_at - utcnow()).total_seconds())


def quota_window(period: str, now: datetime) -> tuple[datetime, datetime]:
    """Fixed UTC windows: the current hour or the current day (midnight UTC). (start, resets_at)."""
    if period == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
    elif period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValueError(f"quota period must be 'hour' or 'day', got {period!r}")
    return start, start + QUOTA_PERIODS[period]


# Statements built once (the quota path runs on every submit).
_EFFECTIVE_RULES = select(
    QuotaRule.unit, QuotaRule.period, QuotaRule.allowance, QuotaRule.scope, QuotaRule.target_id
).where(
    QuotaRule.guild_id == bindparam("gid"),
    or_(
        QuotaRule.scope == "guild",
        and_(QuotaRule.scope == "user", QuotaRule.target_id == bindparam("uid")),
        and_(QuotaRule.scope == "role", QuotaRule.target_id.in_(bindparam("roles", expanding=True))),
    ),
)


def _window_sum(start: str) -> Any:
    after = UsageEntry.created_at >= bindparam(start, type_=UTCDateTime)
    return func.coalesce(func.sum(case((after, UsageEntry.amount), else_=0.0)), 0.0)


_USAGE_SUMS = (
    select(UsageEntry.unit, _window_sum("hour_start").label("hour"), _window_sum("day_start").label("day"))
    .where(
        UsageEntry.guild_id == bindparam("gid"),
        UsageEntry.user_id == bindparam("uid"),
        UsageEntry.created_at >= bindparam("day_start", type_=UTCDateTime),  # the day contains the hour
        UsageEntry.state.in_(("reserved", "committed")),
    )
    .group_by(UsageEntry.unit)
)


class QuotaRepo:
    """Quota rules and the usage ledger (reserve → commit | refund)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def set_rule(
        self,
        guild_id: int | None,
        scope: str,
        target_id: int | None,
        unit: str,
        period: str,
        allowance: float,
        *,
        updated_by: int,
    ) -> QuotaRule:
        """Create or change a rule. ``scope`` guild (target None), role or user."""
        gid = _guild_key(guild_id)
        if scope not in QUOTA_SCOPES:
            raise ValueError(f"quota scope must be one of {', '.join(QUOTA_SCOPES)}, got {scope!r}")
        target = 0 if scope == "guild" else check_id(target_id, f"{scope} id")
        if unit not in QUOTA_UNITS:
            raise ValueError(f"quota unit must be 'images' or 'gpu_seconds', got {unit!r}")
        quota_window(period, utcnow())
        if (
            isinstance(allowance, bool)
            or not isinstance(allowance, (int, float))
            or not 0 <= allowance < math.inf
        ):
            raise ValueError(f"quota allowance must be a number ≥ 0, got {allowance!r}")
        now = utcnow()
        await self.session.execute(
            _insert(self.session, QuotaRule)
            .values(
                guild_id=gid,
                scope=scope,
                target_id=target,
                unit=unit,
                period=period,
                allowance=float(allowance),
                updated_by=updated_by,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_update(
                index_elements=["guild_id", "scope", "target_id", "unit", "period"],
                set_={"allowance": float(allowance), "updated_by": updated_by, "updated_at": now},
            )
        )
        rule = await self.session.scalar(
            select(QuotaRule)
            .where(
                QuotaRule.guild_id == gid,
                QuotaRule.scope == scope,
                QuotaRule.target_id == target,
                QuotaRule.unit == unit,
                QuotaRule.period == period,
            )
            .execution_options(populate_existing=True)
        )
        assert rule is not None
        return rule

    async def delete_rule(
        self,
        guild_id: int | None,
        scope: str,
        target_id: int | None,
        unit: str | None = None,
        period: str | None = None,
    ) -> int:
        cond = [
            QuotaRule.guild_id == _guild_key(guild_id),
            QuotaRule.scope == scope,
            QuotaRule.target_id == (0 if scope == "guild" else target_id),
        ]
        if unit is not None:
            cond.append(QuotaRule.unit == unit)
        if period is not None:
            cond.append(QuotaRule.period == period)
        result = await self.session.execute(delete(QuotaRule).where(*cond))
        return result.rowcount

    async def rules(self, guild_id: int | None) -> list[QuotaRule]:
        return list(
            await self.session.scalars(
                select(QuotaRule)
                .where(QuotaRule.guild_id == _guild_key(guild_id))
                .order_by(QuotaRule.scope, QuotaRule.target_id, QuotaRule.unit, QuotaRule.period)
            )
        )

    async def effective(
        self, guild_id: int | None, user_id: int, role_ids: Sequence[int] = ()
    ) -> list[Allowance]:
        """Per (unit, period): the user's override, else the most generous of their roles' rules,
        else the guild default. No rule → no limit for that unit and period."""
        rows = await self.session.execute(
            _EFFECTIVE_RULES, {"gid": _guild_key(guild_id), "uid": user_id, "roles": list(role_ids) or [-1]}
        )
        rank = {"user": 0, "role": 1, "guild": 2}
        best: dict[tuple[str, str], Any] = {}
        for rule in rows:
            key = (rule.unit, rule.period)
            cur = best.get(key)
            if (
                cur is None
                or rank[rule.scope] < rank[cur.scope]
                or (rule.scope == cur.scope == "role" and rule.allowance > cur.allowance)
            ):
                best[key] = rule
        return [
            Allowance(r.unit, r.period, r.allowance, r.scope, r.target_id) for _, r in sorted(best.items())
        ]

    async def used(self, guild_id: int | None, user_id: int, unit: str, since: datetime) -> float:
        return float(
            await self.session.scalar(
                select(func.coalesce(func.sum(UsageEntry.amount), 0.0)).where(
                    UsageEntry.guild_id == _guild_key(guild_id),
                    UsageEntry.user_id == user_id,
                    UsageEntry.unit == unit,
                    UsageEntry.created_at >= since,
                    UsageEntry.state.in_(("reserved", "committed")),
                )
            )
            or 0.0
        )

    async def _usage(
        self, guild_id: int | None, user_id: int, allowances: Sequence[Allowance], now: datetime
    ) -> list[QuotaUsage]:
        """Usage in each allowance's current window (hour and day sums in one prepared query)."""
        if not allowances:
            return []
        windows = {period: quota_window(period, now) for period in QUOTA_PERIODS}
        rows = await self.session.execute(
            _USAGE_SUMS,
            {
                "gid": _guild_key(guild_id),
                "uid": user_id,
                "hour_start": windows["hour"][0],
                "day_start": windows["day"][0],
            },
        )
        used = {(row.unit, period): float(row._mapping[period]) for row in rows for period in windows}
        return [
            QuotaUsage(a.unit, a.period, used.get((a.unit, a.period), 0.0), a.allowance, *windows[a.period])
            for a in allowances
        ]

    async def status(
        self,
        guild_id: int | None,
        user_id: int,
        allowances: Sequence[Allowance],
        *,
        now: datetime | None = None,
    ) -> list[QuotaUsage]:
        """Used / allowance / reset time for each allowance (for /quota)."""
        return await self._usage(guild_id, user_id, allowances, now or utcnow())

    async def _holds_sqlite_write_lock(self) -> bool:
        """True in a SQLite ``BEGIN IMMEDIATE`` transaction: every writer is already serialised."""
        conn = await self.session.connection()
        options = conn.sync_connection.get_execution_options() if conn.sync_connection else {}
        return conn.dialect.name == "sqlite" and options.get("sqlite_begin") == "IMMEDIATE"

    async def lock_user(self, guild_id: int | None, user_id: int) -> None:
        """Serialise this user's reservations until the transaction ends.

        PostgreSQL: the upsert row-locks ``quota_locks`` (other transactions wait, then read fresh
        data under READ COMMITTED). SQLite: it is a write, so it holds the database write lock
        (run it in ``Database.write_session()`` so the lock is taken at BEGIN).
        """
        await self.session.execute(
            _insert(self.session, QuotaLock)
            .values(guild_id=_guild_key(guild_id), user_id=check_id(user_id, "user id"), version=0)
            .on_conflict_do_update(
                index_elements=["guild_id", "user_id"], set_={"version": QuotaLock.version + 1}
            )
        )

    async def reserve(
        self,
        guild_id: int | None,
        user_id: int,
        charges: Mapping[str, float],
        allowances: Sequence[Allowance],
        *,
        job_id: int | None = None,
        now: datetime | None = None,
    ) -> list[UsageEntry]:
        """Atomically check every allowance and reserve ``charges`` (e.g. ``{"images": 4,
        "gpu_seconds": 12.0}``); raises :class:`QuotaExceeded` and reserves nothing if one would pass."""
        now = now or utcnow()
        for unit, amount in charges.items():
            if unit not in QUOTA_UNITS:
                raise ValueError(f"quota unit must be 'images' or 'gpu_seconds', got {unit!r}")
            if not 0 <= amount < math.inf:
                raise ValueError(f"a reservation must be a finite amount ≥ 0, got {amount!r}")
        if not await self._holds_sqlite_write_lock():
            await self.lock_user(guild_id, user_id)
        for usage in await self._usage(guild_id, user_id, [a for a in allowances if a.unit in charges], now):
            amount = charges[usage.unit]
            if usage.used + amount > usage.allowance + 1e-9:
                raise QuotaExceeded(usage, amount)
        entries = [
            UsageEntry(
                guild_id=_guild_key(guild_id),
                user_id=user_id,
                job_id=job_id,
                unit=unit,
                amount=float(amount),
                state="reserved",
                created_at=now,
            )
            for unit, amount in charges.items()
        ]
        self.session.add_all(entries)
        await self.session.flush()
        return entries

    async def attach(self, entries: Sequence[UsageEntry], job_id: int) -> None:
        """Link reservations made before the job row existed to the job."""
        for entry in entries:
            entry.job_id = job_id
        await self.session.flush()

    async def commit(
        self, job_id: int, *, actual: Mapping[str, float] | None = None, now: datetime | None = None
    ) -> int:
        """reserved → committed for a job; ``actual`` replaces estimates (e.g. measured GPU seconds)."""
        now = now or utcnow()
        count = 0
        for entry in await self.session.scalars(
            select(UsageEntry).where(UsageEntry.job_id == job_id, UsageEntry.state == "reserved")
        ):
            entry.state, entry.settled_at = "committed", now
            if actual and entry.unit in actual:
                entry.amount = float(actual[entry.unit])
            count += 1
        await self.session.flush()
        return count

    async def refund(self, job_id: int, *, now: datetime | None = None) -> int:
        """reserved → refunded for a job (failure or cancel): the amount no longer counts."""
        count = 0
        for entry in await self.session.scalars(
            select(UsageEntry).where(UsageEntry.job_id == job_id, UsageEntry.state == "reserved")
        ):
            entry.state, entry.settled_at = "refunded", now or utcnow()
            count += 1
        await self.session.flush()
        return count


# ---------------------------------------------------------------------------------------------- audit


class AuditRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(
        self,
        guild_id: int | None,
        actor_id: int,
        action: str,
        target: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        entry = AuditEntry(
            guild_id=guild_id,
            actor_id=check_id(actor_id, "actor id"),
            action=check_text(action, "audit action", max_chars=64, empty=False),
            target=check_text(target, "audit target", max_chars=200),
            details=dict(check_json_texts(dict(details or {}), "audit details")),
        )
        self.session.add(entry)
        await self.session.flush()
        return entry

    async def recent(self, guild_id: int | None, *, limit: int = 50) -> list[AuditEntry]:
        stmt = select(AuditEntry).where(
            AuditEntry.guild_id.is_(None) if guild_id is None else AuditEntry.guild_id == guild_id
        )
        return list(await self.session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit)))


class Repositories:
    """All repositories over one session: ``repos = Repositories(session)``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.guilds = GuildRepo(session)
        self.presets = PresetRepo(session)
        self.jobs = JobRepo(session)
        self.quotas = QuotaRepo(session)
        self.audit = AuditRepo(session)


__all__ = [
    "GUILD_LIMIT_FIELDS",
    "MAX_NAME_CHARS",
    "MAX_PRESETS_PER_OWNER",
    "MAX_PROMPT_CHARS",
    "QUOTA_PERIODS",
    "QUOTA_UNITS",
    "Allowance",
    "AuditRepo",
    "GuildRepo",
    "JobRepo",
    "PresetLimitReached",
    "PresetRepo",
    "QuotaExceeded",
    "QuotaRepo",
    "QuotaUsage",
    "Recovery",
    "Repositories",
    "quota_window",
]
