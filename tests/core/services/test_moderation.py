"""Image moderation through the real service and worker: the classifier's score (the stub of
core.testing.fake_classifier: ``NSFW`` in the prompt scores 0.97, ``UNCHECKED`` is not checked) stored
with each image, the decision for the place the job was asked in, charging, re-posts and /admin."""

from __future__ import annotations

import dataclasses

import pytest

from core.config import ModerationSettings
from core.services import ImagineOptions, JobDone, UserError
from core.testing.fake_classifier import CLEAN, FLAGGED, FakeClassifier
from tests.core.services.conftest import actor, wait_for

ADMIN = dict(manage_guild=True)


async def run(service, who, prompt: str, **options) -> JobDone:
    events = service.events()
    receipt = await service.submit_imagine(who, ImagineOptions(prompt=prompt, steps=2, **options))
    return await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == receipt.job_id)


async def test_no_classifier_and_no_policy_posts_every_image_unscored(harness) -> None:
    service = await harness.open()
    done = await run(service, actor(), "a cat NSFW", count=2)
    assert [m.action for m in done.job.moderation] == ["post", "post"]
    assert [m.score for m in done.job.moderation] == [None, None]
    assert all(i.score is None for i in done.images)


async def test_the_worker_scores_a_batch_in_one_call_and_spoiler_flags_over_the_threshold(harness) -> None:
    scorer = FakeClassifier()
    service = await harness.open(scorer=scorer)
    view = await service.admin_moderation(actor(**ADMIN), policy="spoiler", threshold=0.5)
    assert (view.policy, view.threshold, view.age_restricted) == ("spoiler", 0.5, "allow")
    flagged = await run(service, actor(), "a cat NSFW", count=3)
    assert scorer.calls[-1] == 3  # the job's three images scored together, in the worker thread
    assert [m.action for m in flagged.job.moderation] == ["spoiler"] * 3
    assert [i.score for i in flagged.images] == [FLAGGED] * 3
    m = flagged.job.moderation[0]
    assert m.score == FLAGGED and m.threshold == 0.5 and m.rule == "guild" and m.charged
    assert m.policy == {"policy": "spoiler", "threshold": 0.5, "age_restricted": "allow"}
    clean = await run(service, actor(), "a cat")
    assert clean.job.moderation[0].action == "post" and clean.job.moderation[0].score == CLEAN


async def test_block_is_charged_but_an_image_that_could_not_be_checked_is_refunded(harness) -> None:
    service = await harness.open(scorer=FakeClassifier())
    admin = actor(**ADMIN)
    await service.admin_moderation(admin, policy="block")
    await service.admin_set_quota(
        admin, scope="guild", target_id=None, images=100, gpu_seconds=None, period="day"
    )
    who = actor(user=77)
    blocked = await run(service, who, "NSFW fox", count=2)
    assert [m.action for m in blocked.job.moderation] == ["block", "block"]
    assert all(m.charged for m in blocked.job.moderation)
    assert (await service.quota_status(who)).used_images == 2  # the GPU did the work: charged
    unchecked = await run(service, who, "UNCHECKED fox", count=2)
    assert [(m.action, m.charged) for m in unchecked.job.moderation] == [("block", False)] * 2
    assert "could not be checked" in unchecked.job.moderation[0].reason
    assert (await service.quota_status(who)).used_images == 2  # not the requester's doing: refunded
    stats = await service.admin_stats(admin)
    assert stats["images_blocked"] == 4 and stats["images_unchecked"] == 2


async def test_age_restricted_channels_allow_by_default_and_the_flag_is_stored(harness) -> None:
    service = await harness.open(scorer=FakeClassifier())
    await service.admin_moderation(actor(**ADMIN), policy="block")
    nsfw_channel = actor(channel=555, age_restricted=True)
    done = await run(service, nsfw_channel, "NSFW fox")
    assert done.job.age_restricted and done.job.moderation[0].action == "post"
    assert done.job.moderation[0].rule == "age-restricted channel"
    # "same": the guild policy applies there too; "spoiler": flagged images spoilered, never blocked.
    await service.admin_moderation(actor(**ADMIN), age_restricted="spoiler")
    assert (await run(service, nsfw_channel, "NSFW fox")).job.moderation[0].action == "spoiler"
    await service.admin_moderation(actor(**ADMIN), age_restricted="same")
    assert (await run(service, nsfw_channel, "NSFW fox")).job.moderation[0].action == "block"


async def test_direct_messages_follow_the_operator_setting(harness) -> None:
    harness.settings = dataclasses.replace(
        harness.settings, moderation=ModerationSettings(dm_policy="spoiler")
    )
    service = await harness.open(scorer=FakeClassifier())
    done = await run(service, actor(guild=None, channel=9), "NSFW fox")
    assert done.job.moderation[0].action == "spoiler" and done.job.moderation[0].rule == "dm"


async def test_show_reroll_vary_and_use_as_source_refuse_a_blocked_image_outside_an_allowed_channel(
    harness,
) -> None:
    service = await harness.open(scorer=FakeClassifier())
    await service.admin_moderation(actor(**ADMIN), policy="block")
    nsfw_channel = actor(channel=555, age_restricted=True)
    done = await run(service, nsfw_channel, "NSFW fox")  # posted in the age-restricted channel
    job_id = done.job.id
    await service.record_result_messages(job_id, [9001])
    normal = actor(channel=100)
    with pytest.raises(UserError) as err:
        await service.show(normal, job_id)
    assert err.value.code == "moderation" and "blocked in this channel" in str(err.value)
    for attempt in (
        service.reroll(normal, 9001),
        service.variation(normal, 9001),
        service.reroll_job(normal, job_id),
        service.vary(normal, job_id, 0, "subtle"),
        service.zoom_out(normal, job_id, 0, 2.0),
        service.pick(normal, job_id, 0),
        service.submit_imagine(normal, ImagineOptions(prompt="x", source_job=job_id)),
    ):
        with pytest.raises(UserError) as err:
            await attempt
        assert err.value.code == "moderation"
    # In an age-restricted channel the same job is shown, decided again for that place.
    shown = await service.show(nsfw_channel, job_id)
    assert shown.moderation[0].action == "post" and shown.moderation[0].score == FLAGGED
    # A reaction whose channel the bot could not tell (None): the job's own channel counts as recorded.
    assert (await service.reroll(actor(channel=555, age_restricted=None), 9001)).job_id > job_id
    # Policy off now: the stored score is decided again, so /show works everywhere.
    await service.admin_moderation(actor(**ADMIN), policy="off")
    assert (await service.show(normal, job_id)).moderation[0].action == "post"


async def test_admin_moderation_checks_its_values_and_its_caller(harness) -> None:
    service = await harness.open(start=False)
    admin = actor(**ADMIN)
    for kwargs, words in (
        ({"policy": "nuke"}, "off, spoiler, block"),
        ({"threshold": 0.0}, "between 0.01 and 1"),
        ({"age_restricted": "maybe"}, "allow, spoiler, same"),
    ):
        with pytest.raises(UserError) as err:
            await service.admin_moderation(admin, **kwargs)
        assert words in str(err.value)
    view = await service.admin_moderation(admin)  # nothing given: the settings as they apply
    assert (view.policy, view.threshold, view.classifier) == ("off", 0.8, False)
    with pytest.raises(UserError) as err:
        await service.admin_moderation(actor(user=5), policy="block")
    assert err.value.code == "permission"


async def test_admin_job_view_shows_scores_decisions_and_policy_of_the_guilds_jobs_only(harness) -> None:
    service = await harness.open(scorer=FakeClassifier())
    await service.admin_moderation(actor(**ADMIN), policy="spoiler")
    done = await run(service, actor(user=3), "NSFW fox")
    view = await service.admin_job(actor(**ADMIN), done.job.id)
    assert view.moderation[0].action == "spoiler" and view.moderation[0].score == FLAGGED
    assert view.moderation[0].policy["policy"] == "spoiler"
    with pytest.raises(UserError):
        await service.admin_job(actor(guild=2, **ADMIN), done.job.id)
