"""Job events in one process: the fan-out to subscribers (:class:`EventHub`) and the record of what
was announced (:class:`Ledger`), the only place that remembers it.

The announcer (:mod:`core.services.announcer`) and the use cases publish through the ledger, so a job is
announced started once and finished once, whichever of the in-process worker, a NOTIFY from another
process, the poller or a cancel reports it first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from core.services.types import JobCancelled, JobDone, JobEvent, JobFailed, JobQueued, JobStarted


class Subscription(AsyncIterator[JobEvent]):
    """Registered when created, so no event published after ``subscribe()`` is missed."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        hub._subs.add(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> JobEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        self._hub._subs.discard(self)
        self._queue.put_nowait(None)

    async def aclose(self) -> None:
        self.close()


class EventHub:
    """Fan-out to every subscriber. Events published while nobody listens are kept (up to
    ``backlog``) and handed to the next subscriber, so a bot that subscribes a moment after
    ``ChantService.start()`` misses no result."""

    def __init__(self, backlog: int = 10_000) -> None:
        self._subs: set[Subscription] = set()
        self._backlog: deque[JobEvent] = deque(maxlen=backlog)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        while self._backlog:
            sub._queue.put_nowait(self._backlog.popleft())
        return sub

    def publish(self, event: JobEvent) -> None:
        if not self._subs:
            self._backlog.append(event)
            return
        for sub in list(self._subs):
            sub._queue.put_nowait(event)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)


class Once:
    """Job ids seen, for "the first time only" (bounded: the oldest are forgotten past ``keep`` × 2)."""

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self._ids: set[int] = set()

    def first(self, job_id: int) -> bool:
        """True the first time ``job_id`` is seen (it is remembered from now on)."""
        if job_id in self._ids:
            return False
        self._ids.add(job_id)
        if len(self._ids) > 2 * self.keep:  # job ids grow: the smallest are the oldest
            self._ids = set(sorted(self._ids)[self.keep :])
        return True

    def forget(self, job_id: int) -> None:
        self._ids.discard(job_id)

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._ids


class Ledger:
    """What this process announced about jobs, and the way every announcement goes out.

    ``since`` splits results in two: those finished before it are the backlog the bot reads once at
    start (``unposted_results``), those after it arrive as events.
    """

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.since: datetime | None = None
        self._started = Once()
        self._ended = Once()
        self._positions: dict[int, int] = {}  # queued jobs: the position last announced

    def begin(self) -> datetime:
        """The line between backlog and events: drawn once, by whichever comes first (start, or the
        bot reading the backlog)."""
        self.since = self.since or datetime.now(UTC)
        return self.since

    def queued(self, job_id: int, position: int, eta_s: float | None) -> None:
        self._positions[job_id] = position
        self.hub.publish(JobQueued(job_id, position, eta_s))

    def moved(self, positions: dict[int, tuple[int, float | None]]) -> None:
        """Announce the queued jobs whose position changed (and forget those that left the queue)."""
        for job_id, (position, eta) in positions.items():
            if position and self._positions.get(job_id) != position:
                self.queued(job_id, position, eta)
        for job_id in [j for j in self._positions if j not in positions]:
            del self._positions[job_id]

    def started(self, job_id: int) -> bool:
        """Announce that a job started (once); False if it was announced already."""
        if not self._started.first(job_id):
            return False
        self._positions.pop(job_id, None)
        self.hub.publish(JobStarted(job_id))
        return True

    def claim_end(self, job_id: int) -> bool:
        """Reserve the job's end announcement (before any await: NOTIFY and the poller may race)."""
        return self._ended.first(job_id)

    def release_end(self, job_id: int) -> None:
        """The job had not ended after all: a later report may announce it."""
        self._ended.forget(job_id)

    def announced_end(self, job_id: int) -> bool:
        return job_id in self._ended

    def ended(self, event: JobDone | JobFailed | JobCancelled) -> None:
        """Announce a job's end (its end claimed with :meth:`claim_end`, or a cancel)."""
        self._ended.first(event.job.id)
        self._started.forget(event.job.id)
        self._positions.pop(event.job.id, None)
        self.hub.publish(event)
