"""Queue caps under concurrent submits on the real PostgreSQL: exactly the cap is accepted.

Under READ COMMITTED two submits of different users each count the stored queue before the other
commits; without a lock that every submit of a guild (and every submit at all) takes, both pass a cap
that one more job would exceed. SQLite serialises writers (``BEGIN IMMEDIATE``) and is exact anyway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text

from core.bootstrap import bootstrap
from core.config import LimitSettings, QueueSettings, Settings
from core.services import Actor, ImagineOptions, UserError
from core.storage import migrate
from core.storage.db import Database, create_engine
from core.storage.models import Job
from core.testing.fake_engine import FakeEngine

pytestmark = pytest.mark.postgres
SUBMITS = 100
CAP = 10


@pytest.fixture
async def pg_db(postgres_url: str) -> AsyncIterator[Database]:
    """A migrated schema of its own on the shared server (at most 20 connections of its 100)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db = Database(
        postgres_url, connect_args={"server_settings": {"search_path": schema}}, pool_size=5, max_overflow=15
    )
    await migrate.upgrade(db.engine)
    yield db
    await db.dispose()
    async with admin.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await admin.dispose()


async def _service(db: Database, **limits):
    base = Settings()
    settings = dataclasses.replace(
        base,
        limits=dataclasses.replace(LimitSettings(), **limits),
        queue=QueueSettings(poll_interval_s=0.05, lease_seconds=5.0),
    )
    # No worker and not started: every accepted job stays queued and counts against the caps.
    return await bootstrap(settings, db=db, engine=FakeEngine(), worker=False, rng=random.Random(1))


async def _race(service, actors: list[Actor]) -> tuple[int, set[str]]:
    """Submit once per actor, all at once: (accepted, refusal codes)."""

    async def one(a: Actor) -> str:
        try:
            await service.submit_imagine(a, ImagineOptions(prompt="x", steps=1))
            return "ok"
        except UserError as exc:
            return exc.code

    results = await asyncio.gather(*(one(a) for a in actors))
    return results.count("ok"), set(results) - {"ok"}


async def _queued(db: Database) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(Job).where(Job.state == "queued")))


@pytest.mark.parametrize(
    ("limit", "setting", "actors"),
    [
        ("user", "max_queued_per_user", [Actor(user_id=7, guild_id=1, channel_id=1)] * SUBMITS),
        ("guild", "max_queued_per_guild", [Actor(100 + i, guild_id=1, channel_id=1) for i in range(SUBMITS)]),
        (
            "global",
            "max_queued_global",
            [Actor(100 + i, guild_id=1000 + i, channel_id=1) for i in range(SUBMITS)],
        ),
    ],
)
async def test_100_concurrent_submits_accept_exactly_the_cap(
    pg_db: Database, limit: str, setting: str, actors: list[Actor]
) -> None:
    caps = {"max_queued_per_user": SUBMITS, "max_queued_per_guild": SUBMITS, "max_queued_global": SUBMITS}
    service = await _service(pg_db, **{**caps, setting: CAP})
    accepted, refusals = await _race(service, actors)
    assert (accepted, refusals) == (CAP, {f"queue.{limit}_limit"})
    assert await _queued(pg_db) == CAP
