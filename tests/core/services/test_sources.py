"""Source images of img2img / inpaint jobs: stored once as uploaded, shared by the jobs that use them
(rerolls, variations, the same upload again), and pruned with the results' retention."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import func, select, update

from core.queue.store import JobStore
from core.services import ImagineOptions, UserError
from core.storage.models import Job, JobImage, SourceImage, UsageEntry, utcnow
from core.storage.repositories import Repositories
from core.types import GeneratedImage, Mode
from tests.core.services.conftest import Harness, actor

RESULT_MESSAGE = 7001


def jpeg(size=(640, 480), orientation: int | None = None) -> bytes:
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


async def _stored(h: Harness) -> tuple[int, int]:
    """(source rows, bytes still stored)."""
    async with h.db.session() as s:
        rows, size = (
            await s.execute(select(func.count(), func.coalesce(func.sum(func.length(SourceImage.data)), 0)))
        ).one()
    return int(rows), int(size)


async def _upload_and_reroll(h: Harness, upload: bytes, rerolls: int) -> list[int]:
    service = h.service
    first = await service.submit_imagine(actor(), ImagineOptions(prompt="a cat", init_image=upload))
    async with h.db.transaction(write=True) as s:
        repos = Repositories(s)
        await repos.jobs.finish(first.job_id, "done")
        await repos.jobs.add_images(first.job_id, [GeneratedImage(b"result", 1, 1, "info")])
        await repos.jobs.add_result_messages(first.job_id, 100, [RESULT_MESSAGE])
    ids = [first.job_id]
    for _ in range(rerolls):
        ids.append((await service.reroll(actor(), RESULT_MESSAGE)).job_id)
    return ids


async def _age(h: Harness, days: int, job_ids: list[int] | None = None) -> None:
    """Make the stored sources, and jobs (all by default) with their results, ``days`` old."""
    then = utcnow() - timedelta(days=days)
    async with h.db.transaction(write=True) as s:
        jobs = update(Job).values(state="done", created_at=then, finished_at=then)
        images = update(JobImage).values(created_at=then)
        if job_ids is not None:
            jobs, images = jobs.where(Job.id.in_(job_ids)), images.where(JobImage.job_id.in_(job_ids))
        await s.execute(jobs)
        await s.execute(images)
        await s.execute(update(SourceImage).values(created_at=then))


async def _prune(h: Harness, days: int = 30) -> tuple[int, int]:
    async with h.db.transaction(write=True) as s:
        repos = Repositories(s)
        older_than = utcnow() - timedelta(days=days)
        return await repos.jobs.prune_images(older_than), await repos.sources.prune(older_than)


async def test_an_upload_is_stored_once_as_sent_and_shared_by_its_rerolls(tmp_path) -> None:
    h = Harness(tmp_path, max_queued_per_user=10)
    await h.open(start=False)
    try:
        upload = jpeg(orientation=6)  # a phone photo: the engine turns it upright when it decodes it
        ids = await _upload_and_reroll(h, upload, rerolls=3)
        assert await _stored(h) == (1, len(upload))  # was 4 re-encoded PNGs
        (claimed,) = await JobStore(h.db, worker_id="w", lease_seconds=5).claim([ids[-1]])
        assert claimed.request.mode == Mode.IMG2IMG and claimed.request.init_image == upload
        assert (claimed.request.width, claimed.request.height) == (480, 640)  # its upright size
        # the same picture uploaded again, by someone else, is the same stored source
        await h.service.submit_imagine(actor(user=11), ImagineOptions(prompt="a dog", init_image=upload))
        assert await _stored(h) == (1, len(upload))
    finally:
        await h.close()


async def test_a_format_the_engine_does_not_read_is_stored_as_png(tmp_path) -> None:
    h = Harness(tmp_path)
    await h.open(start=False)
    try:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "BMP")
        r = await h.service.submit_imagine(actor(), ImagineOptions(prompt="x", init_image=buf.getvalue()))
        (claimed,) = await JobStore(h.db, worker_id="w", lease_seconds=5).claim([r.job_id])
        assert claimed.request.init_image.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(claimed.request.init_image)).getpixel((3, 3)) == (200, 10, 10)
    finally:
        await h.close()


async def test_sources_are_pruned_with_the_results_once_no_recent_job_uses_them(tmp_path) -> None:
    h = Harness(tmp_path, max_queued_per_user=10)
    await h.open(start=False)
    try:
        upload = jpeg()
        ids = await _upload_and_reroll(h, upload, rerolls=3)
        await _age(h, 60, ids[:1])  # the upload is old, its rerolls are recent: the source stays
        assert await _prune(h) == (1, 0)
        assert await _stored(h) == (1, len(upload))
        await _age(h, 60)  # 60 days later, everything
        assert await _prune(h) == (0, 1)
        assert await _stored(h) == (1, 0)  # the row stays (what the jobs used), its bytes are gone
        # uploaded again: stored again
        await h.service.submit_imagine(actor(), ImagineOptions(prompt="again", init_image=upload))
        assert await _stored(h) == (1, len(upload))
    finally:
        await h.close()


async def test_a_reroll_of_a_job_whose_source_was_pruned_says_so_and_charges_nothing(tmp_path) -> None:
    h = Harness(tmp_path, max_queued_per_user=10)
    await h.open(start=False)
    try:
        await _upload_and_reroll(h, jpeg(), rerolls=0)
        await _age(h, 60)
        await _prune(h)
        async with h.db.session() as s:
            before = (
                await s.scalar(select(func.count()).select_from(Job)),
                await s.scalar(select(func.count()).select_from(UsageEntry)),
            )
        with pytest.raises(UserError) as err:
            await h.service.reroll(actor(), RESULT_MESSAGE)
        assert err.value.code == "source_pruned"
        assert "source image" in str(err.value) and "30 days" in str(err.value)
        async with h.db.session() as s:
            after = (
                await s.scalar(select(func.count()).select_from(Job)),
                await s.scalar(select(func.count()).select_from(UsageEntry)),
            )
        assert after == before
    finally:
        await h.close()
