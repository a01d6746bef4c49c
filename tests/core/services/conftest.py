"""A ChantService on a fresh SQLite file with the fake engine (no torch, no patching)."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

from core.bootstrap import bootstrap, open_database
from core.config import LimitSettings, QueueSettings, Settings
from core.services import Actor
from core.testing.fake_engine import FakeEngine


def make_settings(tmp_path, **limits) -> Settings:
    s = Settings()
    return dataclasses.replace(
        s,
        database=dataclasses.replace(s.database, url=f"sqlite+aiosqlite:///{tmp_path / 'chant.db'}"),
        limits=dataclasses.replace(LimitSettings(), **limits),
        queue=QueueSettings(poll_interval_s=0.05, lease_seconds=5.0),
    )


class Harness:
    def __init__(self, tmp_path, **limits) -> None:
        self.tmp_path = tmp_path
        self.settings = make_settings(tmp_path, **limits)
        self.engine = FakeEngine(step_delay_s=0.0)
        self.service = None
        self.db = None

    async def open(self, *, worker: bool = True, start: bool = True, engine=None, scorer=None):
        self.db = await open_database(self.settings)
        self.service = await bootstrap(
            self.settings,
            db=self.db,
            engine=engine or self.engine,
            worker=worker,
            rng=random.Random(1234),
            scorer=scorer,
            env={},
        )
        if start:
            await self.service.start()
        return self.service

    async def close(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self.db is not None:
            await self.db.dispose()


@pytest.fixture
async def harness(tmp_path):
    h = Harness(tmp_path)
    yield h
    await h.close()


def actor(user: int = 10, guild: int | None = 1, channel: int = 100, **kw) -> Actor:
    return Actor(user_id=user, guild_id=guild, channel_id=channel, **kw)


async def wait_for(events, predicate, timeout: float = 10.0):
    """The first event from ``events`` (a subscription) that matches ``predicate``."""

    async def run():
        async for event in events:
            if predicate(event):
                return event

    return await asyncio.wait_for(run(), timeout)
