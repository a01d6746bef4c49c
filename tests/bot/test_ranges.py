"""The bot, the service and core.ranges agree on every value: what Discord offers, core accepts.

The seed bug this guards against: /imagine seed:4294967295 was accepted by the bot and the service,
charged, queued — and refused by the engine. Here it goes through the real service (SQLite, the fake
engine) from a fake Discord interaction to the posted result.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import ranges
from core.services import ImagineOptions, UserError
from core.storage.models import Job
from tests.bot.conftest import ALICE, CHANNEL_A, RunningBot, running_bot
from tests.bot.fake_discord import FakeDiscord
from tests.bot.test_app import imagine, opt, png_parameters
from tests.core.services.conftest import Harness, actor


def _option(command: dict, name: str) -> dict:
    return next(o for o in command["options"] if o["name"] == name)


async def test_the_bots_options_are_core_ranges(bot: RunningBot) -> None:
    (sync,) = bot.fake.find("PUT", r"/applications/\d+/commands")
    imagine_cmd = next(c for c in sync.json if c["name"] == "imagine")
    img2img = next(c for c in sync.json if c["name"] == "img2img")
    bounds = {
        "seed": (ranges.RANDOM_SEED, ranges.MAX_SEED),
        "steps": (ranges.MIN_STEPS, ranges.MAX_STEPS),
        "cfg": (ranges.BOT_MIN_CFG, ranges.BOT_MAX_CFG),
        "cfg_rescale": (ranges.MIN_CFG_RESCALE, ranges.MAX_CFG_RESCALE),
        "count": (ranges.MIN_COUNT, ranges.BOT_MAX_COUNT),
        "clip_skip": (ranges.MIN_CLIP_SKIP, ranges.MAX_CLIP_SKIP),
        "hires_scale": (ranges.MIN_HIRES_SCALE, ranges.MAX_HIRES_SCALE),
        "hires_steps": (0, ranges.MAX_HIRES_STEPS),
        "hires_strength": (ranges.MIN_STRENGTH, ranges.MAX_STRENGTH),
    }
    for name, (low, high) in bounds.items():
        option = _option(imagine_cmd, name)
        assert (option["min_value"], option["max_value"]) == (low, high), name
    for name, (low, high) in {
        "strength": (ranges.MIN_STRENGTH, ranges.MAX_STRENGTH),
        "mask_blur": (ranges.MIN_MASK_BLUR, ranges.MAX_MASK_BLUR),
    }.items():
        option = _option(img2img, name)
        assert (option["min_value"], option["max_value"]) == (low, high), name
    # Upscaler models are installed files: the option autocompletes the service's list (test_app).
    assert _option(imagine_cmd, "upscaler")["autocomplete"] is True
    assert [c["value"] for c in _option(img2img, "fill")["choices"]] == list(ranges.FILL_MODES.values())
    assert [c["value"].capitalize() for c in _option(img2img, "resize_mode")["choices"]] == list(
        ranges.RESIZE_MODES.values()
    )


async def test_the_service_takes_the_bots_whole_seed_range_and_nothing_more(tmp_path) -> None:
    h = Harness(tmp_path, max_queued_per_user=10)
    service = await h.open(start=False)
    try:
        top = await service.submit_imagine(actor(), ImagineOptions(prompt="x", seed=ranges.MAX_SEED))
        assert (await service.show(actor(), top.job_id)).request.seed == ranges.MAX_SEED
        assert (await service.submit_imagine(actor(), ImagineOptions(prompt="x", seed=0))).job_id
        random = await service.submit_imagine(actor(), ImagineOptions(prompt="x", seed=ranges.RANDOM_SEED))
        assert 0 <= (await service.show(actor(), random.job_id)).request.seed < ranges.RANDOM_SEED_BOUND
        for seed in (ranges.MAX_SEED + 1, -2):
            with pytest.raises(UserError) as err:
                await service.submit_imagine(actor(), ImagineOptions(prompt="x", seed=seed))
            assert err.value.code == "seed" and str(ranges.MAX_SEED) in str(err.value)
    finally:
        await h.close()


@pytest.mark.slow
async def test_imagine_with_the_largest_seed_is_queued_with_it_and_delivered(
    fake: FakeDiscord, tmp_path
) -> None:
    h = Harness(tmp_path)
    service = await h.open(start=False)  # the bot starts it
    try:
        async with running_bot(fake, service=service):  # the real service behind the fake Discord
            _iid, token = await imagine(fake, "a fox", opt("seed", ranges.MAX_SEED, 4), opt("steps", 3, 4))
            (status,) = await fake.wait_call("PATCH", rf"/webhooks/\d+/{token}/messages/@original")
            assert "Queued" in status.json["content"] or "Starting" in status.json["content"]
            async with h.db.session() as s:
                (seed, user) = (await s.execute(select(Job.seed, Job.user_id))).one()
            assert (seed, user) == (ranges.MAX_SEED, ALICE)  # queued with exactly that seed
            (post,) = await fake.wait_call(
                "POST", rf"/channels/{CHANNEL_A}/messages", lambda c: bool(c.files), timeout=15
            )
            assert f"Seed: {ranges.MAX_SEED}," in png_parameters(post.files[0][1])
            caption = post.json["content"]
            assert f"seed {ranges.MAX_SEED}" in caption
            assert (
                "fake-sd15" in caption
            )  # the model the job ran on, carried by the job (no infotext parsing)
    finally:
        await h.close()


@pytest.mark.parametrize("size", ["64x16384", "16384x64", "8192x128", "32x512", "512x4104"])
async def test_sizes_the_engine_refuses_are_refused_before_deferring(bot: RunningBot, size: str) -> None:
    fake = bot.fake
    iid, token = await imagine(fake, "x", opt("size", size))
    (cb,) = await fake.wait_call("POST", rf"/interactions/{iid}/{token}/callback")
    assert cb.json["type"] == 4 and cb.json["data"]["flags"] & 64  # refused privately, nothing deferred
    text = cb.json["data"]["content"]
    assert f"between {ranges.MIN_SIDE} and {ranges.MAX_SIDE}" in text and size in text, text
    assert not bot.service.calls  # never reached core: nothing queued, nothing charged


def test_every_size_choice_is_one_the_engine_takes() -> None:
    from bot.options import SIZES, parse_size

    for _, w, h in SIZES:
        assert parse_size(f"{w}x{h}") == (w, h)
        assert min(w, h) >= ranges.MIN_SIDE and max(w, h) <= ranges.MAX_SIDE
        assert w % ranges.SIDE_MULTIPLE == 0 and h % ranges.SIDE_MULTIPLE == 0
    assert parse_size(f"{ranges.MAX_SIDE}x{ranges.MIN_SIDE}") == (ranges.MAX_SIDE, ranges.MIN_SIDE)
