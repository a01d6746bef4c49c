from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest

from core.cost import job_cost
from core.storage.db import Database
from core.storage.models import utcnow
from core.storage.repositories import JobRepo, Repositories
from core.types import GeneratedImage, GenerationRequest, Mode

HARD_TEXTS = [
    "a cat, (masterpiece:1.2), [dog:cat:0.5] <lora:x:0.8> AND b :1.1",
    "'; DROP TABLE jobs; -- \" OR 1=1 /* */ %s %% ? :name $1 \\x00",
    "猫 😺 emoji ZWJ 👩‍👩‍👧 RTL עברית العربية combining é e\u0301 \u200b\ufeff",
    "line one\nline two\r\n\ttabbed",
    "x" * 20_000,
]


def _request(**changes) -> GenerationRequest:
    base = GenerationRequest(
        prompt="a cat", negative_prompt="blurry", seed=1234, steps=20, count=2, model="sd15"
    )
    return base.replace(**changes)


async def _add(session, user_id=10, guild_id=1, **changes):
    return await JobRepo(session).add(
        user_id=user_id, channel_id=5, guild_id=guild_id, request=_request(**changes)
    )


@pytest.mark.parametrize("prompt", HARD_TEXTS, ids=["a1111", "sql", "unicode", "newlines", "20k"])
async def test_any_prompt_round_trips_exactly(db: Database, prompt: str) -> None:
    async with db.transaction(write=True) as s:
        job = await _add(s, prompt=prompt, negative_prompt=prompt[::-1])
        job_id = job.id
    async with db.transaction() as s:
        repo = JobRepo(s)
        stored = await repo.request(await repo.get(job_id))
    assert stored.prompt == prompt
    assert stored.negative_prompt == prompt[::-1]
    assert stored == _request(prompt=prompt, negative_prompt=prompt[::-1])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("x" * 20_001, "prompt is 20001 characters long; the limit is 20000"),
        ("nul \x00 byte", "prompt contains a control character (U+0000) at position 5"),
        ("bell \x07", "prompt contains a control character (U+0007)"),
        ("lone \ud800 surrogate", "prompt is not valid Unicode"),
    ],
)
async def test_bad_prompts_are_refused_clearly(db: Database, prompt: str, message: str) -> None:
    async with db.transaction(write=True) as s:
        with pytest.raises(ValueError, match=re.escape(message)):
            await _add(s, prompt=prompt)
        assert await JobRepo(s).count_for_user(10) == 0


async def test_full_request_with_input_images_round_trips(db: Database) -> None:
    request = _request(
        mode=Mode.INPAINT,
        init_image=b"\x89PNG init",
        mask_image=b"\x89PNG mask",
        subseed=99,
        subseed_strength=0.3,
        clip_skip=2,
        enable_hr=True,
        hr_prompt="hires",
    )
    async with db.transaction(write=True) as s:
        job = await JobRepo(s).add(
            user_id=10, channel_id=5, guild_id=None, request=request, model_hash="abcdef0123"
        )
        job_id = job.id
    async with db.transaction() as s:
        repo = JobRepo(s)
        job = await repo.get(job_id)
        assert await repo.request(job) == request
        assert (job.guild_id, job.channel_id, job.user_id, job.state, job.kind) == (
            None,
            5,
            10,
            "queued",
            "imagine",
        )
        assert (job.model, job.model_hash, job.seed, job.count, job.width, job.steps) == (
            "sd15",
            "abcdef0123",
            1234,
            2,
            512,
            20,
        )
        assert job.cost == job_cost(request)  # the one job cost (core.cost)
        assert job.created_at.tzinfo is not None and abs(job.created_at - utcnow()) < timedelta(minutes=1)


async def test_result_message_finds_its_job_and_images_keep_seeds(db: Database) -> None:
    async with db.transaction(write=True) as s:
        repo = JobRepo(s)
        job = await _add(s)
        other = await _add(s)
        await repo.set_status_message(job.id, 5, 900)
        await repo.add_images(
            job.id, [GeneratedImage(b"png0", 1234, 7, "info 0"), GeneratedImage(b"png1", 1235, 7, "info 1")]
        )
        await repo.add_result_messages(job.id, 5, [901, 902])
        await repo.add_result_messages(other.id, 5, [903])
        assert job.status_message_id == 900
    async with db.transaction() as s:
        repo = JobRepo(s)
        for message_id in (900, 901, 902):
            assert (await repo.by_message(message_id)).id == job.id
        assert (await repo.by_message(903)).id == other.id
        assert await repo.by_message(904) is None
        assert await repo.result_message_ids(job.id) == [901, 902]
        assert await repo.seeds(job.id) == [1234, 1235]
        images = await repo.images(job.id)
        assert [(i.position, i.png, i.infotext, i.size_bytes) for i in images] == [
            (0, b"png0", "info 0", 4),
            (1, b"png1", "info 1", 4),
        ]
        assert await repo.forget_messages([902]) == 1
        assert await repo.by_message(902) is None


async def test_prune_drops_bytes_but_keeps_parameters_and_seeds(db: Database) -> None:
    old = utcnow() - timedelta(days=40)
    async with db.transaction(write=True) as s:
        repo = JobRepo(s)
        job = await _add(s)
        new = await _add(s)
        for img in await repo.add_images(job.id, [GeneratedImage(b"old", 1, 0, "i")]):
            img.created_at = old
        await repo.add_images(new.id, [GeneratedImage(b"new", 2, 0, "i")])
    async with db.transaction(write=True) as s:
        assert await JobRepo(s).prune_images(utcnow() - timedelta(days=30)) == 1
    async with db.transaction() as s:
        repo = JobRepo(s)
        (pruned,) = await repo.images(job.id)
        assert (pruned.png, pruned.seed, pruned.infotext, pruned.pruned_at is not None) == (
            None,
            1,
            "i",
            True,
        )
        assert (await repo.images(new.id))[0].png == b"new"
        assert (await repo.request(await repo.get(job.id))).prompt == "a cat"


async def test_history_is_newest_first_paged_and_counted(db: Database) -> None:
    async with db.transaction(write=True) as s:
        ids = [(await _add(s, user_id=10, guild_id=1 + i % 2, prompt=f"p{i}")).id for i in range(7)]
        await _add(s, user_id=11)
    async with db.transaction() as s:
        repo = JobRepo(s)
        assert [j.id for j in (await repo.history_page(10, per_page=3))[0]] == ids[::-1][:3]
        assert [j.id for j in (await repo.history_page(10, page=2, per_page=3))[0]] == [ids[0]]
        assert await repo.count_for_user(10) == 7
        assert await repo.count_for_user(10, guild_id=2) == 3
        assert [j.id for j in (await repo.history_page(10, guild_id=2))[0]] == [ids[5], ids[3], ids[1]]
        assert (await repo.last_for_user(10)).id == ids[-1]


async def test_finish_cancel_active_counts_and_stats(db: Database) -> None:
    async with db.transaction(write=True) as s:
        repo = JobRepo(s)
        a, b, c = (await _add(s)).id, (await _add(s)).id, (await _add(s)).id
        await _add(s, user_id=11)
        await _add(s, user_id=12, guild_id=None)
        assert await repo.finish(a, "done", gpu_seconds=2.5, model_hash="0123456789")
        assert not await repo.finish(a, "failed")  # finished jobs stay finished
        assert await repo.cancel(c)
        assert not await repo.cancel(c)
        # (this user here, this guild, everyone): queued + running only
        assert await repo.active_counts(1, 10) == (1, 2, 3)
        assert await repo.active_counts(None, 12) == (1, 1, 3)
        assert [j.id for j in await repo.active_for_user(10)] == [b]
        assert [(j.id, j.state) for j in [await repo.get(i) for i in (a, b, c)]] == [
            (a, "done"),
            (b, "queued"),
            (c, "cancelled"),
        ]
        with pytest.raises(ValueError, match="finishes as one of"):
            await repo.finish(b, "queued")
        stats = await repo.stats(guild_id=1)
        assert (stats["jobs"], stats["jobs_done"], stats["images"], stats["gpu_seconds"]) == (4, 1, 2, 2.5)


async def test_mark_posted_is_exactly_once_and_unposted_lists_finished(db: Database) -> None:
    async with db.transaction(write=True) as s:
        repo = JobRepo(s)
        done, failed, queued = (await _add(s)).id, (await _add(s)).id, (await _add(s)).id
        await repo.finish(done, "done")
        await repo.finish(failed, "failed", error="out of memory: try a smaller size")
        await repo.set_status_message(queued, 5, 9001)
    async with db.transaction() as s:
        assert [j.id for j in await JobRepo(s).unposted()] == [done, failed]
        assert sorted(await JobRepo(s).finished_since(utcnow() - timedelta(minutes=1))) == [done, failed]
        assert await JobRepo(s).finished_since(utcnow() + timedelta(minutes=1)) == []
        assert [j.id for j in await JobRepo(s).live_with_status()] == [queued]
    async with db.transaction(write=True) as s:
        assert await JobRepo(s).mark_posted(done)
    async with db.transaction(write=True) as s:
        assert not await JobRepo(s).mark_posted(done)
        assert [j.id for j in await JobRepo(s).unposted()] == [failed]
        assert queued not in [j.id for j in await JobRepo(s).unposted()]
        assert await JobRepo(s).finished_since(utcnow() - timedelta(minutes=1)) == [failed]


async def test_parent_and_kind(db: Database) -> None:
    async with db.transaction(write=True) as s:
        repo = Repositories(s).jobs
        parent = await _add(s)
        child = await repo.add(
            user_id=11, channel_id=5, guild_id=1, request=_request(seed=5), kind="reroll", parent_id=parent.id
        )
        assert (child.parent_id, child.kind) == (parent.id, "reroll")
        with pytest.raises(ValueError, match="job kind"):
            await repo.add(user_id=11, channel_id=5, guild_id=1, request=_request(), kind="bogus")


async def test_history_page_returns_items_and_total_in_one_go(db: Database) -> None:
    async with db.transaction(write=True) as s:
        ids = [(await _add(s, user_id=10, guild_id=1 + i % 2)).id for i in range(25)]
        await _add(s, user_id=11)
    async with db.transaction() as s:
        repo = JobRepo(s)
        items, total = await repo.history_page(10, page=0, per_page=10)
        assert ([j.id for j in items], total) == (ids[::-1][:10], 25)
        items, total = await repo.history_page(10, page=2, per_page=10)
        assert ([j.id for j in items], total) == (ids[::-1][20:], 25)
        assert await repo.history_page(10, page=3, per_page=10) == ([], 25)
        assert await repo.history_page(12) == ([], 0)
        items, total = await repo.history_page(10, per_page=5, guild_id=2)
        assert ([j.id for j in items], total) == ([ids[23], ids[21], ids[19], ids[17], ids[15]], 12)
        with pytest.raises(ValueError, match="per_page"):
            await repo.history_page(10, per_page=0)


async def test_input_images_are_stored_once_per_content(db: Database) -> None:
    """Rerolls and repeated uploads share one stored source; concurrent submits of one picture too."""
    from sqlalchemy import func, select

    from core.storage.models import SourceImage

    photo, other, mask = b"\xff\xd8jpeg-bytes", b"\x89PNG-other", b"\x89PNG-mask"

    async def add(init: bytes, mask_image: bytes | None = None) -> int:
        async with db.transaction(write=True) as s:
            request = _request(mode=Mode.INPAINT if mask_image else Mode.IMG2IMG, init_image=init)
            job = await JobRepo(s).add(
                user_id=10, channel_id=5, guild_id=1, request=request.replace(mask_image=mask_image)
            )
            return job.id

    ids = await asyncio.gather(*(add(photo) for _ in range(10)))
    ids += [await add(other, mask), await add(photo, mask)]
    async with db.transaction() as s:
        repo = JobRepo(s)
        rows = (await s.execute(select(SourceImage.sha256, SourceImage.size_bytes))).all()
        assert sorted(size for _, size in rows) == sorted(map(len, (photo, other, mask)))
        assert await s.scalar(select(func.sum(func.length(SourceImage.data)))) == len(photo + other + mask)
        for job_id, (init, m) in zip(ids[-3:], [(photo, None), (other, mask), (photo, mask)], strict=True):
            request = await repo.request(await repo.get(job_id))
            assert (request.init_image, request.mask_image) == (init, m)


async def test_sources_are_pruned_once_no_job_still_needs_them(db: Database) -> None:
    from sqlalchemy import update

    from core.storage.models import Job, SourceImage

    old = utcnow() - timedelta(days=40)
    async with db.transaction(write=True) as s:
        repo = JobRepo(s)
        jobs = {}
        for name in ("expired", "queued", "kept_result", "recent"):
            jobs[name] = await _add(s, mode=Mode.IMG2IMG, init_image=name.encode())
        await repo.add_images(jobs["kept_result"].id, [GeneratedImage(b"png", 1, 0, "i")])
        for name in ("expired", "queued", "kept_result"):
            await s.execute(update(Job).where(Job.id == jobs[name].id).values(created_at=old))
        await s.execute(update(Job).where(Job.id != jobs["queued"].id).values(state="done"))
        await s.execute(update(SourceImage).values(created_at=old))
    async with db.transaction(write=True) as s:
        assert await Repositories(s).sources.prune(utcnow() - timedelta(days=30)) == 1
    async with db.transaction() as s:
        repo = JobRepo(s)
        stored = {name: (await repo.request(job)).init_image for name, job in jobs.items()}
        assert stored == {
            "expired": None,
            "queued": b"queued",
            "kept_result": b"kept_result",
            "recent": b"recent",
        }
        assert await repo.inputs_pruned(jobs["expired"].id) and not await repo.inputs_pruned(
            jobs["recent"].id
        )


async def test_control_and_reference_images_are_stored_once_and_come_back(db: Database) -> None:
    """A guided job's images go to ``source_images`` (shared with img2img sources), its units stay in the
    JSON; the stored request equals the submitted one, images included, and the queue's claim reads them."""
    from sqlalchemy import func, select

    from core.storage.models import SourceImage
    from core.types import ControlInput, ReferenceInput

    edges, face = b"\x89PNG-edges", b"\xff\xd8face"
    request = _request(
        controls=(
            ControlInput(image=edges, module="canny", model="control_sd15_canny", weight=0.7, guidance_end=0.5),
            ControlInput(image=face, module="none", control_type="Depth"),
        ),
        references=(ReferenceInput(image=face, scale=0.6),),
    )
    async with db.transaction(write=True) as s:
        job = await JobRepo(s).add(user_id=10, channel_id=5, guild_id=1, request=request)
        job_id = job.id
    async with db.transaction() as s:
        repo = JobRepo(s)
        job = await repo.get(job_id)
        assert "image" not in job.params["controls"][0] and job.params["controls"][0]["weight"] == 0.7
        assert await repo.request(job) == request
        assert await s.scalar(select(func.count()).select_from(SourceImage)) == 2  # face once
        assert not await repo.inputs_pruned(job_id)


async def test_a_pruned_control_image_marks_the_job_as_unrepeatable(db: Database) -> None:
    from core.storage.repositories.sources import SourceRepo
    from core.types import ControlInput

    old = utcnow() - timedelta(days=40)
    request = _request(controls=(ControlInput(image=b"\x89PNG-old-map", model="x"),))
    async with db.transaction(write=True) as s:
        job = await JobRepo(s).add(user_id=10, channel_id=5, guild_id=1, request=request, created_at=old)
        job.state = "done"
        job_id = job.id
    async with db.transaction(write=True) as s:
        from core.storage.models import SourceImage

        await s.execute(SourceImage.__table__.update().values(created_at=old))
        assert await SourceRepo(s).prune(utcnow() - timedelta(days=30)) == 1
    async with db.transaction() as s:
        repo = JobRepo(s)
        assert await repo.inputs_pruned(job_id)
        assert (await repo.request(await repo.get(job_id))).controls[0].image is None
