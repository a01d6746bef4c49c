"""The size limits, one definition (``core.ranges`` MIN_SIDE / MAX_SIDE / SIDE_MULTIPLE), checked before
queueing on every path: /imagine, /img2img without a size, presets, a reroll of an old job, the hires
target. What the service accepts the engine's own check accepts too; what it refuses costs nothing.

The bug: 64×16384, 16384×64 and 8192×128 are within the default ``max_pixels`` (1024²), so they were
accepted, charged and queued — and then refused by the engine (its largest side is 4096).
"""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sqlalchemy import update

from core import ranges
from core.engine.checks import check_inputs
from core.services import ImagineOptions, JobDone, UserError
from core.storage.models import Job
from core.storage.repositories import Repositories
from core.types import GenerationError, GenerationRequest
from tests.core.services.conftest import Harness, actor, wait_for

ENGINE_REFUSES = [(64, 16384), (16384, 64), (8192, 128), (128, 8192), (4104, 64)]


async def stored_request(harness, job_id: int):
    async with harness.db.session() as s:
        repos = Repositories(s)
        return await repos.jobs.request(await repos.jobs.get(job_id))


async def nothing_queued_or_charged(h: Harness, user: int = 10) -> None:
    async with h.db.session() as s:
        assert await Repositories(s).jobs.count_for_user(user) == 0
    assert (await h.service.quota_status(actor(user=user))).used_images == 0


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("width", "height"), ENGINE_REFUSES)
async def test_sides_the_engine_refuses_are_refused_before_queueing(harness, width, height) -> None:
    service = await harness.open(start=False)
    assert width * height <= harness.settings.limits.max_pixels  # the pixel limit alone lets them through
    request = GenerationRequest(prompt="x", width=width, height=height)
    with pytest.raises(GenerationError):  # the engine's own check: the reason this must not be queued
        check_inputs(request, harness.settings.engine)
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(), ImagineOptions(prompt="x", width=width, height=height))
    assert err.value.code == "limit.size"
    assert f"{ranges.MAX_SIDE}" in str(err.value) and f"{max(width, height)}" in str(err.value)
    await nothing_queued_or_charged(harness)


async def test_a_preset_with_such_a_size_is_refused_when_used(harness) -> None:
    service = await harness.open(start=False)
    await service.save_preset(actor(), "tall", ImagineOptions(prompt="", width=64, height=16384))
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(), ImagineOptions(prompt="a tower", preset="tall"))
    assert err.value.code == "limit.size"
    await nothing_queued_or_charged(harness)


async def test_a_reroll_of_an_old_job_with_such_a_size_is_refused_uncharged(harness) -> None:
    service = await harness.open()
    events = service.events()
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="a fox", steps=2))
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
    await service.record_result_messages(r.job_id, [6001])
    # A job stored before the check existed (its request says 16384×64).
    async with harness.db.transaction(write=True) as s:
        job = await Repositories(s).jobs.get(r.job_id)
        params = {**job.params, "width": 16384, "height": 64}
        await s.execute(update(Job).where(Job.id == r.job_id).values(params=params, width=16384, height=64))
    for action in (service.reroll, service.variation):
        with pytest.raises(UserError) as err:
            await action(actor(user=11), 6001)
        assert err.value.code == "limit.size"
    await nothing_queued_or_charged(harness, user=11)


async def test_the_hires_target_is_held_to_the_same_sides(harness) -> None:
    service = await harness.open(start=False)
    hires = {"hires": True, "upscaler": "Lanczos"}
    # 2048×64 at 2.5× is 5120×160: within max_pixels, over the largest side.
    with pytest.raises(UserError) as err:
        await service.submit_imagine(
            actor(), ImagineOptions(prompt="x", width=2048, height=64, hires_scale=2.5, **hires)
        )
    assert err.value.code == "limit.size" and "5120×160" in str(err.value) and "Hires" in str(err.value)
    await nothing_queued_or_charged(harness)
    # 64×1024 at 4× is 256×4096: the largest side exactly, accepted, and the engine agrees.
    r = await service.submit_imagine(
        actor(), ImagineOptions(prompt="x", width=64, height=1024, hires_scale=4.0, **hires)
    )
    check_inputs(await stored_request(harness, r.job_id), harness.settings.engine)


@pytest.mark.parametrize("size", [(4000, 60), (60, 4000), (20000, 100), (9, 3000)])
async def test_img2img_without_a_size_picks_one_the_engine_accepts(harness, size) -> None:
    service = await harness.open(start=False)
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="x", init_image=png(size)))
    req = await stored_request(harness, r.job_id)
    assert min(req.width, req.height) >= ranges.MIN_SIDE and max(req.width, req.height) <= ranges.MAX_SIDE
    assert req.width % ranges.SIDE_MULTIPLE == 0 and req.height % ranges.SIDE_MULTIPLE == 0
    check_inputs(req, harness.settings.engine)  # what the service queued, the engine runs
    # The long side stays the long side.
    assert (req.width > req.height) == (size[0] > size[1])


async def test_a_hires_strength_too_small_for_its_steps_is_refused_before_queueing(harness) -> None:
    service = await harness.open(start=False)
    opts = ImagineOptions(prompt="x", hires=True, hires_strength=0.01, steps=20)
    with pytest.raises(GenerationError):  # the engine would refuse it after queueing
        check_inputs(
            GenerationRequest(prompt="x", steps=20, enable_hr=True, hr_denoising_strength=0.01),
            harness.settings.engine,
        )
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(), opts)
    assert err.value.code == "invalid" and "too small" in str(err.value)
    await nothing_queued_or_charged(harness)
