"""Repositories: typed queries over one :class:`AsyncSession`. They flush, they never commit.

The service layer owns transactions::

    async with db.transaction(write=True) as session:
        repos = Repositories(session)
        entries = await repos.quotas.reserve(guild_id, user_id, {"images": 2}, allowances)
        job = await repos.jobs.add(user_id=..., channel_id=..., guild_id=..., request=request)
        await repos.quotas.attach(entries, job.id)

Read-check-write operations (``QuotaRepo.reserve``, ``JobRepo.mark_posted``) are written as
compare-and-set statements or under a row lock, so they stay correct with several processes; on SQLite
run them in ``Database.write_session()`` (``BEGIN IMMEDIATE``).

One module per table group: :mod:`.guilds`, :mod:`.presets`, :mod:`.jobs`, :mod:`.sources` (the
source images of img2img jobs), :mod:`.quotas`, :mod:`.audit`. The queue's claims and leases are :class:`core.queue.store.JobStore`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from core.storage.repositories.audit import AuditRepo
from core.storage.repositories.guilds import GUILD_LIMIT_FIELDS, MODERATION_FIELDS, GuildRepo, moderation_of
from core.storage.repositories.jobs import JobRepo
from core.storage.repositories.presets import MAX_PRESETS_PER_OWNER, PresetLimitReached, PresetRepo
from core.storage.repositories.quotas import (
    QUOTA_PERIODS,
    QUOTA_UNITS,
    Allowance,
    QuotaExceeded,
    QuotaRepo,
    QuotaUsage,
    quota_window,
)
from core.storage.repositories.sources import SourceRepo


class Repositories:
    """All repositories over one session: ``repos = Repositories(session)``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.guilds = GuildRepo(session)
        self.presets = PresetRepo(session)
        self.jobs = JobRepo(session)
        self.quotas = QuotaRepo(session)
        self.audit = AuditRepo(session)
        self.sources = SourceRepo(session)


__all__ = [
    "GUILD_LIMIT_FIELDS",
    "MAX_PRESETS_PER_OWNER",
    "MODERATION_FIELDS",
    "QUOTA_PERIODS",
    "QUOTA_UNITS",
    "Allowance",
    "AuditRepo",
    "GuildRepo",
    "JobRepo",
    "PresetLimitReached",
    "PresetRepo",
    "QuotaExceeded",
    "QuotaRepo",
    "QuotaUsage",
    "Repositories",
    "SourceRepo",
    "moderation_of",
    "quota_window",
]
