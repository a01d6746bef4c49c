"""End to end: the real ``chant run`` process (SQLite, the fake engine, the moderation stub of
core.testing.fake_classifier: ``NSFW`` in the prompt scores 0.97) against the fake Discord server.
Moderation as users and admins meet it, wildcards, and the result controls across a restart, with the
request each control stored read back from the database."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from tests.bot.conftest import ALICE, BOB, CHANNEL_A, GUILD_A, TOKEN, fake_guilds
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import ChantProcess, write_config

pytestmark = pytest.mark.slow

NSFW_CHANNEL = 222_000_000_000_000_009
MANAGE_GUILD = 1 << 5
EPHEMERAL = 64
SIDE = 128  # the fake engine's images (outpainting needs at least 64 a side)


def opt(name: str, value, type_: int = 3) -> dict:
    return {"name": name, "type": type_, "value": value}


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    guilds = fake_guilds()
    guilds[0].nsfw_channel_ids = (NSFW_CHANNEL,)
    server = await FakeDiscord(guilds).start()
    yield server
    await server.close()


@contextlib.asynccontextmanager
async def chant(tmp_path: Path, fake: FakeDiscord) -> AsyncIterator[ChantProcess]:
    config = tmp_path / "chant.toml"
    if not config.exists():
        (tmp_path / "wildcards").mkdir()
        (tmp_path / "wildcards" / "animal.txt").write_text("cat\nfox\nowl\n", encoding="utf-8")
        write_config(tmp_path, f'[prompts]\nwildcard_dir = "{tmp_path / "wildcards"}"\n')
    env = {"CHANT_FAKE_CLASSIFIER": "1", "CHANT_FAKE_ENGINE_IMAGE_SIZE": str(SIDE)}
    proc = ChantProcess(config, fake, 0.01, TOKEN, env=env)
    await proc.start()
    try:
        yield proc
    except BaseException:
        print(f"--- chant run output (last 6000 characters) ---\n{proc.output[-6000:]}")
        raise
    finally:
        await proc.stop()
        assert TOKEN not in proc.output


async def imagine(fake: FakeDiscord, prompt: str, *extra, channel: int = CHANNEL_A, user: int = ALICE):
    return await fake.interaction(
        "imagine", [opt("prompt", prompt), opt("steps", 2, 4), *extra],
        guild_id=GUILD_A, channel_id=channel, user_id=user,
    )  # fmt: skip


async def admin(fake: FakeDiscord, sub: str, *options) -> dict:
    _, token = await fake.interaction(
        "admin", list(options), subcommand=sub, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
        permissions=MANAGE_GUILD,
    )  # fmt: skip
    (reply,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}", timeout=30)
    return reply.json


async def results(fake: FakeDiscord, n: int, channel: int = CHANNEL_A):
    return await fake.wait_call(
        "POST", rf"/channels/{channel}/messages", lambda c: bool(c.files), count=n, timeout=30
    )


def stored(tmp_path: Path, job_id: int) -> tuple[str, int | None, dict, bytes | None, bytes | None]:
    with contextlib.closing(sqlite3.connect(tmp_path / "chant.db")) as db:
        kind, parent, params = db.execute(
            "SELECT kind, parent_id, params FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        inputs = db.execute(  # the sources are stored once by content (source_images)
            "SELECT i.data, m.data FROM job_inputs j JOIN source_images i ON i.id = j.init_image_id"
            " LEFT JOIN source_images m ON m.id = j.mask_image_id WHERE j.job_id = ?",
            (job_id,),
        ).fetchone()
    return kind, parent, json.loads(params), *(inputs or (None, None))


def parameters(data: bytes) -> str:
    return Image.open(io.BytesIO(data)).info["parameters"]


async def test_moderation_and_wildcards_through_the_real_service(tmp_path: Path, fake: FakeDiscord) -> None:
    async with chant(tmp_path, fake):
        reply = await admin(
            fake, "moderation", opt("policy", "block"), {"name": "threshold", "type": 10, "value": 0.5}
        )
        assert "**block** at a score of **0.5**" in reply["content"]
        # 1. Blocked: nothing public, the requester told privately (the interaction still lives).
        _, token = await imagine(fake, "an NSFW fox")
        (notice,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}", timeout=30)
        assert notice.json["flags"] & EPHEMERAL and "job #1 was not posted" in notice.json["content"]
        # 2. Clean: posted, with its controls.
        await imagine(fake, "a quiet fox")
        (clean,) = await results(fake, 1)
        assert clean.json["components"] and not clean.files[0][0].startswith("SPOILER_")
        # 3. The age-restricted channel allows it (the guild's default for such channels).
        await imagine(fake, "an NSFW owl", channel=NSFW_CHANNEL)
        (allowed,) = await results(fake, 1, NSFW_CHANNEL)
        assert not allowed.files[0][0].startswith("SPOILER_")
        # 4. /show of the blocked job in a normal channel is refused; in the age-restricted one it posts.
        _, token = await fake.interaction(
            "show", [opt("job", 1, 4)], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE
        )
        (refusal,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}", timeout=30)
        assert refusal.json["flags"] & EPHEMERAL and "blocked in this channel" in refusal.json["content"]
        await fake.interaction(
            "show", [opt("job", 1, 4)], guild_id=GUILD_A, channel_id=NSFW_CHANNEL, user_id=ALICE
        )
        await results(fake, 2, NSFW_CHANNEL)
        # 5. Spoiler: a SPOILER_ attachment; the admin's job view shows score, decision and policy.
        await admin(fake, "moderation", opt("policy", "spoiler"))
        await imagine(fake, "another NSFW fox", opt("count", 2, 4))
        spoiled = (await results(fake, 2))[-1]
        assert [name.startswith("SPOILER_") for name, _ in spoiled.files] == [True, True]
        reply = await admin(fake, "job", opt("job", 4, 4))
        assert (
            "image 1: **spoiler** · score 0.970 · guild · policy: policy spoiler, threshold 0.5"
            in reply["content"]
        )
        stats = await admin(fake, "stats")
        assert "images_blocked: **1**" in stats["content"] and "images_spoilered: **2**" in stats["content"]
        # 6. Wildcards: expanded with the job's seed; a missing one is named, privately.
        await imagine(fake, "a __animal__ at dawn", opt("seed", 4, 4))
        expanded = (await results(fake, 3))[-1]
        assert parameters(expanded.files[0][1]).split("\n")[0] in {
            f"a {a} at dawn" for a in ("cat", "fox", "owl")
        }
        _, token = await imagine(fake, "a __animl__")
        (error,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}", timeout=30)
        assert (
            error.json["flags"] & EPHEMERAL
            and "'animl'" in error.json["content"]
            and "__animal__" in error.json["content"]
        )


async def test_each_control_stores_its_request_and_works_after_a_restart(
    tmp_path: Path, fake: FakeDiscord
) -> None:
    async with chant(tmp_path, fake) as proc:
        await imagine(fake, "a red lighthouse", opt("seed", 1234, 4), opt("size", f"{SIDE}x{SIDE}"))
        (first,) = await results(fake, 1)
        mid = int(first.response["id"])
        ids = [b["custom_id"] for row in first.json["components"] for b in row["components"]]
        assert "chant:c:1:0:vsub" in ids and "chant:c:1:0:z2" in ids and "chant:c:1:0:pr" in ids
        assert await proc.stop() == 0

    async with chant(tmp_path, fake):  # a new process: the buttons of the old message still work
        for n, action in enumerate(("vsub", "vstr", "z2", "pr"), start=2):
            await fake.component(
                f"chant:c:1:0:{action}", message_id=mid, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=BOB,
                ephemeral=False,
            )  # fmt: skip
            await results(fake, n)
        await fake.modal_submit(
            "chant:remix:1:0", {"prompt": "a blue lighthouse", "negative": "fog", "seed": "77"},
            message_id=mid, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=BOB,
        )  # fmt: skip
        posts = await results(fake, 6)
        assert all(int(p.json["message_reference"]["message_id"]) == mid for p in posts[1:])

    subtle, strong, zoom, pan, remix = (stored(tmp_path, job) for job in range(2, 7))
    for (kind, parent, params, _, _), strength in ((subtle, 0.15), (strong, 0.5)):
        assert (kind, parent, params["seed"], params["subseed_strength"]) == ("vary", 1, 1234, strength)
    assert "Variation seed strength: 0.15" in parameters(posts[1].files[0][1])
    kind, parent, params, canvas, mask = zoom
    assert (kind, parent, params["mode"], params["width"], params["height"]) == (
        "zoom",
        1,
        "inpaint",
        SIDE,
        SIDE,
    )
    assert Image.open(io.BytesIO(canvas)).size == (SIDE, SIDE)
    ring = Image.open(io.BytesIO(mask))
    assert (
        ring.getpixel((0, 0)) == 255 and ring.getpixel((SIDE // 2, SIDE // 2)) == 0
    )  # new border, kept middle
    kind, parent, params, canvas, mask = pan
    assert (kind, params["width"], params["height"]) == ("pan", SIDE * 3 // 2, SIDE)
    panned = Image.open(io.BytesIO(mask))
    assert panned.getpixel((0, SIDE // 2)) == 0 and panned.getpixel((SIDE * 3 // 2 - 1, SIDE // 2)) == 255
    kind, parent, params, _, _ = remix
    assert (kind, params["prompt"], params["negative_prompt"], params["seed"]) == (
        "remix",
        "a blue lighthouse",
        "fog",
        77,
    )
