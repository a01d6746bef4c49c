"""Through the real bot and the real service (SQLite, the fake engine offering no model): /imagine with
no usable model is refused privately, nothing is queued or charged, and the operator's log says why."""

from __future__ import annotations

import dataclasses
import gc
import logging
import random

from sqlalchemy import func, select

from core.bootstrap import bootstrap, open_database
from core.config import Settings
from core.storage.models import Job, UsageEntry
from core.testing.fake_engine import FakeEngine
from tests.bot.conftest import ALICE, CHANNEL_A, GUILD_A, running_bot
from tests.bot.fake_discord import FakeDiscord

EPHEMERAL = 64


async def test_imagine_with_no_model_is_refused_privately_and_charges_nothing(
    fake: FakeDiscord, tmp_path, caplog
) -> None:
    base = Settings()
    settings = dataclasses.replace(
        base,
        database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{tmp_path / 'chant.db'}"),
        engine=dataclasses.replace(base.engine, model_dirs=(str(tmp_path / "models" / "Stable-diffusion"),)),
    )
    db = await open_database(settings)
    service = await bootstrap(settings, db=db, engine=FakeEngine(models=()), worker=True, rng=random.Random(1))
    caplog.set_level(logging.INFO)
    try:
        async with running_bot(fake, service):
            _iid, token = await fake.interaction(
                "imagine",
                [{"name": "prompt", "type": 3, "value": "a cat"}],
                guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
            )  # fmt: skip
            (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
            assert follow.json["content"] == "This bot has no model yet — ask a server admin."
            assert follow.json["flags"] & EPHEMERAL
            # The public "thinking…" placeholder is removed: nothing about it shows in the channel.
            await fake.wait_call("DELETE", rf"/webhooks/\d+/{token}/messages/@original")
            assert not fake.channel_posts(CHANNEL_A)
        async with db.session() as s:
            assert await s.scalar(select(func.count()).select_from(Job)) == 0
            assert await s.scalar(select(func.count()).select_from(UsageEntry)) == 0
        logged = [r for r in caplog.records if "refused a job" in r.getMessage()]
        assert len(logged) == 1 and logged[0].levelno == logging.WARNING
        assert f"user {ALICE}" in logged[0].getMessage()
        assert "models/Stable-diffusion (engine.model_dirs)" in logged[0].getMessage()
        assert logged[0].exc_info is None  # a refusal, not an error with a traceback
    finally:
        await service.stop()
        await db.dispose()
        # Shutting the real service down leaves garbage with finalizers (a Subscription.__anext__ task
        # ending in StopAsyncIteration, an aiosqlite cursor coroutine: the shutdown race reported for
        # core/services/events.py). Collected at session end, inside pytest's ast.parse, CPython 3.11.7
        # fails with "AST constructor recursion depth mismatch"; collect it here instead.
        gc.collect()
