"""Quota rules and the usage ledger: reserve → commit | refund, in fixed UTC hours and days."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.storage.models import QuotaLock, QuotaRule, UsageEntry, UTCDateTime, utcnow
from core.storage.repositories._sql import guild_key, insert
from core.storage.validation import check_id

QUOTA_UNITS = ("images", "gpu_seconds")
QUOTA_PERIODS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
QUOTA_SCOPES = ("guild", "role", "user")


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
        gid = guild_key(guild_id)
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
            insert(self.session, QuotaRule)
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
            QuotaRule.guild_id == guild_key(guild_id),
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
                .where(QuotaRule.guild_id == guild_key(guild_id))
                .order_by(QuotaRule.scope, QuotaRule.target_id, QuotaRule.unit, QuotaRule.period)
            )
        )

    async def effective(
        self, guild_id: int | None, user_id: int, role_ids: Sequence[int] = ()
    ) -> list[Allowance]:
        """Per (unit, period): the user's override, else the most generous of their roles' rules,
        else the guild default. No rule → no limit for that unit and period."""
        rows = await self.session.execute(
            _EFFECTIVE_RULES, {"gid": guild_key(guild_id), "uid": user_id, "roles": list(role_ids) or [-1]}
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
                    UsageEntry.guild_id == guild_key(guild_id),
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
                "gid": guild_key(guild_id),
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
            insert(self.session, QuotaLock)
            .values(guild_id=guild_key(guild_id), user_id=check_id(user_id, "user id"), version=0)
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
                guild_id=guild_key(guild_id),
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
