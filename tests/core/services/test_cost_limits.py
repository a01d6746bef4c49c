"""What a prompt's structure costs through the service: AND parts and chunks are limited per guild,
and the fair queue and the quota charge what a job asks of the UNet (core.cost)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.services import ImagineOptions, UserError
from core.storage.models import UsageEntry
from core.testing.fake_engine import FAKE_SAMPLERS, FakeEngine
from tests.core.services.conftest import Harness, actor

THOUSAND_PARTS = " AND ".join(["a"] * 1000)  # 5,999 characters: within Discord's limit
MANY_BREAKS = " BREAK" * 857  # 5,142 characters, 857 chunks (an empty last chunk is dropped, as A1111)


async def test_too_many_and_parts_or_chunks_are_refused_naming_the_limit(tmp_path) -> None:
    h = Harness(tmp_path)
    service = await h.open(start=False)
    try:
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt=THOUSAND_PARTS))
        assert err.value.code == "limit.and_parts"
        assert "1000 AND parts" in str(err.value) and "at most 8" in str(err.value)
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt="a cat" + MANY_BREAKS))
        assert err.value.code == "limit.chunks"
        assert "857 chunks" in str(err.value) and "at most 12" in str(err.value)
        with pytest.raises(UserError) as err:
            await service.submit_imagine(
                actor(), ImagineOptions(prompt="a cat", negative="ugly" + MANY_BREAKS)
            )
        assert err.value.code == "limit.chunks" and "negative prompt" in str(err.value)
        # a prompt that cannot be read is still refused for what is wrong with it, the column named
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt="a (red:1.2.3) fox"))
        assert err.value.code == "prompt" and "column 8" in str(err.value)
        # what people write passes: 4 parts, 300 tokens
        realistic = " AND ".join(["a castle on a hill, " + "detailed, " * 35] * 4)
        await service.submit_imagine(actor(), ImagineOptions(prompt=realistic))
        # admins lower the limits like the others
        admin = actor(user=1, manage_guild=True)
        await service.admin_set_limit(admin, "max_and_parts", 2)
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt="a AND b AND c"))
        assert err.value.code == "limit.and_parts" and "at most 2" in str(err.value)
        with pytest.raises(UserError) as err:
            await service.admin_set_limit(admin, "max_prompt_chunks", 13)  # over the operator's maximum
        assert err.value.code == "invalid"
    finally:
        await h.close()


async def test_the_quota_reserves_gpu_seconds_by_the_jobs_cost(tmp_path) -> None:
    h = Harness(tmp_path, max_queued_per_user=10)
    service = await h.open(start=False, engine=FakeEngine(samplers=(*FAKE_SAMPLERS, "Heun")))
    try:
        plain = await service.submit_imagine(actor(), ImagineOptions(prompt="a", steps=20))
        parts = await service.submit_imagine(actor(), ImagineOptions(prompt="a AND b AND c", steps=20))
        heun = await service.submit_imagine(actor(), ImagineOptions(prompt="a", steps=20, sampler="Heun"))
        async with h.db.session() as s:
            rows = await s.execute(
                select(UsageEntry.job_id, UsageEntry.amount).where(UsageEntry.unit == "gpu_seconds")
            )
            reserved = dict(rows.all())
        assert reserved[parts.job_id] == pytest.approx(2 * reserved[plain.job_id], rel=0.01)  # 4 rows, not 2
        assert reserved[heun.job_id] == pytest.approx(39 / 20 * reserved[plain.job_id], rel=0.01)
    finally:
        await h.close()


async def test_the_fair_queue_charges_a_guild_for_its_jobs_structure(tmp_path) -> None:
    """Guild 1's 8-part jobs cost 4.5 plain ones: guild 2's plain jobs go first in between."""
    h = Harness(tmp_path, max_queued_per_user=10)
    service = await h.open(start=False)
    try:
        heavy = " AND ".join(["a"] * 8)
        first = await service.submit_imagine(actor(guild=1), ImagineOptions(prompt=heavy))
        second = await service.submit_imagine(actor(guild=1), ImagineOptions(prompt=heavy))
        for _ in range(4):
            await service.submit_imagine(actor(user=20, guild=2), ImagineOptions(prompt="a"))
        positions = {view.id: p for view, p in await service.my_queue(actor(guild=1))}
        assert positions == {first.job_id: 1, second.job_id: 6}  # before: 1 and 3, as if plain
    finally:
        await h.close()
