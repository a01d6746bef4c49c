"""JobStore, the queue's SQL: claims are compare-and-set, leases are renewed by their owner only, and an
expired lease returns the job once before it is failed with a reason (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from core.queue.store import JobStore
from core.storage import migrate
from core.storage.db import Database
from core.storage.models import utcnow
from core.storage.repositories import Repositories
from core.types import GenerationRequest


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        return request.getfixturevalue("pg_fresh_url")
    return f"sqlite:///{tmp_path / 'chant.db'}"


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await migrate.upgrade(database.engine)
    yield database
    await database.dispose()


async def _add(db: Database, n: int = 1) -> list[int]:
    async with db.transaction(write=True) as s:
        repos = Repositories(s)
        return [
            (await repos.jobs.add(user_id=10, channel_id=5, guild_id=1, request=GenerationRequest("x"))).id
            for _ in range(n)
        ]


async def test_claim_is_compare_and_set_and_lease_rules(db: Database) -> None:
    (job_id,) = await _add(db)
    now = utcnow()
    w1 = JobStore(db, worker_id="w1", lease_seconds=60, max_attempts=2)
    w2 = JobStore(db, worker_id="w2", lease_seconds=60, max_attempts=2)
    assert [c.job_id for c in await w1.claim([job_id], now)] == [job_id]
    assert await w2.claim([job_id], now) == []
    async with db.session() as s:
        job = await Repositories(s).jobs.get(job_id)
        assert (job.state, job.lease_owner, job.attempts, job.started_at is not None) == (
            "running",
            "w1",
            1,
            True,
        )
    assert await w2.renew([job_id], now + timedelta(seconds=60)) == set()
    assert await w1.renew([job_id], now + timedelta(seconds=60)) == {job_id}  # lease until now + 120 s
    assert not await w2.fail(job_id, "not yours")
    assert await w1.state_of(job_id) == "running"
    # The lease expires: back to the queue once, then failed with a reason.
    assert await w1.recover(now=now + timedelta(seconds=60)) == ([], [])
    assert await w1.recover(now=now + timedelta(seconds=121)) == ([job_id], [])
    assert await w1.queued_ids() == [job_id]
    assert [c.job_id for c in await w2.claim([job_id], now)] == [job_id]
    assert await w1.recover(now=now + timedelta(seconds=61)) == ([], [job_id])
    async with db.session() as s:
        job = await Repositories(s).jobs.get(job_id)
        assert job.state == "failed" and "2 times" in job.error and job.attempts == 2


async def test_claim_with_a_limit_takes_the_first_free_ones_in_the_order_asked(db: Database) -> None:
    ids = await _add(db, 4)
    w1 = JobStore(db, worker_id="w1", lease_seconds=60)
    w2 = JobStore(db, worker_id="w2", lease_seconds=60)
    assert [c.job_id for c in await w1.claim([ids[1]])] == [ids[1]]
    got = await w2.claim([ids[3], ids[1], ids[0], ids[2]], limit=2)
    assert [c.job_id for c in got] == [ids[3], ids[0]]
    # a worker restarting on SQLite takes every running job back (its own process was the only one)
    assert sorted((await w2.recover(all_running=True))[0]) == sorted([ids[0], ids[1], ids[3]])


async def test_status_counts_states_the_busiest_guilds_and_running_leases(db: Database) -> None:
    ids = await _add(db, 3)
    store = JobStore(db, worker_id="w1", lease_seconds=60)
    await store.claim([ids[0]])
    status = await store.status()
    assert status.states == {"queued": 2, "running": 1}
    assert status.busiest == [(1, 2)]
    ((job_id, guild, worker, until),) = status.running
    assert (job_id, guild, worker) == (ids[0], 1, "w1") and until is not None
