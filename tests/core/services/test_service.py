"""ChantService on SQLite with the fake engine: submit → events → images, limits, quotas, cancel."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from core.services import (
    ImagineOptions,
    JobCancelled,
    JobDone,
    JobFailed,
    JobProgress,
    JobQueued,
    JobStarted,
    UserError,
)
from tests.core.services.conftest import actor, wait_for


async def test_submit_runs_the_job_and_emits_done_with_a_png(harness) -> None:
    service = await harness.open()
    events = service.events()
    receipt = await service.submit_imagine(actor(), ImagineOptions(prompt="a cat", steps=6, seed=42))
    assert receipt.position == 1
    done = await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == receipt.job_id)
    assert done.job.state == "done" and done.job.seeds == (42,)
    png = done.images[0].png
    assert png.startswith(b"\x89PNG")
    info = Image.open(io.BytesIO(png)).info["parameters"]
    assert "a cat" in info and "Seed: 42" in info and "Steps: 6" in info
    # the stored images are the same
    assert (await service.job_images(receipt.job_id))[0].png == png


async def test_event_sequence_queued_started_progress_done(harness) -> None:
    service = await harness.open()
    events = service.events()
    receipt = await service.submit_imagine(actor(), ImagineOptions(prompt="x", steps=10))
    seen = []
    async for event in events:
        if getattr(event, "job_id", None) == receipt.job_id or (
            hasattr(event, "job") and event.job.id == receipt.job_id
        ):
            seen.append(type(event))
        if isinstance(event, JobDone):
            break
    assert seen[0] is JobQueued and JobStarted in seen and JobProgress in seen and seen[-1] is JobDone
    assert seen.index(JobStarted) < seen.index(JobProgress)


async def test_limits_are_refused_with_the_limit_named(harness) -> None:
    service = await harness.open(start=False)
    a = actor()
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="x", steps=51))
    assert err.value.code == "limit.steps" and "50" in str(err.value)
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="x", width=2048, height=2048))
    assert err.value.code == "limit.pixels"
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="x", count=5))
    assert err.value.code == "limit.images"
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="x", sampler="Nope"))
    assert err.value.code == "sampler"
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="   "))
    assert err.value.code == "prompt"


async def test_admin_lowers_a_limit_and_it_applies(harness) -> None:
    service = await harness.open(start=False)
    admin = actor(user=1, manage_guild=True)
    await service.admin_set_limit(admin, "max_steps", 10)
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(), ImagineOptions(prompt="x", steps=11))
    assert err.value.code == "limit.steps" and "10" in str(err.value)
    with pytest.raises(UserError) as err:
        await service.admin_set_limit(admin, "max_steps", 500)  # over the operator's maximum
    assert err.value.code == "invalid"
    with pytest.raises(UserError) as err:
        await service.admin_set_limit(actor(user=2), "max_steps", 5)
    assert err.value.code == "permission"


async def test_banned_words_are_whole_words_case_insensitive_on_the_parsed_prompt(harness) -> None:
    service = await harness.open(start=False)
    admin = actor(user=1, manage_guild=True)
    assert await service.admin_banned_words(admin, add=["Gore"]) == ["Gore"]
    for prompt in ("a GORE scene", "(gore:1.3)", "[cat:gore:0.5]", "[dog|gore]", "g\\ore", "(GO\\RE)"):
        with pytest.raises(UserError) as err:
            await service.submit_imagine(actor(), ImagineOptions(prompt=prompt))
        assert err.value.code == "banned_word", prompt
    await service.submit_imagine(actor(), ImagineOptions(prompt="gorey gorest"))  # not whole words
    # an edit that never happens at these steps never reaches the model
    await service.submit_imagine(actor(user=12), ImagineOptions(prompt="[cat:gore:1.0]"))
    with pytest.raises(UserError):
        await service.submit_imagine(actor(user=11), ImagineOptions(prompt="ok", negative="gore"))


async def test_per_user_queue_cap_names_the_limit(harness) -> None:
    service = await harness.open(start=False)  # no worker running: jobs stay queued
    a = actor()
    for _ in range(3):
        await service.submit_imagine(a, ImagineOptions(prompt="x"))
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="x"))
    assert err.value.code == "queue.user_limit" and "3" in str(err.value)
    # another user is not blocked; a user in another guild neither
    await service.submit_imagine(actor(user=11), ImagineOptions(prompt="x"))
    await service.submit_imagine(actor(guild=2), ImagineOptions(prompt="x"))
    # fair order: guild 1 (user 10), guild 2, guild 1 (user 11 before user 10's 2nd), ...
    assert [p for _, p in await service.my_queue(actor(user=11))] == [3]
    assert [p for _, p in await service.my_queue(a)] == [1, 2, 4, 5]


async def test_guild_and_global_queue_caps_count_the_stored_queue(tmp_path) -> None:
    from tests.core.services.conftest import Harness

    h = Harness(tmp_path, max_queued_per_user=5, max_queued_per_guild=4, max_queued_global=6)
    service = await h.open(start=False)
    for user in (10, 10, 11, 11):
        await service.submit_imagine(actor(user=user), ImagineOptions(prompt="x"))
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(user=12), ImagineOptions(prompt="x"))
    assert err.value.code == "queue.guild_limit" and "4" in str(err.value)
    for _ in range(2):
        await service.submit_imagine(actor(user=20, guild=2), ImagineOptions(prompt="x"))
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(user=30, guild=3), ImagineOptions(prompt="x"))
    assert err.value.code == "queue.global_limit" and "6" in str(err.value)
    assert err.value.retry_after_s is None and "when one finishes" in str(err.value)  # nothing measured
    await service.cancel(actor(user=20, guild=2), 5)  # a cancelled job frees its slot
    await service.submit_imagine(actor(user=30, guild=3), ImagineOptions(prompt="x"))
    await h.close()


async def test_quota_exhausted_names_the_reset_time_and_failure_refunds(harness) -> None:
    service = await harness.open()
    admin = actor(user=1, manage_guild=True)
    await service.admin_set_quota(
        admin, scope="guild", target_id=None, images=2, gpu_seconds=None, period="day"
    )
    events = service.events()
    a = actor()
    r1 = await service.submit_imagine(a, ImagineOptions(prompt="FAIL please", count=2))
    failed = await wait_for(events, lambda e: isinstance(e, JobFailed) and e.job.id == r1.job_id)
    assert "fail" in failed.reason
    # the failed job was refunded: 2 more images fit
    r2 = await service.submit_imagine(a, ImagineOptions(prompt="ok", count=2))
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r2.job_id)
    status = await service.quota_status(a)
    assert (status.used_images, status.limit_images, status.period) == (2, 2, "day")
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="more"))
    assert err.value.code == "quota"
    assert status.resets_at is not None and f"{status.resets_at:%H:%M}" in str(err.value)
    assert 0 < err.value.retry_after_s <= 86400
    # a per-user override wins over the guild default
    await service.admin_set_quota(
        admin, scope="user", target_id=a.user_id, images=5, gpu_seconds=None, period="day"
    )
    await service.submit_imagine(a, ImagineOptions(prompt="more"))


async def test_cancel_queued_and_running(harness) -> None:
    harness.engine.step_delay_s = 0.1
    service = await harness.open()
    events = service.events()
    a = actor()
    running = await service.submit_imagine(a, ImagineOptions(prompt="slow", steps=50))
    queued = await service.submit_imagine(a, ImagineOptions(prompt="next", steps=5))
    await wait_for(events, lambda e: isinstance(e, JobProgress) and e.job_id == running.job_id)
    with pytest.raises(UserError) as err:
        await service.cancel(actor(user=99), running.job_id)
    assert err.value.code == "permission"
    view = await service.cancel(a, running.job_id)
    assert view.state == "cancelled"
    await wait_for(events, lambda e: isinstance(e, JobCancelled) and e.job.id == running.job_id)
    # the engine stopped between steps, not after all 50, and the next job ran
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == queued.job_id, 30)
    assert harness.engine.steps_run[0] < 50
    assert (await service.show(a, running.job_id)).state == "cancelled"
    # a queued job cancelled by an admin
    harness.engine.step_delay_s = 0.05
    r3 = await service.submit_imagine(a, ImagineOptions(prompt="a", steps=50))
    r4 = await service.submit_imagine(a, ImagineOptions(prompt="b", steps=5))
    assert (await service.cancel(actor(user=1, manage_guild=True), r4.job_id)).state == "cancelled"
    with pytest.raises(UserError) as err:
        await service.cancel(a, r4.job_id)
    assert err.value.code == "not_cancellable"
    await service.cancel(a, r3.job_id)


async def test_reroll_by_result_message_gets_a_new_seed_and_variation_keeps_it(harness) -> None:
    service = await harness.open()
    events = service.events()
    owner = actor()
    r = await service.submit_imagine(owner, ImagineOptions(prompt="a fox", seed=7, steps=4))
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
    await service.record_result_messages(r.job_id, [5001])
    assert (await service.job_for_message(5001)).id == r.job_id
    other = actor(user=20)
    rr = await service.reroll(other, 5001)
    done = await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == rr.job_id)
    assert done.job.kind == "reroll" and done.job.parent_id == r.job_id and done.job.user_id == 20
    assert done.job.request.prompt == "a fox" and done.job.seeds != (7,)
    var = await service.variation(owner, 5001)
    done = await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == var.job_id)
    assert done.job.seeds == (7,) and 0 < done.job.request.subseed_strength < 0.5
    with pytest.raises(UserError) as err:
        await service.reroll(owner, 999)
    assert err.value.code == "not_found"
    # owner-only policy
    await service.admin_set_reroll_policy(actor(user=1, manage_guild=True), "owner")
    with pytest.raises(UserError) as err:
        await service.reroll(other, 5001)
    assert err.value.code == "permission"


async def test_presets_merge_explicit_options_win(harness) -> None:
    service = await harness.open(start=False)
    a = actor()
    await service.save_preset(
        a, "Painterly", ImagineOptions(prompt="oil painting", steps=12, cfg=5.0, negative="blurry")
    )
    r = await service.submit_imagine(a, ImagineOptions(prompt="a boat", preset="painterly", steps=8))
    view = await service.show(a, r.job_id)
    assert view.request.prompt == "a boat, oil painting"
    assert (view.request.steps, view.request.cfg_scale, view.request.negative_prompt) == (8, 5.0, "blurry")
    assert await service.preset_names(a, "pa") == ["Painterly"]
    assert [p.name for p in await service.list_presets(a)] == ["Painterly"]
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="x", preset="nope"))
    assert err.value.code == "not_found"
    with pytest.raises(UserError) as err:
        await service.save_preset(a, "g", ImagineOptions(prompt="x"), guild=True)
    assert err.value.code == "permission"
    await service.save_preset(a, "last", None, from_last_job=True)
    await service.delete_preset(a, "PAINTERLY")
    assert await service.preset_names(a, "") == ["last"]


async def test_history_and_show_visibility(harness) -> None:
    service = await harness.open(start=False)
    a = actor()
    ids = [(await service.submit_imagine(a, ImagineOptions(prompt=f"p{i}"))).job_id for i in range(3)]
    items, total = await service.history(a, page=0, per_page=2)
    assert total == 3 and [v.id for v in items] == ids[::-1][:2]
    with pytest.raises(UserError) as err:
        await service.show(actor(user=5, guild=9), ids[0])
    assert err.value.code == "not_found"


async def test_admin_is_manage_guild_or_admin_role_and_is_audited(harness) -> None:
    service = await harness.open(start=False)
    boss = actor(user=1, manage_guild=True)
    helper = actor(user=2, role_ids=(77,))
    assert not await service.is_admin(helper)
    await service.admin_add_admin_role(boss, 77)
    assert await service.is_admin(helper)
    assert not await service.is_admin(actor(user=2, guild=None, role_ids=(77,)))
    await service.admin_set_channels(helper, [100])
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(channel=555), ImagineOptions(prompt="x"))
    assert err.value.code == "channel"
    stats = await service.admin_stats(boss)
    assert stats["jobs"] == 0
    from sqlalchemy import select

    from core.storage.models import AuditEntry

    async with harness.db.session() as s:
        actions = list(await s.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))
    assert actions == ["admin_role.add", "channels.set"]


async def test_out_of_memory_fails_that_job_and_the_worker_goes_on(harness) -> None:
    service = await harness.open()
    events = service.events()
    bad = await service.submit_imagine(actor(), ImagineOptions(prompt="OOM now"))
    good = await service.submit_imagine(actor(), ImagineOptions(prompt="fine"))
    failed = await wait_for(events, lambda e: isinstance(e, JobFailed) and e.job.id == bad.job_id)
    assert "smaller size" in failed.reason
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == good.job_id)


async def test_unknown_engine_error_is_reported_with_the_job_id(harness) -> None:
    class Broken:
        def model_names(self):
            return ["m"]

        def sampler_names(self):
            return ["Euler a"]

        def batch_capacity(self, request):
            return 1

        def generate_batch(self, requests, **kw):
            raise RuntimeError("boom")

        def close(self):
            pass

    service = await harness.open(engine=Broken())
    events = service.events()
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="x"))
    failed = await wait_for(events, lambda e: isinstance(e, JobFailed))
    assert f"job {r.job_id}" in failed.reason and "boom" not in failed.reason


async def test_dm_jobs_run_and_dm_refusal_is_configurable(harness) -> None:
    service = await harness.open()
    events = service.events()
    r = await service.submit_imagine(actor(guild=None), ImagineOptions(prompt="dm cat"))
    done = await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
    assert done.job.guild_id is None
    await harness.close()
    import dataclasses

    harness.settings = dataclasses.replace(
        harness.settings, discord=dataclasses.replace(harness.settings.discord, dm_mode="refuse")
    )
    service = await harness.open()
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(guild=None), ImagineOptions(prompt="dm cat"))
    assert err.value.code == "dm"


async def test_two_subscribers_both_get_every_event(harness) -> None:
    service = await harness.open()
    e1, e2 = service.events(), service.events()
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="x", steps=3))
    d1, d2 = await asyncio.gather(
        wait_for(e1, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id),
        wait_for(e2, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id),
    )
    assert d1.images == d2.images


async def test_reroll_of_an_img2img_result_keeps_its_input_image(harness) -> None:
    from core.queue.store import JobStore
    from core.storage.repositories import Repositories
    from core.types import GenerationRequest, Mode

    service = await harness.open(start=False)
    source = GenerationRequest("a cat", mode=Mode.IMG2IMG, init_image=b"\x89PNG-fake", seed=5)
    async with harness.db.transaction(write=True) as s:
        repos = Repositories(s)
        job = await repos.jobs.add(user_id=10, channel_id=100, guild_id=1, request=source)
        await repos.jobs.finish(job.id, "done")
        await repos.jobs.add_result_messages(job.id, 100, [7001])
    receipt = await service.reroll(actor(), 7001)
    store = JobStore(harness.db, worker_id="t", lease_seconds=5)
    (claimed,) = await store.claim([receipt.job_id])
    assert claimed.request.mode == Mode.IMG2IMG and claimed.request.init_image == b"\x89PNG-fake"
    assert claimed.request.seed != 5


async def test_usage_is_reserved_then_committed_with_measured_gpu_seconds_or_refunded(harness) -> None:
    from sqlalchemy import select

    from core.storage.models import UsageEntry

    harness.engine.step_delay_s = 0.01
    service = await harness.open(start=False)
    events = service.events()
    ok = await service.submit_imagine(actor(), ImagineOptions(prompt="ok", steps=10, count=2))
    bad = await service.submit_imagine(actor(), ImagineOptions(prompt="FAIL", steps=10))
    async with harness.db.session() as s:
        rows = (await s.execute(select(UsageEntry.job_id, UsageEntry.unit, UsageEntry.state))).all()
    assert {(j, u, st) for j, u, st in rows} == {
        (ok.job_id, "images", "reserved"),
        (ok.job_id, "gpu_seconds", "reserved"),
        (bad.job_id, "images", "reserved"),
        (bad.job_id, "gpu_seconds", "reserved"),
    }
    await service.start()
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == ok.job_id)
    await wait_for(events, lambda e: isinstance(e, JobFailed) and e.job.id == bad.job_id)
    async with harness.db.session() as s:
        rows = (
            await s.execute(select(UsageEntry.job_id, UsageEntry.unit, UsageEntry.state, UsageEntry.amount))
        ).all()
    by = {(j, u): (st, amount) for j, u, st, amount in rows}
    assert by[(ok.job_id, "images")] == ("committed", 2.0)
    state, seconds = by[(ok.job_id, "gpu_seconds")]
    assert state == "committed" and 0.05 < seconds < 5.0  # measured: 10 steps of 10 ms, not the estimate
    assert by[(bad.job_id, "images")][0] == by[(bad.job_id, "gpu_seconds")][0] == "refunded"


async def test_a_bot_process_without_a_worker_learns_results_by_polling(harness) -> None:
    """SQLite has no NOTIFY: a service without its own worker polls the jobs table."""
    from core.bootstrap import build_worker

    service = await harness.open(worker=False, start=False)
    events = service.events()
    await service.start()
    other = build_worker(harness.settings, harness.db, harness.engine)  # "another process": not wired in
    other.start()
    try:
        r = await service.submit_imagine(actor(), ImagineOptions(prompt="x", steps=2))
        done = await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == r.job_id)
        assert done.images and done.images[0].png.startswith(b"\x89PNG")
    finally:
        await other.stop()


async def test_queue_limit_gives_a_retry_hint_from_measured_throughput(harness) -> None:
    harness.engine.step_delay_s = 0.02
    service = await harness.open()
    events = service.events()
    a = actor()
    first = await service.submit_imagine(a, ImagineOptions(prompt="warm up", steps=5))
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == first.job_id)
    for _ in range(3):
        await service.submit_imagine(a, ImagineOptions(prompt="x", steps=20))
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="x", steps=20))
    assert err.value.code == "queue.user_limit"
    assert err.value.retry_after_s is not None and 0 < err.value.retry_after_s < 30
    assert "Try again in about" in str(err.value)


async def test_cfg_rescale_is_a_per_job_option_kept_by_presets_and_bounded(harness) -> None:
    service = await harness.open(start=False)
    a = actor()
    await service.save_preset(a, "vpred", ImagineOptions(prompt="masterpiece", cfg_rescale=0.7))
    r = await service.submit_imagine(a, ImagineOptions(prompt="a fox", preset="vpred"))
    assert (await service.show(a, r.job_id)).request.cfg_rescale == 0.7
    plain = await service.submit_imagine(a, ImagineOptions(prompt="a fox"))
    assert (await service.show(a, plain.job_id)).request.cfg_rescale == 0.0  # off unless asked for
    with pytest.raises(UserError) as err:
        await service.submit_imagine(a, ImagineOptions(prompt="x", cfg_rescale=1.5))
    assert err.value.code == "cfg_rescale" and "between 0 and 1" in str(err.value)
