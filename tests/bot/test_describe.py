"""/describe through the real bot and the real service (SQLite, the fake engine, a tiny WD14-shaped ONNX
tagger): prompts with working /imagine buttons; bad inputs refused privately."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import random
from collections.abc import AsyncIterator

from sqlalchemy import select

from core.bootstrap import bootstrap, open_database
from core.config import Settings
from core.storage.models import Job
from core.testing.fake_engine import FakeEngine
from tests.bot.conftest import ALICE, BOB, CHANNEL_A, GUILD_A, running_bot
from tests.bot.fake_discord import FakeDiscord
from tests.bot.test_app import opt
from tests.core.services.test_describe import white_png, write_tagger

EPHEMERAL = 64


@contextlib.asynccontextmanager
async def real_service(tmp_path) -> AsyncIterator:
    write_tagger(tmp_path / "interrogators" / "wd-tiny-tagger-v3")
    base = Settings()
    settings = dataclasses.replace(
        base,
        database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{tmp_path / 'chant.db'}"),
        postprocess=dataclasses.replace(
            base.postprocess, tagger_dirs=(str(tmp_path / "interrogators"),), tagger="wd-tiny-tagger-v3"
        ),
    )
    db = await open_database(settings)
    service = await bootstrap(
        settings, db=db, engine=FakeEngine(image_size=64), worker=True, rng=random.Random(1)
    )
    try:
        yield service, db
    finally:
        await service.stop()
        await db.dispose()
        gc.collect()  # see tests/bot/test_no_model.py


async def test_describe_answers_with_prompts_whose_buttons_imagine_them(fake: FakeDiscord, tmp_path) -> None:
    async with real_service(tmp_path) as (service, db), running_bot(fake, service):
        a = fake.add_attachment("white.png", white_png())
        _, token = await fake.interaction(
            "describe", [opt("image", a["id"], 11)], attachments=[a],
            guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
        )  # fmt: skip
        (answer,) = await fake.wait_call(
            "PATCH", rf"/webhooks/\d+/{token}/messages/@original", lambda c: "Describe" in str(c.json)
        )
        content = answer.json["content"]
        assert "`1` hatsune miku, smile, long hair" in content and "wd-tiny-tagger-v3" in content
        ids = [b["custom_id"] for row in answer.json["components"] for b in row["components"]]
        assert ids == ["chant:describe:1"]
        # Bob presses it under the answer: an /imagine of that prompt, charged to him, posted as a reply.
        message_id = int(answer.response["id"])
        await fake.component(
            "chant:describe:1", message_id=message_id, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=BOB,
            ephemeral=False,
        )  # fmt: skip
        await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
        async with db.session() as s:
            job = await s.scalar(select(Job))
        assert job.user_id == BOB and job.params["prompt"] == "hatsune miku, smile, long hair"


async def test_describe_refuses_a_file_that_is_not_an_image_privately(fake: FakeDiscord, tmp_path) -> None:
    async with real_service(tmp_path) as (service, _db), running_bot(fake, service):
        a = fake.add_attachment("notes.png", b"hello there")
        _, token = await fake.interaction(
            "describe", [opt("image", a["id"], 11)], attachments=[a],
            guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
        )  # fmt: skip
        (reply,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
        assert reply.json["flags"] & EPHEMERAL and "not an image" in reply.json["content"]
