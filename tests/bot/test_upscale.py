"""Upscale jobs through the real bot and the real service (SQLite, the fake engine): ⬆️ on a result and
/upscale, charged and in /history; bad inputs refused privately with nothing charged. (The engine's own
upscale — models, sizes, the detail pass — is tested on tiny models in tests/core/engine.)"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import random
from collections.abc import AsyncIterator

import pytest
from PIL import Image
from sqlalchemy import func, select

from core.bootstrap import bootstrap, open_database
from core.config import Settings
from core.storage.models import Job, UsageEntry
from core.testing.fake_engine import FakeEngine
from core.types import Mode
from tests.bot.conftest import ALICE, BOB, CHANNEL_A, GUILD_A, running_bot
from tests.bot.fake_discord import FakeDiscord
from tests.bot.test_app import imagine, opt

EPHEMERAL = 64


def png(size=(64, 64), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.asynccontextmanager
async def real_service(tmp_path, **limits) -> AsyncIterator:
    base = Settings()
    folder = tmp_path / "ESRGAN"
    folder.mkdir()
    (folder / "RealESRGAN_x4plus.safetensors").write_bytes(b"{}")  # listed by name; the fake engine runs it
    settings = dataclasses.replace(
        base,
        database=dataclasses.replace(base.database, url=f"sqlite+aiosqlite:///{tmp_path / 'chant.db'}"),
        postprocess=dataclasses.replace(base.postprocess, upscaler_dirs=(str(folder),)),
        limits=dataclasses.replace(base.limits, **limits),
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


async def _counts(db) -> tuple[int, int]:
    async with db.session() as s:
        jobs = await s.scalar(select(func.count()).select_from(Job))
        charges = await s.scalar(select(func.count()).select_from(UsageEntry))
    return jobs, charges


async def test_upscale_reaction_replies_with_the_upscale_charged_and_in_history(
    fake: FakeDiscord, tmp_path
) -> None:
    async with real_service(tmp_path) as (service, db), running_bot(fake, service):
        await imagine(fake, "a cat", opt("seed", 7, 4))
        (first,) = await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
        original = int(first.response["id"])
        await fake.wait_call(
            "PUT", r"/channels/\d+/messages/\d+/reactions/.+", count=3
        )  # 🔁 🔀 ⬆️ go on after the result is recorded
        assert [c.path.rsplit("/", 2)[1] for c in fake.calls if "/reactions/" in c.path] == ["🔁", "🔀", "⬆️"]
        await fake.react(original, "⬆️", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        posts = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=2
        )
        assert int(posts[1].json["message_reference"]["message_id"]) == original
        async with db.session() as s:
            job = await s.scalar(select(Job).where(Job.kind == "upscale"))
            assert job is not None and job.user_id == BOB and job.parent_id == 1 and job.state == "done"
            assert (job.width, job.height) == (128, 128)  # ×2 (the default) of the stored 64² image
            assert job.params["mode"] == str(Mode.UPSCALE) and job.params["upscaler"] == "R-ESRGAN 4x+"
            charged = await s.scalar(
                select(func.count()).select_from(UsageEntry).where(UsageEntry.job_id == job.id)
            )
            assert charged and job.cost > 0
        from core.services import Actor

        bob = Actor(user_id=BOB, guild_id=GUILD_A, channel_id=CHANNEL_A)
        history, _ = await service.history(bob)
        assert [j.kind for j in history] == ["upscale"]
        # Under an upscale: Zoom Out, Upscale again and Pan (Vary, Remix and 🔁 would make the same image).
        ids = [b["custom_id"] for row in posts[1].json["components"] for b in row["components"]]
        assert [i.rsplit(":", 1)[1] for i in ids] == ["z15", "z2", "up2", "up4", "pl", "pr", "pu", "pd"]
        # 🔁 on the upscale: nothing random in it, so nothing queued; said privately.
        upscaled = int(posts[1].response["id"])
        # the bot's own reactions under the upscale (🔁 🔀, no ⬆️) are put once it is recorded
        await fake.wait_call("PUT", r"/channels/\d+/messages/\d+/reactions/.+", count=5)
        before = await _counts(db)
        await fake.react(upscaled, "🔁", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        dm = await fake.wait_call(
            "POST", r"/channels/\d+/messages", lambda c: "nothing random" in str(c.json)
        )
        assert dm and await _counts(db) == before


@pytest.mark.parametrize(
    ("options", "attachment", "words"),
    [
        ([opt("scale", "4")], png((600, 600)), "larger than this server allows"),
        ([opt("upscaler", "4x-Nothing")], png(), "I do not know the upscaler '4x-Nothing'"),
        ([], b"not an image at all", "is not an image I can read"),
    ],
)
async def test_bad_upscales_are_refused_privately_and_charge_nothing(
    fake: FakeDiscord, tmp_path, options, attachment, words
) -> None:
    async with real_service(tmp_path, max_pixels=1024 * 1024) as (service, db), running_bot(fake, service):
        a = fake.add_attachment("in.png", attachment)
        _, token = await fake.interaction(
            "upscale", [opt("image", a["id"], 11), *options], attachments=[a],
            guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
        )  # fmt: skip
        (reply,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
        assert reply.json["flags"] & EPHEMERAL and words in reply.json["content"], reply.json["content"]
        assert await _counts(db) == (0, 0)


async def test_upscale_command_on_an_attachment_posts_the_result(fake: FakeDiscord, tmp_path) -> None:
    async with real_service(tmp_path) as (service, db), running_bot(fake, service):
        a = fake.add_attachment("in.png", png((96, 64)))
        await fake.interaction(
            "upscale", [opt("image", a["id"], 11), opt("scale", "4"), opt("upscaler", "Lanczos")],
            attachments=[a], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
        )  # fmt: skip
        await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
        async with db.session() as s:
            job = await s.scalar(select(Job))
        assert (job.kind, job.width, job.height, job.params["upscaler"]) == ("upscale", 384, 256, "Lanczos")


async def test_upscale_options_reach_the_service_and_the_upscaler_autocompletes(bot) -> None:
    fake, service = bot.fake, bot.service
    iid, token = await fake.interaction(
        "upscale", [{"name": "upscaler", "type": 3, "value": "ultra", "focused": True}],
        guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE, type=4,
    )  # fmt: skip
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert [c["value"] for c in cb.json["data"]["choices"]] == ["4x-UltraSharp"]
    await fake.interaction(
        "upscale",
        [opt("job", 7, 4), opt("index", 3, 4), opt("scale", "4"), opt("upscaler", "4x-UltraSharp"), opt("detail", 0.3, 10)],
        guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
    )  # fmt: skip
    await fake.wait_until(
        lambda: any(c[0] == "upscale" for c in service.calls), 5, "the upscale reached core"
    )
    (call,) = [c for c in service.calls if c[0] == "upscale"]
    assert call[1][1:] == (7, 2, None, 4.0, "4x-UltraSharp", 0.3, None)  # index 3: the job's third image (2)
    await fake.interaction(
        "upscale", [opt("job", 7, 4), opt("size", "2048x1536")], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE
    )  # fmt: skip
    await fake.wait_until(
        lambda: len([c for c in service.calls if c[0] == "upscale"]) == 2, 5, "the sized upscale"
    )
    assert [c for c in service.calls if c[0] == "upscale"][-1][1][-1] == (2048, 1536)
