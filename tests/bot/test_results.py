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
        await fake.wait_call(
            "PUT", rf"/channels/{CHANNEL_A}/messages/{original}/reactions/🔀/@me"
        )  # recorded
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


# -- the bot may not post in the channel (Send Messages or Attach Files taken away) -----------------------


def ephemeral_followups(fake: FakeDiscord, token: str):
    return [
        c for c in fake.find("POST", rf"/webhooks/\d+/{token}") if (c.json or {}).get("flags", 0) & EPHEMERAL
    ]


async def test_a_result_the_bot_may_not_post_reaches_the_requester_privately(
    fake: FakeDiscord, real: Harness
) -> None:
    async with running_bot(fake, service=real.service):
        fake.refuse("POST", rf"/channels/{CHANNEL_A}/messages")  # 403, code 50013
        _, token = await imagine(fake, "a fox", opt("steps", 2, 4))
        (told,) = await fake.wait_call(
            "POST",
            rf"/webhooks/\d+/{token}",
            lambda c: (c.json or {}).get("flags", 0) & EPHEMERAL,
            timeout=15,
        )
        text = told.json["content"]
        assert "job #1" in text and f"<#{CHANNEL_A}>" in text and "/show job:1" in text, text
        assert told.files and told.files[0][1].startswith(b"\x89PNG")  # the images, privately
        # The status message is finished (not left at "Queued"/"50 %").
        status_id = fake.originals[token]
        (finished,) = await fake.wait_call(
            "PATCH",
            rf"/channels/{CHANNEL_A}/messages/{status_id}",
            lambda c: "could not post" in c.json["content"],
        )
        assert "/show job:1" in finished.json["content"]
        # Counted as delivered: a restart does not try (and tell) again; the images are kept for /show.
        await eventually(lambda: real.service.unposted_results(), [])
        assert (await real.service.job_images(1))[0].png.startswith(b"\x89PNG")
        # /show where the bot may post: a normal re-post.
        _, show = await fake.interaction(
            "show", [opt("job", 1, 4)], guild_id=GUILD_B, channel_id=CHANNEL_B, user_id=ALICE
        )
        await fake.wait_call("POST", rf"/channels/{CHANNEL_B}/messages", lambda c: bool(c.files), timeout=15)
        # /show where it may not: the images come privately, with the reason.
        _, show = await fake.interaction(
            "show", [opt("job", 1, 4)], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE
        )
        (private,) = await fake.wait_call(
            "POST", rf"/webhooks/\d+/{show}", lambda c: bool(c.files), timeout=15
        )
        assert private.json["flags"] & EPHEMERAL and "could not post" in private.json["content"]
        assert len(ephemeral_followups(fake, token)) == 1  # told once


async def test_without_the_interaction_the_requester_is_told_by_dm_and_the_status_finished_through_it(
    fake: FakeDiscord, real: Harness
) -> None:
    async with running_bot(fake, service=real.service):
        fake.refuse("POST", rf"/channels/{CHANNEL_A}/messages")
        fake.refuse("PATCH", rf"/channels/{CHANNEL_A}/messages/\d+")  # no channel edits either
        _, token = await imagine(fake, "a fox", opt("steps", 2, 4))
        status_id = await fake.wait_until(lambda: fake.originals.get(token), 10, "the deferral")
        # The status goes through the interaction's own edit, which needs no channel permission.
        await fake.wait_call(
            "PATCH",
            rf"/webhooks/\d+/{token}/messages/@original",
            lambda c: "could not post" in c.json.get("content", ""),
            timeout=15,
        )
        assert fake.originals[token] == status_id
    # A job that finished while no bot ran has no interaction any more: a DM it is.
    fake.allow()
    await real.service.submit_imagine(actor(user=ALICE, guild=GUILD_A, channel=CHANNEL_A), _opts("later"))
    for _ in range(200):
        if (await real.service.show(actor(user=ALICE, guild=GUILD_A), 2)).state == "done":
            break
        await asyncio.sleep(0.05)
    fake.refuse("POST", rf"/channels/{CHANNEL_A}/messages")
    async with running_bot(fake, service=real.service):
        (dm,) = await fake.wait_call("POST", r"/users/@me/channels", timeout=15)
        assert int(dm.json["recipient_id"]) == ALICE
        (told,) = await fake.wait_call("POST", rf"/channels/{ALICE + 1}/messages", timeout=15)
        assert "job #2" in told.json["content"] and "/show job:2" in told.json["content"] and told.files
        await eventually(lambda: real.service.unposted_results(), [])


async def test_a_failure_where_the_bot_may_not_edit_is_shown_through_the_interaction(
    fake: FakeDiscord, real: Harness
) -> None:
    async with running_bot(fake, service=real.service):
        fake.refuse("POST", rf"/channels/{CHANNEL_A}/messages")
        fake.refuse("PATCH", rf"/channels/{CHANNEL_A}/messages/\d+")
        _, token = await imagine(fake, "please FAIL", opt("steps", 2, 4))
        (end,) = await fake.wait_call(
            "PATCH",
            rf"/webhooks/\d+/{token}/messages/@original",
            lambda c: "failed" in c.json.get("content", ""),
            timeout=15,
        )
        assert "job #1 failed: the fake engine was asked to fail" in end.json["content"]
        await eventually(lambda: real.service.unposted_results(), [])
        assert not ephemeral_followups(fake, token)  # shown where it belongs: nothing to tell privately


async def test_a_reroll_where_the_bot_may_not_post_is_explained_by_dm(
    fake: FakeDiscord, real: Harness
) -> None:
    async with running_bot(fake, service=real.service):
        await imagine(fake, "a fox", opt("steps", 2, 4))
        (first,) = await fake.wait_call(
            "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=15
        )
        original = int(first.response["id"])
        await fake.wait_call("PUT", rf"/channels/{CHANNEL_A}/messages/{original}/reactions/🔀/@me")
        fake.refuse("POST", rf"/channels/{CHANNEL_A}/messages")
        await fake.react(original, "🔁", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
        (dm,) = await fake.wait_call("POST", rf"/channels/{BOB + 1}/messages", timeout=15)
        assert f"<#{CHANNEL_A}>" in dm.json["content"] and "permission" in dm.json["content"], dm.json
        assert "error id" not in dm.json["content"]
        async with real.db.session() as s:
            from core.storage.repositories import Repositories

            assert await Repositories(s).jobs.count_for_user(BOB) == 0  # nothing queued or charged


async def eventually(read, expected, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await read() == expected:
            return
        await asyncio.sleep(0.05)
    assert await read() == expected


def _opts(prompt: str):
    from core.services import ImagineOptions

    return ImagineOptions(prompt=prompt, steps=2)
