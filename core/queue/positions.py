"""Queue positions, ETAs, retry hints and GPU-time estimates, from the stored queue, in one place.

The jobs table is the truth (every bot process sees every worker's jobs), so each answer rebuilds a
:class:`~core.queue.fair.FairScheduler` from it through the scheduler's public API — the same state
machine the worker runs — and asks it: the order and ETA of every queued job, and when a capped user,
guild or the whole queue frees a slot. Throughput is measured from the jobs finished last (re-read at
most every few seconds).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from core.cost import job_cost, standard_images
from core.queue.fair import FairScheduler
from core.queue.store import JobStore
from core.types import GenerationRequest

RATE_CACHE_S = 5.0  # how long a throughput measurement is reused
DEFAULT_SECONDS_PER_IMAGE = 2.0  # GPU seconds per standard image until the queue has measured some


class QueuePositions:
    def __init__(self, store: JobStore, *, default_weight: float = 1.0) -> None:
        self.store = store
        self.default_weight = default_weight
        self._rate: float | None = None
        self._rate_at: float | None = None

    async def throughput(self) -> float | None:
        """Measured standard images per GPU second (None until a job finished)."""
        now = asyncio.get_running_loop().time()
        if self._rate_at is None or now - self._rate_at > RATE_CACHE_S:
            self._rate = await self.store.throughput()
            self._rate_at = now if self._rate is not None else None  # nothing measured: ask again
        return self._rate

    async def scheduler(self) -> FairScheduler:
        """A scheduler holding the queue as stored: running jobs with their start, queued jobs in
        order, the guilds' weights, the measured rate, and as many workers as hold a job now."""
        active = await self.store.active()
        weights = await self.store.guild_weights()
        fair = FairScheduler(
            default_weight=self.default_weight,
            workers=len({a.worker for a in active if a.running and a.worker}),
            rate=await self.throughput(),
        )
        for gid, weight in weights.items():
            fair.set_guild(gid, weight=weight)
        now = _now()
        for a in active:
            if a.running:
                fair.add_running(a.job, a.started_at.timestamp() if a.started_at else now)
            else:
                fair.submit(a.job)
        return fair

    async def positions(self) -> dict[int, tuple[int, float | None]]:
        """Job id -> (position, ETA in seconds) for every queued (1 = next) and running (0) job."""
        return (await self.scheduler()).positions(_now())

    async def retry_hint(self, limit: str, guild_id: int | None, user_id: int) -> float | None:
        """Seconds until one of the jobs counted by ``limit`` ("user" | "guild" | "global") ends."""
        return (await self.scheduler()).retry_hint(limit, guild_id, user_id, now=_now())

    async def queued(self) -> int:
        """Jobs waiting, in every guild."""
        return len(await self.scheduler())

    async def estimate_seconds(self, request: GenerationRequest) -> float:
        """The GPU seconds ``request`` should take (what the quota reserves until it is measured)."""
        units = standard_images(job_cost(request))
        rate = await self.throughput()
        return round(units / rate if rate else units * DEFAULT_SECONDS_PER_IMAGE, 3)


def _now() -> float:
    return datetime.now(UTC).timestamp()
