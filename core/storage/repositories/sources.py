"""Source and mask images of img2img / inpaint jobs: stored once per content, pruned with the results.

A source is addressed by the SHA-256 of its bytes, so a reroll, a variation or the same upload again
(by anyone) points at the row that is already there instead of storing the picture again. Its bytes go
with the results' retention: once no job that uses it is still queued or running, was made within the
retention, or still has its result images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.storage.models import Job, JobGuideImage, JobImage, JobInput, SourceImage, utcnow
from core.storage.repositories._sql import insert

ACTIVE_STATES = ("queued", "running")


class SourceRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def put(self, data: bytes) -> int:
        """The id of the source with these bytes: stored now, found, or stored again after a prune."""
        digest = hashlib.sha256(data).hexdigest()
        now = utcnow()
        await self.session.execute(
            insert(self.session, SourceImage)
            .values(sha256=digest, data=data, size_bytes=len(data), created_at=now)
            .on_conflict_do_nothing(index_elements=["sha256"])
        )
        source_id, pruned = (
            await self.session.execute(
                select(SourceImage.id, SourceImage.data.is_(None)).where(SourceImage.sha256 == digest)
            )
        ).one()
        if pruned:
            await self.session.execute(
                update(SourceImage)
                .where(SourceImage.id == source_id)
                .values(data=data, pruned_at=None, created_at=now)
                .execution_options(synchronize_session=False)
            )
        return source_id

    async def data(self, ids: Iterable[int | None]) -> dict[int, bytes | None]:
        """Source id -> its bytes (None once pruned)."""
        wanted = {i for i in ids if i is not None}
        if not wanted:
            return {}
        rows = await self.session.execute(
            select(SourceImage.id, SourceImage.data).where(SourceImage.id.in_(wanted))
        )
        return {source_id: data for source_id, data in rows}

    async def prune(self, older_than: datetime, *, now: datetime | None = None) -> int:
        """Drop the bytes of sources stored before ``older_than`` that no job still needs: queued or
        running, created since ``older_than``, or with result images not yet pruned. Returns how many."""
        uses = or_(JobInput.init_image_id == SourceImage.id, JobInput.mask_image_id == SourceImage.id)
        unpruned_result = exists().where(JobImage.job_id == Job.id, JobImage.png.is_not(None))
        still = or_(Job.state.in_(ACTIVE_STATES), Job.created_at >= older_than, unpruned_result)
        needed = or_(
            select(JobInput.job_id).join(Job, Job.id == JobInput.job_id).where(uses, still).exists(),
            select(JobGuideImage.job_id)  # control and reference images, likewise
            .join(Job, Job.id == JobGuideImage.job_id)
            .where(JobGuideImage.source_image_id == SourceImage.id, still)
            .exists(),
        )
        result = await self.session.execute(
            update(SourceImage)
            .where(and_(SourceImage.data.is_not(None), SourceImage.created_at < older_than), ~needed)
            .values(data=None, pruned_at=now or utcnow())
            .execution_options(synchronize_session=False)
        )
        return result.rowcount
