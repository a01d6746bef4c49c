"""The result controls, moderation at posting and tag autocomplete, through the real bot on the fake
Discord server with the in-memory service (its moderation stub: a word in the prompt -> a decision).
The stored requests behind each control are checked in tests/core/services/test_controls.py, and the
whole path with the real service and a restarted ``chant run`` in tests/bot/test_e2e_controls.py."""

from __future__ import annotations

import pytest

from tests.bot.conftest import ALICE, BOB, CHANNEL_A, GUILD_A, RunningBot, fake_guilds, running_bot
from tests.bot.fake_discord import FakeDiscord
from tests.bot.fake_service import FakeService
from tests.bot.test_app import EPHEMERAL, imagine, opt

NSFW_CHANNEL = 222_000_000_000_000_009
THREAD = 222_000_000_000_000_010  # a thread of the age-restricted channel
SINGLE = ["vsub", "vstr", "rmx", "rr", "z15", "z2", "up2", "up4", "pl", "pr", "pu", "pd"]


@pytest.fixture
async def fake() -> FakeDiscord:
    guilds = fake_guilds()
    guilds[0].nsfw_channel_ids = (NSFW_CHANNEL,)
    guilds[0].threads = {THREAD: NSFW_CHANNEL}
    server = await FakeDiscord(guilds).start()
    yield server
    await server.close()


def buttons(call) -> list[str]:
    return [b["custom_id"] for row in call.json.get("components") or [] for b in row["components"]]


async def result(fake: FakeDiscord, n: int = 1, channel: int = CHANNEL_A):
    posts = await fake.wait_call("POST", rf"/channels/{channel}/messages", lambda c: bool(c.files), count=n)
    return posts[n - 1]


async def click(
    fake: FakeDiscord, custom_id: str, message_id: int, user: int = ALICE, channel: int = CHANNEL_A
):
    return await fake.component(
        custom_id, message_id=message_id, guild_id=GUILD_A, channel_id=channel, user_id=user, ephemeral=False
    )


async def test_a_result_carries_persistent_controls_and_each_asks_core_for_its_job(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    await imagine(fake, "a lighthouse", opt("seed", 5, 4))
    first = await result(fake)
    job, mid = 1, int(first.response["id"])
    assert buttons(first) == [f"chant:c:{job}:0:{a}" for a in SINGLE]
    rows = [
        [b.get("label") or b["emoji"]["name"] for b in row["components"]] for row in first.json["components"]
    ]
    assert rows[0] == ["Vary (Subtle)", "Vary (Strong)", "Remix", "🔁"] and rows[1][1] == "Zoom Out 2×"
    expected = {
        "vsub": ("vary", (job, 0, "subtle")),
        "vstr": ("vary", (job, 0, "strong")),
        "z15": ("zoom_out", (job, 0, 1.5)),
        "z2": ("zoom_out", (job, 0, 2.0)),
        "pl": ("pan", (job, 0, "left")),
        "pd": ("pan", (job, 0, "down")),
        "up4": ("upscale", (job, 0, None, 4.0, None, None, None)),
        "rr": ("reroll_job", (job,)),
    }
    for n, (action, (name, args)) in enumerate(expected.items(), start=2):
        iid, token = await click(fake, f"chant:c:{job}:0:{action}", mid, user=BOB)
        (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
        assert cb.json["type"] == 6  # acknowledged silently: the answer is the status message below
        status = (
            await fake.wait_call(
                "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: not c.files, count=n - 1
            )
        )[-1]
        assert (
            int(status.json["message_reference"]["message_id"]) == mid
            and f"<@{BOB}>" in status.json["content"]
            and "queueing" in status.json["content"]
        )
        # The status message is posted first and its id goes in with the job (as /imagine's and 🔁's).
        await fake.wait_until(lambda n=n: len(service.calls) >= n, 5, f"{action} reached core")
        call = service.calls[-1]
        assert (call[0], call[1][1:]) == (name, args) and call[1][0].user_id == BOB
        assert service.jobs[max(service.jobs)].status_message_id == int(status.response["id"])
        await result(fake, n)  # the new job's result follows, as a reply with controls of its own


async def test_several_images_get_u_and_v_buttons_per_image_and_u_posts_one_alone(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    await imagine(fake, "four boats", opt("count", 4, 4), opt("seed", 10, 4))
    grid = await result(fake)
    mid = int(grid.response["id"])
    assert buttons(grid) == (
        [f"chant:c:1:{i}:u" for i in range(4)]
        + [f"chant:c:1:{i}:v" for i in range(4)]
        + ["chant:c:1:0:rr", "chant:c:1:0:rmx"]
    )
    await click(fake, "chant:c:1:2:u", mid)
    alone = await result(fake, 2)
    assert len(alone.files) == 1 and "-12.png" in alone.files[0][0]  # image 3: seed 12
    assert (
        int(alone.json["message_reference"]["message_id"]) == mid
        and "image 3 of job #1" in alone.json["content"]
    )
    assert buttons(alone) == [f"chant:c:1:2:{a}" for a in SINGLE]  # its controls act on image 3
    await click(fake, "chant:c:1:3:v", mid)
    await fake.wait_until(lambda: service.calls[-1][0] == "vary", 5, "V4")
    assert service.calls[-1][1][1:] == (1, 3, "strong")


async def test_remix_opens_a_prefilled_form_and_its_values_make_the_job(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    await imagine(fake, "a (blue:1.2) door", opt("seed", 99, 4), opt("negative", "blurry"))
    mid = int((await result(fake)).response["id"])
    iid, token = await click(fake, "chant:c:1:0:rmx", mid)
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert cb.json["type"] == 9 and cb.json["data"]["custom_id"] == "chant:remix:1:0"
    fields = {
        c["custom_id"]: c.get("value") for row in cb.json["data"]["components"] for c in row["components"]
    }
    assert fields == {"prompt": "a (blue:1.2) door", "negative": "blurry", "seed": "99"}
    iid, token = await fake.modal_submit(
        "chant:remix:1:0", {"prompt": "a (red:1.2) door", "negative": "", "seed": "123"},
        message_id=mid, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=BOB,
    )  # fmt: skip
    await result(fake, 2)
    assert service.calls[-1][0] == "remix" and service.calls[-1][1][1:] == (1, 0, "a (red:1.2) door", "", 123)
    # The form's values go through core's checks; a refusal is private.
    iid, token = await fake.modal_submit(
        "chant:remix:1:0", {"prompt": "a (door", "negative": "", "seed": "7"},
        message_id=mid, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=BOB,
    )  # fmt: skip
    (refusal,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert refusal.json["flags"] & EPHEMERAL and "column 3" in refusal.json["content"]
    iid, token = await fake.modal_submit(
        "chant:remix:1:0", {"prompt": "ok", "negative": "", "seed": "soon"},
        message_id=mid, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=BOB,
    )  # fmt: skip
    (refusal,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert "whole number" in refusal.json["content"]


async def test_buttons_and_an_open_form_still_work_after_a_restart(fake: FakeDiscord) -> None:
    service = FakeService(step_delay_s=0.0)
    async with running_bot(fake, service):
        await imagine(fake, "an old harbour", opt("seed", 3, 4))
        mid = int((await result(fake)).response["id"])
        iid, token = await click(fake, "chant:c:1:0:rmx", mid)
        await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")  # the form is open...
    async with running_bot(fake, service):  # ...when the bot restarts
        await click(fake, "chant:c:1:0:vsub", mid, user=BOB)
        await result(fake, 2)
        assert service.calls[-1][0] == "vary" and service.calls[-1][1][1:] == (1, 0, "subtle")
        await fake.modal_submit(
            "chant:remix:1:0", {"prompt": "a new harbour", "negative": "", "seed": ""},
            message_id=mid, guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
        )  # fmt: skip
        await result(fake, 3)
        assert service.calls[-1][0] == "remix" and service.calls[-1][1][1:] == (
            1,
            0,
            "a new harbour",
            "",
            None,
        )


async def test_spoiler_posts_spoiler_attachments_and_block_tells_only_the_requester(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    service.moderation = {"SPICY": "spoiler", "NSFW": "block"}
    await imagine(fake, "a SPICY pepper", opt("count", 2, 4))
    spoiled = await result(fake)
    assert [name.startswith("SPOILER_") for name, _ in spoiled.files] == [True, True]
    _, token = await imagine(fake, "an NSFW thing")
    (notice,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert notice.json["flags"] & EPHEMERAL and "not posted" in notice.json["content"]
    assert "job #2" in notice.json["content"] and "scored 0.97" in notice.json["content"]
    status_id = service.jobs[2].status_message_id
    await fake.wait_call("DELETE", rf"/channels/{CHANNEL_A}/messages/{status_id}")  # nothing public stays
    assert len([c for c in fake.channel_posts(CHANNEL_A) if c.files]) == 1
    assert service.posted[2] == []  # recorded as delivered: not posted again after a restart
    # Its /show here is refused, privately.
    _, token = await fake.interaction(
        "show", [opt("job", 2, 4)], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE
    )
    (refusal,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert refusal.json["flags"] & EPHEMERAL and "blocked in this channel" in refusal.json["content"]


@pytest.mark.parametrize("channel", [NSFW_CHANNEL, THREAD], ids=["age-restricted channel", "its thread"])
async def test_an_age_restricted_channel_and_its_threads_allow_it(bot: RunningBot, channel: int) -> None:
    fake, service = bot.fake, bot.service
    service.moderation = {"NSFW": "block"}
    await imagine(fake, "an NSFW thing", channel=channel)
    post = await result(fake, channel=channel)
    assert service.jobs[1].age_restricted and not post.files[0][0].startswith("SPOILER_")


async def test_a_blocked_reroll_from_a_reaction_is_told_by_dm(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    await imagine(fake, "a NSFW-ish cat")
    mid = int((await result(fake)).response["id"])
    service.moderation = {"NSFW": "block"}
    await fake.react(mid, "🔁", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
    (dm,) = await fake.wait_call("POST", r"/users/@me/channels")
    assert int(dm.json["recipient_id"]) == BOB
    (notice,) = await fake.wait_call("POST", rf"/channels/{BOB + 1}/messages")
    assert "job #2" in notice.json["content"] and "not posted" in notice.json["content"]


async def test_prompt_autocomplete_offers_tags_within_discords_limits(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    (sync,) = fake.find("PUT", r"/applications/\d+/commands")
    imagine_cmd = next(c for c in sync.json if c["name"] == "imagine")
    assert next(o for o in imagine_cmd["options"] if o["name"] == "prompt")["autocomplete"] is True
    service.tags = [(f"long hair {n}  (9k)", f"1girl, long hair {n}, ") for n in range(30)]
    service.tags.append(("too long", "1girl, " + "x" * 120))
    iid, token = await fake.interaction(
        "imagine", [{"name": "prompt", "type": 3, "value": "1girl, lo", "focused": True}],
        guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE, type=4,
    )  # fmt: skip
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    choices = cb.json["data"]["choices"]
    assert cb.json["type"] == 8 and len(choices) == 25 and choices[0]["value"] == "1girl, long hair 0, "
    assert all(len(c["value"]) <= 100 and len(c["name"]) <= 100 for c in choices)


async def test_admin_moderation_command_and_job_view(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    _, token = await fake.interaction(
        "admin", [opt("policy", "block"), {"name": "threshold", "type": 10, "value": 0.6}],
        subcommand="moderation", guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE, permissions=1 << 5,
    )  # fmt: skip
    (reply,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert reply.json["flags"] & EPHEMERAL and "**block** at a score of **0.6**" in reply.json["content"]
    assert "no image classifier" in reply.json["content"]  # the fake service reports none configured
    assert service.calls[-1][0] == "admin_moderation" and service.calls[-1][1][1:] == ("block", 0.6, None)
    service.moderation = {"NSFW": "spoiler"}
    await imagine(fake, "an NSFW fox")
    await result(fake)
    _, token = await fake.interaction(
        "admin", [opt("job", 1, 4)], subcommand="job", guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE,
        permissions=1 << 5,
    )  # fmt: skip
    (reply,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert "image 1: **spoiler** · score 0.970 · guild" in reply.json["content"]


async def test_some_images_withheld_the_rest_posted_with_controls_for_them(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    service.moderation = {"MIXED": ("post", "block", "spoiler", "post")}
    _, token = await imagine(fake, "a MIXED bag", opt("count", 4, 4), opt("seed", 20, 4))
    post = await result(fake)
    assert [name.split("-")[0] for name, _ in post.files] == ["chant", "SPOILER_chant", "chant"]
    assert [name.split("-")[2] for name, _ in post.files] == ["0", "2", "3"]  # image 2 withheld
    assert "1 of 4 images withheld by this server's moderation" in post.json["content"]
    assert buttons(post)[:3] == ["chant:c:1:0:u", "chant:c:1:2:u", "chant:c:1:3:u"]  # none for image 2
    (notice,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert (
        notice.json["flags"] & EPHEMERAL
        and "1 of your 4 images of job #1 was not posted" in notice.json["content"]
    )


async def test_history_names_what_a_job_was_made_from_and_info_shows_a_dynamic_prompt_as_typed(
    bot: RunningBot,
) -> None:
    import dataclasses

    fake, service = bot.fake, bot.service
    await imagine(fake, "a red fox", opt("seed", 8, 4))
    mid = int((await result(fake)).response["id"])
    await click(fake, "chant:c:1:0:vstr", mid)
    await result(fake, 2)
    _, token = await fake.interaction("history", [], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE)
    (page,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert "`#2` done · vary of #1 · seed 8" in page.json["content"]
    service.jobs[1] = dataclasses.replace(
        service.jobs[1], prompt_templates={"prompt": "a {red|blue} __animal__", "wildcards": ["animal"]}
    )
    await fake.react(mid, "ℹ️", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
    notes = await fake.wait_call("POST", rf"/channels/{BOB + 1}/messages", count=2)
    assert "prompt as typed: `a {red|blue} __animal__`" in notes[1].json["content"]
    assert "`__animal__`" in notes[1].json["content"] and "seed 8" in notes[1].json["content"]


async def test_where_the_bot_may_not_post_moderation_holds_in_the_private_result_too(bot: RunningBot) -> None:
    """A 403 on the result post sends it privately: the blocked image stays out of it (named in the text),
    the spoilered one stays a ``SPOILER_`` attachment; /show in that channel does the same."""
    fake, service = bot.fake, bot.service
    service.moderation = {"MIXED": ("post", "block", "spoiler", "post")}
    fake.refuse("POST", rf"/channels/{CHANNEL_A}/messages")  # 403, code 50013
    _, token = await imagine(fake, "a MIXED bag", opt("count", 4, 4), opt("seed", 20, 4))
    (told,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}", lambda c: bool(c.files), timeout=15)
    assert told.json["flags"] & EPHEMERAL and "could not post" in told.json["content"]
    assert [name.split("-")[0] for name, _ in told.files] == ["chant", "SPOILER_chant", "chant"]
    assert [name.split("-")[2] for name, _ in told.files] == ["0", "2", "3"]  # image 2 never sent
    assert "1 of your 4 images of job #1 was not posted" in told.json["content"]
    assert not [c for c in fake.find("POST", rf"/webhooks/\d+/{token}") if c is not told and c.files]
    _, show = await fake.interaction(
        "show", [opt("job", 1, 4)], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE
    )
    (private,) = await fake.wait_call("POST", rf"/webhooks/\d+/{show}", lambda c: bool(c.files), timeout=15)
    assert private.json["flags"] & EPHEMERAL
    assert [name.split("-")[0] for name, _ in private.files] == ["chant", "SPOILER_chant", "chant"]
    assert [name.split("-")[2] for name, _ in private.files] == ["0", "2", "3"]


async def test_u_where_the_bot_may_not_post_sends_that_image_privately_as_moderated(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    service.moderation = {"MIXED": ("post", "block", "spoiler", "post")}
    await imagine(fake, "a MIXED bag", opt("count", 4, 4), opt("seed", 20, 4))
    mid = int((await result(fake)).response["id"])
    fake.refuse("POST", rf"/channels/{CHANNEL_A}/messages")
    _, token = await click(fake, "chant:c:1:2:u", mid)
    (told,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}", lambda c: bool(c.files), timeout=15)
    assert told.json["flags"] & EPHEMERAL and "image 3 of job #1 just for you" in told.json["content"]
    assert [name.split("-")[0] for name, _ in told.files] == ["SPOILER_chant"]  # still spoilered
    assert "error id" not in told.json["content"]
