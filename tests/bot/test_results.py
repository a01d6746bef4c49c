"""Result and status messages with the real service (SQLite, the fake engine) behind the fake Discord:
❌ on a /show re-post, results the bot is not allowed to post, status messages across a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.bot.conftest import ALICE, BOB, CHANNEL_A, CHANNEL_B, GUILD_A, GUILD_B, running_bot
from tests.bot.fake_discord import FakeDiscord
from tests.bot.test_app import imagine, opt
from tests.core.services.conftest import Harness, actor

EPHEMERAL = 64


def result_deletes(fake: FakeDiscord, *message_ids: int) -> list[str]:
    """The DELETEs of these messages, in any channel."""
    return [
        c.path
        for c in fake.find("DELETE", r"/channels/\d+/messages/\d+")
        if int(c.path.split("/")[-1]) in message_ids
    ]


@pytest.fixture
async def real(tmp_path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    await h.open(start=False)  # the bot starts it
    yield h
    await h.close()


async def test_delete_on_a_show_repost_deletes_only_that_message(fake: FakeDiscord, real: Harness) -> None:
    async with running_bot(fake, service=real.service):
        await imagine(fake, "a fox", opt("steps", 2, 4))
        (first,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=15
        )
        original = int(first.response["id"])
        # /show in another channel (another server): a re-post there.
        _, token = await fake.interaction(
            "show", [opt("job", 1, 4)], guild_id=GUILD_B, channel_id=CHANNEL_B, user_id=ALICE
        )
        (repost,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_B}/messages", lambda c: bool(c.files), timeout=15
        )
        await fake.wait_call("POST", rf"/webhooks/\d+/{token}")  # "Posted job #1."
        again = int(repost.response["id"])
        # Someone else may not delete it; the owner may.
        await fake.react(again, "❌", user_id=BOB, channel_id=CHANNEL_B, guild_id=GUILD_B)
        await fake.wait_call("POST", r"/users/@me/channels")  # the refusal, by DM
        assert not result_deletes(fake, original, again)
        await fake.react(again, "❌", user_id=ALICE, channel_id=CHANNEL_B, guild_id=GUILD_B)
        await fake.wait_call("DELETE", rf"/channels/{CHANNEL_B}/messages/{again}")
        await asyncio.sleep(0.5)  # time for any further delete the handler would send
        assert result_deletes(fake, original, again) == [f"/channels/{CHANNEL_B}/messages/{again}"]
        assert (await real.service.job_for_message(original)).id == 1  # 🔁 on the original still works
        assert await real.service.job_for_message(again) is None
        # ❌ on the original deletes the original, where it is.
        await fake.react(original, "❌", user_id=ALICE, channel_id=CHANNEL_A, guild_id=GUILD_A)
        await fake.wait_call("DELETE", rf"/channels/{CHANNEL_A}/messages/{original}")


async def test_a_reroll_status_is_posted_first_and_stored_with_its_job(
    fake: FakeDiscord, real: Harness
) -> None:
    async with running_bot(fake, service=real.service):
        await imagine(fake, "a fox", opt("steps", 2, 4))
        (first,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=15
        )
        original = int(first.response["id"])
        await fake.wait_call("PUT", rf"/channels/{CHANNEL_A}/messages/{original}/reactions/🔀/@me")  # recorded
        await fake.react(original, "🔁", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        (placeholder,) = await fake.wait_call(
            "POST",
            rf"/channels/{CHANNEL_A}/messages",
            lambda c: "queueing" in (c.json or {}).get("content", ""),
        )
        status_id = int(placeholder.response["id"])
        assert int(placeholder.json["message_reference"]["message_id"]) == original
        # The job was stored with it (one transaction), then the text became the queue position.
        await fake.wait_call(
            "PATCH", rf"/channels/{CHANNEL_A}/messages/{status_id}", lambda c: "job #2" in c.json["content"]
        )
        async with real.db.session() as s:
            from core.storage.repositories import Repositories

            assert (await Repositories(s).jobs.get(2)).status_message_id == status_id
        await fake.wait_call("DELETE", rf"/channels/{CHANNEL_A}/messages/{status_id}", timeout=15)  # done
        # Refused (owner-only rerolls here): the placeholder goes, the reactor is told privately.
        await real.service.admin_set_reroll_policy(actor(user=1, manage_guild=True, guild=GUILD_A), "owner")
        await fake.react(original, "🔁", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        placeholders = await fake.wait_call(
            "POST",
            rf"/channels/{CHANNEL_A}/messages",
            lambda c: "queueing" in (c.json or {}).get("content", ""),
            count=2,
        )
        refused = int(placeholders[1].response["id"])
        await fake.wait_call("DELETE", rf"/channels/{CHANNEL_A}/messages/{refused}")
        (dm,) = await fake.wait_call("POST", rf"/channels/{BOB + 1}/messages")
        assert "only the person who made an image can reroll" in dm.json["content"]
