from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from core.storage.db import Database
from core.storage.models import DM_GUILD
from core.storage.repositories import Allowance, QuotaExceeded, Repositories, quota_window
from core.types import GenerationRequest


async def test_effective_allowance_user_over_role_over_guild(db: Database) -> None:
    async with db.transaction(write=True) as s:
        q = Repositories(s).quotas
        await q.set_rule(1, "guild", None, "images", "day", 20, updated_by=9)
        await q.set_rule(1, "guild", None, "gpu_seconds", "hour", 60, updated_by=9)
        await q.set_rule(1, "role", 100, "images", "day", 50, updated_by=9)
        await q.set_rule(1, "role", 101, "images", "day", 80, updated_by=9)
        await q.set_rule(1, "user", 7, "images", "day", 5, updated_by=9)
        await q.set_rule(2, "guild", None, "images", "day", 1, updated_by=9)
        rule = await q.set_rule(1, "guild", None, "images", "day", 25, updated_by=8)  # upsert
        assert (rule.allowance, rule.updated_by) == (25, 8)
        assert len(await q.rules(1)) == 5

        def table(allowances):
            return {(a.unit, a.period): (a.allowance, a.scope, a.target_id) for a in allowances}

        assert table(await q.effective(1, 3)) == {
            ("images", "day"): (25, "guild", 0),
            ("gpu_seconds", "hour"): (60, "guild", 0),
        }
        assert table(await q.effective(1, 3, [100, 101, 999]))[("images", "day")] == (80, "role", 101)
        assert table(await q.effective(1, 7, [101]))[("images", "day")] == (5, "user", 7)
        assert await q.effective(None, 7) == []  # no DM rules: unlimited
        assert await q.delete_rule(1, "user", 7) == 1
        assert table(await q.effective(1, 7, [101]))[("images", "day")] == (80, "role", 101)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope": "everyone"}, "quota scope must be one of"),
        ({"unit": "credits"}, "quota unit must be"),
        ({"period": "week"}, "quota period must be"),
        ({"allowance": -1}, "allowance must be a number"),
        ({"allowance": float("nan")}, "allowance must be a number"),
        ({"scope": "role", "target_id": None}, "role id must be an integer"),
    ],
)
async def test_bad_rules_are_refused(db: Database, kwargs: dict, message: str) -> None:
    args = {"scope": "guild", "target_id": None, "unit": "images", "period": "day", "allowance": 5} | kwargs
    async with db.transaction(write=True) as s:
        with pytest.raises(ValueError, match=message):
            await Repositories(s).quotas.set_rule(
                1,
                args["scope"],
                args["target_id"],
                args["unit"],
                args["period"],
                args["allowance"],
                updated_by=1,
            )


async def test_reserve_commit_refund_and_windows(db: Database) -> None:
    now = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    day = Allowance("images", "day", 10, "guild", 0)
    hour = Allowance("gpu_seconds", "hour", 100, "guild", 0)
    async with db.transaction(write=True) as s:
        r = Repositories(s)
        job = await r.jobs.add(user_id=7, channel_id=2, guild_id=1, request=GenerationRequest(prompt="x"))
        entries = await r.quotas.reserve(1, 7, {"images": 4, "gpu_seconds": 40}, [day, hour], now=now)
        await r.quotas.attach(entries, job.id)
        job2 = await r.jobs.add(user_id=7, channel_id=2, guild_id=1, request=GenerationRequest(prompt="y"))
        await r.quotas.reserve(1, 7, {"images": 4, "gpu_seconds": 40}, [day, hour], job_id=job2.id, now=now)
        with pytest.raises(QuotaExceeded) as info:
            await r.quotas.reserve(1, 7, {"images": 3}, [day, hour], now=now)
        assert (
            str(info.value)
            == "quota reached: 8 of 10 images per day used, 3 more requested; resets at 2026-03-02 00:00 UTC"
        )
        assert info.value.usage.remaining == 2
        # Another user, another guild and DMs have their own usage.
        await r.quotas.reserve(1, 8, {"images": 10}, [day], now=now)
        await r.quotas.reserve(2, 7, {"images": 10}, [day], now=now)
        (dm,) = await r.quotas.reserve(None, 7, {"images": 10}, [day], now=now)
        assert dm.guild_id == DM_GUILD
        assert await r.quotas.commit(job.id, actual={"gpu_seconds": 12.5}, now=now) == 2
        assert await r.quotas.refund(job2.id, now=now) == 2
        assert await r.quotas.refund(job2.id, now=now) == 0
        status = {(u.unit, u.period): u for u in await r.quotas.status(1, 7, [day, hour], now=now)}
        assert status["images", "day"].used == 4  # the refunded 4 no longer count
        assert status["gpu_seconds", "hour"].used == 12.5  # committed at the measured amount
        assert status["gpu_seconds", "hour"].resets_at == datetime(2026, 3, 1, 13, 0, tzinfo=UTC)
        # The next window starts empty.
        later = now + timedelta(days=1)
        assert (await r.quotas.status(1, 7, [day], now=later))[0].used == 0
        await r.quotas.reserve(1, 7, {"images": 10}, [day], now=later)
        with pytest.raises(ValueError, match="quota unit"):
            await r.quotas.reserve(1, 7, {"coins": 1}, [day], now=now)


def test_quota_windows_are_fixed_utc_hours_and_days() -> None:
    now = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    assert quota_window("hour", now) == (
        datetime(2026, 3, 1, 23, tzinfo=UTC),
        datetime(2026, 3, 2, 0, tzinfo=UTC),
    )
    assert quota_window("day", now) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    with pytest.raises(ValueError, match="period"):
        quota_window("month", now)


async def _submit(db: Database, allowances: list[Allowance], i: int) -> bool:
    """What the service's submit does: quota check + reserve + job insert, in one transaction."""
    try:
        async with db.transaction(write=True) as s:
            r = Repositories(s)
            entries = await r.quotas.reserve(1, 7, {"images": 1}, allowances)
            await asyncio.sleep(0)  # let the other submits run in between
            job = await r.jobs.add(
                user_id=7, channel_id=2, guild_id=1, request=GenerationRequest(prompt=f"job {i}")
            )
            await r.quotas.attach(entries, job.id)
        return True
    except QuotaExceeded:
        return False


async def test_100_concurrent_submits_against_remaining_10_accept_exactly_10(db: Database) -> None:
    async with db.transaction(write=True) as s:
        r = Repositories(s)
        await r.quotas.set_rule(1, "guild", None, "images", "day", 15, updated_by=1)
        await r.quotas.reserve(1, 7, {"images": 5}, [])  # 5 already used: 10 remain
        allowances = await r.quotas.effective(1, 7)
    results = await asyncio.gather(*(_submit(db, allowances, i) for i in range(100)))
    assert sum(results) == 10
    async with db.transaction() as s:
        r = Repositories(s)
        assert await r.jobs.count_for_user(7) == 10
        (usage,) = await r.quotas.status(1, 7, allowances)
        assert usage.used == 15


async def test_sqlite_write_sessions_are_recognised_as_serialised(sqlite_db: Database) -> None:
    """Reservations skip the lock row only where BEGIN IMMEDIATE already serialises writers."""
    async with sqlite_db.transaction(write=True) as s:
        assert await Repositories(s).quotas._holds_sqlite_write_lock()
    async with sqlite_db.transaction() as s:
        assert not await Repositories(s).quotas._holds_sqlite_write_lock()
