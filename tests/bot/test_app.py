"""Startup, commands, reactions and failure handling of the real bot against the fake Discord server."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import time

import pytest
from PIL import Image

from tests.bot.conftest import (
    ADMIN_ROLE,
    ALICE,
    BOB,
    CHANNEL_A,
    CHANNEL_B,
    GUILD_A,
    GUILD_B,
    TOKEN,
    RunningBot,
    running_bot,
)
from tests.bot.fake_discord import ALL_PERMISSIONS, BOT_USER_ID, FakeDiscord
from tests.bot.fake_service import FakeService

EPHEMERAL = 64


def opt(name: str, value, type_: int = 3) -> dict:
    return {"name": name, "type": type_, "value": value}


async def imagine(
    fake: FakeDiscord, prompt: str, *extra: dict, guild=GUILD_A, channel=CHANNEL_A, user=ALICE, **kw
) -> tuple[int, str]:
    return await fake.interaction(
        "imagine", [opt("prompt", prompt), *extra], guild_id=guild, channel_id=channel, user_id=user, **kw
    )


def callback_of(fake: FakeDiscord, iid: int):
    return fake.find("POST", rf"/interactions/{iid}/[^/]+/callback")


def result_posts(fake: FakeDiscord, channel: int = CHANNEL_A):
    return [c for c in fake.channel_posts(channel) if c.files]


def png_parameters(data: bytes) -> str:
    img = Image.open(io.BytesIO(data))
    return img.info["parameters"]


async def test_startup_identifies_syncs_commands_and_never_logs_the_token(bot: RunningBot, caplog) -> None:
    fake = bot.fake
    assert TOKEN in fake.tokens_seen  # it did authenticate with the token...
    assert all(TOKEN not in r.getMessage() for r in caplog.records)  # ...and never logged it
    assert fake.identifies, "no IDENTIFY"
    intents = fake.identifies[0]["intents"]
    assert intents & (1 << 10), "GUILD_MESSAGE_REACTIONS intent is needed for raw reaction events"
    assert not intents & (1 << 15), "no message content intent"
    assert not intents & (1 << 1), "no members intent"
    (sync,) = fake.find("PUT", r"/applications/\d+/commands")
    names = {c["name"] for c in sync.json}
    assert {"imagine", "preset", "history", "show", "queue", "cancel", "quota", "admin", "upscale", "describe"} <= names
    imagine_cmd = next(c for c in sync.json if c["name"] == "imagine")
    option_names = [o["name"] for o in imagine_cmd["options"]]
    assert option_names == [
        "prompt",
        "negative",
        "preset",
        "size",
        "steps",
        "cfg",
        "cfg_rescale",
        "sampler",
        "seed",
        "count",
        "model",
        "clip_skip",
        "lora",
        "hires",
        "hires_scale",
        "hires_steps",
        "hires_strength",
        "upscaler",
        "face_restore",
        "detailer",
        "control_image",
        "control_type",
        "control_weight",
        "reference_image",
        "reference_scale",
    ]
    guide_types = {o["name"]: o["type"] for o in imagine_cmd["options"]}
    assert guide_types["control_image"] == guide_types["reference_image"] == 11  # attachments
    control_type = next(o for o in imagine_cmd["options"] if o["name"] == "control_type")
    assert [c["value"] for c in control_type["choices"]][:2] == ["canny", "depth"]
    count = next(o for o in imagine_cmd["options"] if o["name"] == "count")
    assert (count["min_value"], count["max_value"]) == (1, 4)
    assert next(o for o in imagine_cmd["options"] if o["name"] == "lora")["autocomplete"] is True
    img2img = next(c for c in sync.json if c["name"] == "img2img")
    types = {o["name"]: o["type"] for o in img2img["options"]}
    assert types["image"] == types["mask"] == 11 and types["job"] == 4  # attachments, integer
    strength = next(o for o in img2img["options"] if o["name"] == "strength")
    assert (strength["min_value"], strength["max_value"]) == (0, 1)
    assert len(img2img["options"]) <= 25 and len(imagine_cmd["options"]) <= 25  # Discord's maximum
    assert "loras" in names
    admin = next(c for c in sync.json if c["name"] == "admin")
    assert int(admin["default_member_permissions"]) == 1 << 5


async def test_dev_guild_sync_goes_to_that_guild_only(fake: FakeDiscord) -> None:
    async with running_bot(fake, dev_guild_id=GUILD_B):
        calls = fake.find("PUT", r"/applications/\d+/.*commands")
        assert [c.path.split("/")[-2] for c in calls] == [str(GUILD_B)]


async def test_imagine_defers_posts_status_progress_and_a_png_with_parameters(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    service.step_delay_s = 0.05
    iid, token = await imagine(fake, "a (red:1.2) fox", opt("steps", 20, 4), opt("seed", 1234, 4))
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert cb.json["type"] == 5  # deferred channel message: acknowledged at once
    assert fake.ack_latencies()[iid] < 3.0
    (status,) = await fake.wait_call("PATCH", rf"/webhooks/\d+/{token}/messages/@original")
    assert "job #1" in status.json["content"] and "Queued" in status.json["content"]
    (post,) = await fake.wait_call(
        "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=15
    )
    name, data = post.files[0]
    assert name.endswith(".png")
    params = png_parameters(data)
    assert params.startswith("a (red:1.2) fox") and "Seed: 1234" in params and "Steps: 20" in params
    caption = post.json["content"]
    assert "seed 1234" in caption and "Euler a" in caption and "20 steps" in caption and "CFG 7" in caption
    assert "job #1" in caption and f"<@{ALICE}>" in caption
    message_id = int(post.response["id"])
    await fake.wait_call("PUT", rf"/channels/{CHANNEL_A}/messages/{message_id}/reactions/🔁/@me")
    assert service.posted[1] == [message_id]
    # The live status: edited via the channel endpoint, never faster than the configured interval.
    status_id = service.jobs[1].status_message_id
    edits = fake.find("PATCH", rf"/channels/{CHANNEL_A}/messages/{status_id}")
    assert edits, "no progress edits"
    assert any("/20" in (e.json or {}).get("content", "") for e in edits)
    gaps = [b.at - a.at for a, b in itertools.pairwise(edits)]
    assert all(g >= 0.25 * 0.9 for g in gaps), gaps
    assert len(edits) < 20  # 20 progress events were coalesced
    assert any(
        e.files and e.files[0][0].startswith("preview") for e in edits
    )  # the cheap preview rides along
    await fake.wait_call("DELETE", rf"/channels/{CHANNEL_A}/messages/{status_id}")


async def test_reroll_reaction_replies_with_a_new_seed_charged_to_the_reactor(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    await imagine(fake, "a cat", opt("seed", 7, 4))
    (first,) = await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
    original = int(first.response["id"])
    await fake.react(original, "🔁", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
    posts = await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=2)
    second = posts[1]
    assert int(second.json["message_reference"]["message_id"]) == original
    assert "Seed: 7," not in png_parameters(second.files[0][1])
    (reroll,) = [c for c in service.calls if c[0] == "reroll"]
    assert reroll[1][0].user_id == BOB and reroll[1][1] == original
    assert service.jobs[2].user_id == BOB and service.jobs[2].parent_id == 1


async def test_the_bot_ignores_its_own_and_unrelated_reactions(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    await fake.react(999, "🔁", user_id=BOT_USER_ID, channel_id=CHANNEL_A, guild_id=GUILD_A)
    await fake.react(999, "🔁", user_id=ALICE, channel_id=CHANNEL_A, guild_id=GUILD_A)  # not a result
    await fake.react(999, "👍", user_id=ALICE, channel_id=CHANNEL_A, guild_id=GUILD_A)
    await asyncio.sleep(0.3)
    assert not [c for c in service.calls if c[0] == "reroll"]
    assert not fake.find("POST", r"/users/@me/channels")


async def test_info_reaction_dms_parameters_and_delete_needs_owner_or_admin(bot: RunningBot) -> None:
    fake = bot.fake
    await imagine(fake, "a dog", opt("seed", 42, 4))
    (post,) = await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
    mid = int(post.response["id"])
    await fake.react(mid, "ℹ️", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
    (dm,) = await fake.wait_call("POST", r"/users/@me/channels")
    assert int(dm.json["recipient_id"]) == BOB
    dm_channel = BOB + 1
    (params,) = await fake.wait_call("POST", rf"/channels/{dm_channel}/messages")
    assert "Seed: 42" in params.json["content"] and "job #1" in params.json["content"]
    assert "/img2img job:1" in params.json["content"]  # the "use as source" path
    # BOB is neither the owner nor an admin: refused, privately, and nothing is deleted.
    await fake.react(mid, "❌", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A)
    await fake.wait_call("POST", rf"/channels/{dm_channel}/messages", count=2)
    assert not fake.find("DELETE", rf"/channels/{CHANNEL_A}/messages/{mid}")
    # An admin (by role) may.
    await fake.react(mid, "❌", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A, roles=(ADMIN_ROLE,))
    bot.service.admin_roles[GUILD_A] = {ADMIN_ROLE}
    await fake.react(mid, "❌", user_id=BOB, channel_id=CHANNEL_A, guild_id=GUILD_A, roles=(ADMIN_ROLE,))
    await fake.wait_call("DELETE", rf"/channels/{CHANNEL_A}/messages/{mid}")


async def test_user_errors_are_ephemeral_and_point_at_the_column(bot: RunningBot) -> None:
    fake = bot.fake
    _iid, token = await imagine(fake, "a (cat", guild=GUILD_A)
    (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert follow.json["flags"] & EPHEMERAL
    assert "unclosed '('" in follow.json["content"] and "column 3" in follow.json["content"]
    await fake.wait_call("DELETE", rf"/webhooks/\d+/{token}/messages/@original")  # no stray "thinking…"
    _iid, token = await imagine(fake, "a cat", opt("steps", 80, 4))
    (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert "limit of 50" in follow.json["content"] and follow.json["flags"] & EPHEMERAL


async def test_unexpected_errors_give_the_user_an_error_id_never_a_traceback(bot: RunningBot, caplog) -> None:
    bot.service.explode = True
    _iid, token = await imagine(bot.fake, "a cat")
    (follow,) = await bot.fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    text = follow.json["content"]
    assert "error id" in text and "secret details" not in text and "Traceback" not in text
    error_id = text.split("`")[1]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None


async def test_admin_commands_are_checked_in_core_even_with_permissions_opened(bot: RunningBot) -> None:
    fake, service = bot.fake, bot.service
    # The server opened /admin to everyone: Discord delivers it, the bot still refuses a non-admin.
    _iid, token = await fake.interaction(
        "admin",
        [opt("name", "max_steps"), opt("value", 10, 4)],
        subcommand="limit",
        guild_id=GUILD_A,
        channel_id=CHANNEL_A,
        user_id=BOB,
        permissions=ALL_PERMISSIONS & ~(1 << 5) & ~(1 << 3),
    )
    (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert follow.json["flags"] & EPHEMERAL and "admin" in follow.json["content"].lower()
    assert not [c for c in service.calls if c[0] == "admin_set_limit"]
    # With Manage Server it works.
    _iid, token = await fake.interaction(
        "admin",
        [opt("name", "max_steps"), opt("value", 10, 4)],
        subcommand="limit",
        guild_id=GUILD_A,
        channel_id=CHANNEL_A,
        user_id=BOB,
        permissions=1 << 5,
    )
    (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert "max_steps is now 10" in follow.json["content"]
    assert service.max_steps == 10


async def test_rest_429_is_retried_after_the_given_delay(bot: RunningBot) -> None:
    fake = bot.fake
    fake.fail_once_with_429("POST", rf"/channels/{CHANNEL_A}/messages", retry_after=0.6)
    await imagine(fake, "a cat")
    posts = await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", count=2, timeout=15)
    assert posts[0].status == 429 and posts[1].status == 200 and posts[1].files
    assert posts[1].at - posts[0].at >= 0.6


async def test_gateway_drop_resumes_and_no_command_is_lost(bot: RunningBot) -> None:
    fake = bot.fake
    await fake.drop_gateway()
    # Commands that arrive while the bot is away are replayed on RESUME.
    sent = [await imagine(fake, f"prompt {n}") for n in range(3)]
    await fake.wait_until(lambda: fake.resumes, 30, "RESUME")
    assert len(fake.identifies) == 1  # resumed the same session, did not re-identify
    for iid, token in sent:
        await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback", timeout=15)
    await fake.wait_call(
        "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), count=3, timeout=15
    )


async def test_results_finished_while_away_are_posted_on_start(fake: FakeDiscord) -> None:
    service = FakeService()
    async with running_bot(fake, service) as running:
        service.hold.clear()
        await imagine(fake, "posted later", channel=CHANNEL_B, guild=GUILD_B)
        await fake.wait_call("PATCH", r"/webhooks/.*/@original")
        await running.stop()
    service.hold.set()
    await asyncio.sleep(0.3)  # the job finishes while no bot is running
    assert service.jobs[1].state == "done" and not service.jobs[1].result_message_ids
    async with running_bot(fake, service):
        (post,) = await fake.wait_call("POST", rf"/channels/{CHANNEL_B}/messages", lambda c: bool(c.files))
        assert "posted later" in post.json["content"]
        # the bot records the message once Discord has answered the post: wait for it, not for the post
        posted = (int(post.response["id"]),)
        for _ in range(200):
            if service.jobs[1].result_message_ids == posted:
                break
            await asyncio.sleep(0.05)
        assert service.jobs[1].result_message_ids == posted


async def test_dm_mode_refuse(fake: FakeDiscord) -> None:
    async with running_bot(fake, dm_mode="refuse") as running:
        _iid, token = await fake.interaction(
            "imagine", [opt("prompt", "x")], guild_id=None, channel_id=5, user_id=ALICE
        )
        (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
        assert follow.json["flags"] & EPHEMERAL and "direct messages" in follow.json["content"]
        assert not running.service.calls


async def test_dm_mode_allow_submits_without_a_guild(bot: RunningBot) -> None:
    _iid, _token = await bot.fake.interaction(
        "imagine", [opt("prompt", "x")], guild_id=None, channel_id=5, user_id=ALICE
    )
    await bot.fake.wait_call("POST", r"/channels/5/messages", lambda c: bool(c.files))
    actor = bot.service.calls[0][1][0]
    assert actor.guild_id is None and actor.user_id == ALICE


async def test_big_results_are_reencoded_to_fit_the_upload_limit(fake: FakeDiscord) -> None:
    fake.guilds[GUILD_B].attachment_size_limit = 40_000
    service = FakeService(image_size=200, noisy_images=True)
    async with running_bot(fake, service):
        await imagine(fake, "noise", guild=GUILD_B, channel=CHANNEL_B)
        (post,) = await fake.wait_call("POST", rf"/channels/{CHANNEL_B}/messages", lambda c: bool(c.files))
        name, data = post.files[0]
        assert len(service.images[1][0].png) > 40_000  # the original does not fit
        assert len(data) <= 40_000 and name.endswith(".jpg")
        assert "upload limit" in post.json["content"]


async def test_history_queue_quota_and_presets(bot: RunningBot) -> None:
    fake = bot.fake
    await imagine(fake, "first")
    await fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
    _, token = await fake.interaction("history", [], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE)
    (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert "#1" in follow.json["content"] and "first" in follow.json["content"]
    _, token = await fake.interaction("quota", [], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE)
    (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert "1 / 100" in follow.json["content"]
    _, token = await fake.interaction(
        "preset",
        [opt("name", "mine"), opt("steps", 12, 4)],
        subcommand="save",
        guild_id=GUILD_A,
        channel_id=CHANNEL_A,
        user_id=ALICE,
    )
    (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert "Saved preset **mine**" in follow.json["content"]
    _, token = await fake.interaction(
        "preset", [], subcommand="list", guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE
    )
    (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
    assert "mine" in follow.json["content"] and "steps=12" in follow.json["content"]
    _, token = await fake.interaction(
        "show", [opt("job", 1, 4)], guild_id=GUILD_B, channel_id=CHANNEL_B, user_id=ALICE
    )
    (repost,) = await fake.wait_call("POST", rf"/channels/{CHANNEL_B}/messages", lambda c: bool(c.files))
    await fake.wait_call("POST", rf"/webhooks/\d+/{token}")  # "Posted job #1" comes after recording
    assert int(repost.response["id"]) in bot.service.jobs[1].result_message_ids  # 🔁 works on it


async def test_fifty_interactions_at_once_are_all_acknowledged_quickly(bot: RunningBot) -> None:
    fake = bot.fake
    bot.service.hold.clear()  # acknowledgement must not wait for generation
    start = time.monotonic()
    sent = await asyncio.gather(*(imagine(fake, f"p{n}", user=ALICE + n) for n in range(50)))
    for iid, token in sent:
        await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback", timeout=10)
    latencies = [fake.ack_latencies()[iid] for iid, _ in sent]
    assert max(latencies) < 3.0, max(latencies)
    assert time.monotonic() - start < 10
    logging.getLogger(__name__).info(
        "ack p50=%.1fms max=%.1fms", 1000 * sorted(latencies)[25], 1000 * max(latencies)
    )


@pytest.mark.parametrize("guild,channel", [(GUILD_B, CHANNEL_B)])
async def test_cancel_reports_in_the_channel(bot: RunningBot, guild, channel) -> None:
    fake, service = bot.fake, bot.service
    service.hold.clear()
    _, token = await imagine(fake, "slow", guild=guild, channel=channel)
    await fake.wait_call("PATCH", rf"/webhooks/\d+/{token}/messages/@original")
    _, token2 = await fake.interaction(
        "cancel", [opt("job", 1, 4)], guild_id=guild, channel_id=channel, user_id=ALICE
    )
    (follow,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token2}")
    assert "cancelled" in follow.json["content"]
    service.hold.set()
    status_id = service.jobs[1].status_message_id
    await fake.wait_call(
        "PATCH",
        rf"/channels/{channel}/messages/{status_id}",
        lambda c: "was cancelled" in (c.json or {}).get("content", ""),
    )


async def test_sampler_model_and_size_autocomplete(bot: RunningBot) -> None:
    fake = bot.fake
    iid, token = await imagine(
        fake, "x", {"name": "sampler", "type": 3, "value": "eu", "focused": True}, type=4
    )
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert cb.json["type"] == 8
    assert [c["value"] for c in cb.json["data"]["choices"]] == ["Euler a", "Euler"]
    iid, token = await imagine(
        fake, "x", {"name": "model", "type": 3, "value": "xl", "focused": True}, type=4
    )
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert [c["value"] for c in cb.json["data"]["choices"]] == ["fake-xl"]
    # Hires upscalers: the engine's own (latent, image) then the installed models by A1111's names.
    iid, token = await imagine(
        fake, "x", {"name": "upscaler", "type": 3, "value": "r-es", "focused": True}, type=4
    )
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert [c["value"] for c in cb.json["data"]["choices"]] == ["R-ESRGAN 4x+"]
    iid, token = await imagine(
        fake, "x", {"name": "upscaler", "type": 3, "value": "", "focused": True}, type=4
    )
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    upscalers = [c["value"] for c in cb.json["data"]["choices"]]
    assert upscalers[0] == "Latent" and upscalers[-2:] == ["R-ESRGAN 4x+", "4x-UltraSharp"]
    iid, token = await imagine(fake, "x", {"name": "size", "type": 3, "value": "", "focused": True}, type=4)
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    sizes = [c["value"] for c in cb.json["data"]["choices"]]
    assert "512x768" in sizes and "1024x1024" in sizes
    assert all(int(w) * int(h) <= bot.settings.limits.max_pixels for w, h in (s.split("x") for s in sizes))
    assert sizes[0] == "512x512" and cb.json["data"]["choices"][0]["name"] == "512x512 (the model's default)"
    # The model chosen so far decides which size comes first: what leaving the option out gives.
    iid, token = await imagine(
        fake, "x", opt("model", "fake-xl"), {"name": "size", "type": 3, "value": "", "focused": True}, type=4
    )
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    sizes = [c["value"] for c in cb.json["data"]["choices"]]
    assert sizes[0] == "1024x1024" and sizes.count("1024x1024") == 1
    from bot.options import size_choices

    assert [c.value for c in size_choices(512 * 768)] == ["512x512", "512x768", "768x512"]
    assert [c.value for c in size_choices(512 * 768, default=(1024, 1024))] == ["512x512", "512x768", "768x512"]


async def test_a_bad_size_is_refused_with_the_expected_format(bot: RunningBot) -> None:
    iid, token = await imagine(bot.fake, "x", opt("size", "huge"))
    (cb,) = await bot.fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert cb.json["type"] == 4 and cb.json["data"]["flags"] & EPHEMERAL  # refused before deferring
    assert "WIDTHxHEIGHT" in cb.json["data"]["content"]
    assert not bot.service.calls


async def test_history_pages_with_buttons_that_survive_restarts(fake: FakeDiscord) -> None:
    service = FakeService(step_delay_s=0.0)
    async with running_bot(fake, service):
        for n in range(12):
            await imagine(fake, f"job {n}", opt("steps", 1, 4))
        await fake.wait_until(lambda: len(result_posts(fake)) >= 12, 20, "12 results")
        _, token = await fake.interaction(
            "history", [], guild_id=GUILD_A, channel_id=CHANNEL_A, user_id=ALICE
        )
        (page1,) = await fake.wait_call("POST", rf"/webhooks/\d+/{token}")
        assert "page 1/2" in page1.json["content"] and "`#12`" in page1.json["content"]
        buttons = [b["custom_id"] for row in page1.json["components"] for b in row["components"]]
        assert buttons == [f"chant:history:{ALICE}:0", f"chant:history:{ALICE}:1"]
    # A new bot process: the button still works (its state is in the custom_id).
    async with running_bot(fake, service):
        iid, token = await fake.component(
            f"chant:history:{ALICE}:1",
            message_id=int(page1.response["id"]),
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=ALICE,
        )
        (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
        assert cb.json["type"] == 7  # update the message in place
        assert "page 2/2" in cb.json["data"]["content"] and "`#1`" in cb.json["data"]["content"]
        # Someone else's buttons are refused.
        iid, token = await fake.component(
            f"chant:history:{ALICE}:1",
            message_id=int(page1.response["id"]),
            guild_id=GUILD_A,
            channel_id=CHANNEL_A,
            user_id=BOB,
        )
        (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
        assert cb.json["type"] == 4 and cb.json["data"]["flags"] & EPHEMERAL


async def test_acknowledged_at_once_even_when_the_service_is_slow(bot: RunningBot) -> None:
    bot.service.submit_delay_s = 4.0  # longer than Discord's 3 s window
    iid, token = await imagine(bot.fake, "patience")
    await bot.fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback", timeout=3)
    assert bot.fake.ack_latencies()[iid] < 1.0
    (status,) = await bot.fake.wait_call("PATCH", rf"/webhooks/\d+/{token}/messages/@original", timeout=10)
    assert "job #1" in status.json["content"]


async def test_four_images_go_out_in_one_message_with_a_seed_range(bot: RunningBot) -> None:
    await imagine(bot.fake, "four", opt("count", 4, 4), opt("seed", 100, 4), opt("steps", 2, 4))
    (post,) = await bot.fake.wait_call("POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files))
    assert len(post.files) == 4
    assert [png_parameters(data).split("Seed: ")[1].split(",")[0] for _, data in post.files] == [
        "100",
        "101",
        "102",
        "103",
    ]
    assert "seed 100–103" in post.json["content"]
