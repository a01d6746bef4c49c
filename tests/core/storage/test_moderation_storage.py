"""What issue 17 stores, on SQLite and PostgreSQL: a guild's moderation policy, each image's score and
decision, a job's age-restricted flag and prompt templates, the control job kinds."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from core.moderation import AgeRestricted, GuildPolicy, Policy
from core.storage.db import Database
from core.storage.models import JOB_KINDS
from core.storage.repositories import Repositories, moderation_of
from core.types import GeneratedImage, GenerationRequest

DEFAULT = GuildPolicy(Policy.SPOILER, 0.9, AgeRestricted.SAME)


async def test_guild_policy_fields_fall_back_to_the_operator_one_by_one(db: Database) -> None:
    async with db.transaction(write=True) as s:
        guilds = Repositories(s).guilds
        assert moderation_of(None, DEFAULT) == DEFAULT
        assert moderation_of(await guilds.get_or_create(1), DEFAULT) == DEFAULT
        before = await guilds.update(1, moderation_policy="block", moderation_threshold=0.4)
        assert before == {"moderation_policy": None, "moderation_threshold": None}
        assert moderation_of(await guilds.get(1), DEFAULT) == GuildPolicy(
            Policy.BLOCK, 0.4, AgeRestricted.SAME
        )
        for field, value, words in (
            ("moderation_policy", "nuke", "off, spoiler, block"),
            ("moderation_threshold", 0.0, "between 0.01 and 1"),
            ("moderation_threshold", "high", "a number"),
            ("age_restricted_policy", "maybe", "allow, spoiler, same"),
        ):
            with pytest.raises(ValueError, match=words):
                await guilds.update(1, **{field: value})
        await guilds.update(1, moderation_policy=None)  # back to the operator's
        assert moderation_of(await guilds.get(1), DEFAULT).policy == Policy.SPOILER


async def test_the_database_refuses_a_policy_the_code_does_not_know(db: Database) -> None:
    async with db.transaction(write=True) as s:
        await Repositories(s).guilds.get_or_create(2)
    with pytest.raises(IntegrityError):
        async with db.transaction(write=True) as s:
            await s.execute(text("UPDATE guilds SET moderation_policy = 'nuke' WHERE id = 2"))


async def test_scores_decisions_flags_templates_and_kinds_round_trip_and_count(db: Database) -> None:
    templates = {
        "prompt": "a {red|blue} __animal__",
        "negative_prompt": "{ugly|bad}",
        "wildcards": ["animal"],
    }
    async with db.transaction(write=True) as s:
        jobs = Repositories(s).jobs
        job = await jobs.add(
            user_id=1, channel_id=5, guild_id=7, request=GenerationRequest(prompt="a red cat", count=3),
            age_restricted=True, prompt_templates=templates,
        )  # fmt: skip
        decisions = [{"action": "post"}, {"action": "block", "reason": "x"}, {"action": "spoiler"}]
        images = [GeneratedImage(b"p", 1, 2, "i", score) for score in (0.1, 0.95, None)]
        await jobs.add_images(job.id, images, decisions)
        with pytest.raises(ValueError, match="2 moderation decisions for 3 images"):
            await jobs.add_images(job.id, images, decisions[:2])
        for kind in ("vary", "remix", "zoom", "pan"):
            await jobs.add(user_id=1, channel_id=5, guild_id=7, request=GenerationRequest(prompt="x"), kind=kind,
                           parent_id=job.id)  # fmt: skip
        other = await jobs.add(user_id=1, channel_id=5, guild_id=8, request=GenerationRequest(prompt="y"))
        await jobs.add_images(other.id, [GeneratedImage(b"p", 1, 2, "i", 0.99)], [{"action": "block"}])
    async with db.transaction() as s:
        jobs = Repositories(s).jobs
        stored = await jobs.get(job.id)
        assert stored.age_restricted is True and stored.prompt_templates == templates
        assert await jobs.moderation(job.id) == list(zip((0.1, 0.95, None), decisions, strict=True))
        assert await jobs.moderation_counts(guild_id=7) == {
            "post": 1,
            "spoiler": 1,
            "block": 1,
            "unchecked": 1,
        }
        assert await jobs.moderation_counts() == {"post": 1, "spoiler": 1, "block": 2, "unchecked": 1}
        assert {j.kind for j in (await jobs.history_page(1, per_page=10))[0]} >= {
            "vary",
            "remix",
            "zoom",
            "pan",
        }
    assert set(JOB_KINDS) >= {"vary", "remix", "zoom", "pan"}
