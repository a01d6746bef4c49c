"""The fair scheduler: a plain state machine with no I/O (you call it; it never calls out).

It is the one model of the queue's order. The worker drives it — ``submit(job)`` for each queued row,
``front(k)`` to see whom to claim next, ``take(job_id, now)`` for each job it claimed, ``finish(job_id,
now)`` when the engine is done, ``cancel(job_id)`` for a job that left the queue elsewhere — and queue
positions and ETAs (:mod:`core.queue.positions`) rebuild one from the stored queue and read
``positions(now)`` and ``retry_hint(...)``. Time is always passed in, so tests need no clock and no
event loop.

Fairness, in two levels:

* **Across guilds**: deficit round robin in its virtual-time form (start-time fair queueing, i.e. DRR
  with an infinitely small quantum). Each guild (and the DM queue) carries a start tag; the guild
  with the smallest tag is served next, and serving a job moves that guild's tag on by
  ``cost / weight``, where cost is :mod:`core.cost`'s (UNet rows × pixels × model calls). A guild
  that sends big jobs gets fewer of them; a guild with weight 2 gets twice the service. A guild that
  was idle joins at the current virtual time, so it neither starves nor banks credit while away.
  Every decision is one heap pop and one push: O(log guilds).
* **Across users within a guild**: round robin over the users that have jobs waiting; each user's
  own jobs stay in the order they were submitted (FIFO per user).

Queue caps are not checked here: the submit transaction counts the stored jobs
(:mod:`core.services.submit`), the only count that holds across processes.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

DM = "dm"  # the queue key of direct messages (all DMs share one queue, fair across users)


@dataclass(frozen=True)
class QueuedJob:
    job_id: int
    guild_id: int | None  # None = a DM
    user_id: int
    cost: float = 1.0  # in standard images (core.cost.standard_images)
    batch_key: Hashable = None  # jobs with equal keys may share one engine call
    images: int = 1  # images the job makes (batches are sized in images)

    @property
    def queue_key(self) -> Hashable:
        return DM if self.guild_id is None else self.guild_id


@dataclass
class _Guild:
    key: Hashable
    weight: float = 1.0
    tag: float = 0.0  # start tag of the next job this guild will be served
    finish: float = 0.0  # finish tag of the last job served
    users: dict[int, deque[QueuedJob]] = field(default_factory=dict)
    ring: deque[int] = field(default_factory=deque)  # users with waiting jobs, round robin
    queued: int = 0
    in_heap: bool = False
    version: int = 0
    seq: int = 0  # tie-break of the heap entry (earlier pushes first)


class FairScheduler:
    """Per-guild queues served fairly; see the module docstring."""

    def __init__(
        self, *, default_weight: float = 1.0, workers: int = 1, rate: float | None = None
    ) -> None:
        if default_weight <= 0:
            raise ValueError(f"guild weight must be positive, got {default_weight}")
        self.default_weight = default_weight
        self.workers = max(1, workers)  # ETAs divide the work ahead among this many workers
        self._guilds: dict[Hashable, _Guild] = {}
        self._heap: list[tuple[float, int, int, Hashable]] = []  # (tag, seq, version, guild key)
        self._seq = 0
        self._vtime = 0.0
        self._jobs: dict[int, QueuedJob] = {}  # queued jobs by id
        self._running: dict[int, tuple[QueuedJob, float]] = {}  # job id -> (job, started at)
        self._queued_total = 0
        # Measured throughput: cost units per second, an exponential moving average (or the stored
        # queue's measurement, given when it is rebuilt).
        self._rate = rate
        self.rate_alpha = 0.3

    # ----------------------------------------------------------------- configuration

    def set_guild(self, guild_id: int | None, *, weight: float) -> None:
        """Give a guild (None = DMs) an operator weight."""
        if weight <= 0:
            raise ValueError(f"guild weight must be positive, got {weight}")
        self._guild(DM if guild_id is None else guild_id).weight = weight

    # ----------------------------------------------------------------- queries

    def __len__(self) -> int:
        return self._queued_total

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._jobs or job_id in self._running

    @property
    def running(self) -> list[QueuedJob]:
        return [job for job, _ in self._running.values()]

    def queued(self) -> Iterator[QueuedJob]:
        return iter(self._jobs.values())

    @property
    def rate(self) -> float | None:
        """Measured throughput in cost units per second (None until a job finished)."""
        return self._rate

    def retry_hint(self, limit: str, guild_id: int | None, user_id: int, now: float = 0.0) -> float | None:
        """Seconds until one of the jobs counted by ``limit`` ("user" | "guild" | "global") ends."""
        key = DM if guild_id is None else guild_id
        if limit == "user":
            return self._retry_hint(lambda j: j.queue_key == key and j.user_id == user_id, now)
        if limit == "guild":
            return self._retry_hint(lambda j: j.queue_key == key, now)
        return self._retry_hint(lambda j: True, now)

    # ----------------------------------------------------------------- events in

    def submit(self, job: QueuedJob) -> None:
        """Queue ``job`` at the back of its user's FIFO."""
        if job.job_id in self:
            raise ValueError(f"job {job.job_id} is already queued or running")
        if not job.cost > 0:
            raise ValueError(f"job cost must be positive, got {job.cost}")
        self._enqueue(job)

    def _enqueue(self, job: QueuedJob) -> None:
        g = self._guild(job.queue_key)
        fifo = g.users.get(job.user_id)
        if fifo is None:
            fifo = g.users[job.user_id] = deque()
        if not fifo:
            g.ring.append(job.user_id)
        fifo.append(job)
        g.queued += 1
        self._jobs[job.job_id] = job
        self._queued_total += 1
        if not g.in_heap:
            g.tag = max(self._vtime, g.finish)
            self._push(g)

    def _serve_head(self, g: _Guild, now: float) -> QueuedJob:
        """Start the job at the head of the fair order (``g`` is the guild at the top of the heap)."""
        heapq.heappop(self._heap)
        g.in_heap = False
        user = g.ring.popleft()
        fifo = g.users[user]
        job = fifo.popleft()
        if fifo:
            g.ring.append(user)
        else:
            del g.users[user]
        g.queued -= 1
        self._queued_total -= 1
        del self._jobs[job.job_id]
        self._vtime = g.tag
        g.finish = g.tag + job.cost / g.weight
        g.tag = g.finish
        if g.queued:
            self._push(g)
        self._running[job.job_id] = (job, now)
        return job

    def finish(self, job_id: int, now: float | None = None, *, cost: float | None = None) -> None:
        """A running job ended (done, failed or cancelled while running).

        With ``now``, the job's run time updates the measured throughput; ``cost`` overrides the
        job's estimated cost for that measurement.
        """
        entry = self._running.pop(job_id, None)
        if entry is None:
            raise KeyError(f"job {job_id} is not running")
        job, started = entry
        if now is not None and now > started:
            rate = (cost if cost is not None else job.cost) / (now - started)
            self._rate = rate if self._rate is None else self._rate + self.rate_alpha * (rate - self._rate)

    def cancel(self, job_id: int) -> QueuedJob | None:
        """Remove a queued job (returns it), or None if it is not queued (running jobs stop via finish)."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        g = self._guilds[job.queue_key]
        fifo = g.users[job.user_id]
        fifo.remove(job)
        if not fifo:
            del g.users[job.user_id]
            g.ring.remove(job.user_id)
        g.queued -= 1
        self._queued_total -= 1
        if not g.queued and g.in_heap:
            g.in_heap = False
            g.version += 1  # its heap entry is now stale
        return job

    def add_running(self, job: QueuedJob, started: float) -> None:
        """Record a job that is already running (when rebuilding from the jobs table)."""
        if job.job_id in self:
            raise ValueError(f"job {job.job_id} is already queued or running")
        self._running[job.job_id] = (job, started)

    # ----------------------------------------------------------------- position and ETA

    def order(self) -> list[QueuedJob]:
        """All queued jobs in the order they would be served if nothing else arrived."""
        return list(self.iter_order())

    def front(self, k: int) -> list[QueuedJob]:
        """The first ``k`` jobs of :meth:`order` (cheaper: stops early)."""
        return list(itertools.islice(self.iter_order(), k))

    def iter_order(self) -> Iterator[QueuedJob]:
        """:meth:`order`, lazily: a copy of the guilds' heap, served as the worker would serve it.

        Stops as early as its caller: the worker's ``front(k)`` costs O(k log guilds), not a walk of
        the whole queue. Stale heap entries are skipped as :meth:`take` skips them; serving a guild
        re-pushes it with its next start tag and a fresh sequence number, exactly as :meth:`take` does.
        """
        heap = list(self._heap)  # (tag, seq, version, key); version -1: pushed here, not by the queue
        heads: dict[Hashable, tuple[QueuedJob, Iterator[QueuedJob], float]] = {}
        counter = self._seq
        while heap:
            tag, _seq, version, key = heap[0]
            if version >= 0:
                g = self._guilds[key]
                if g.version != version or not g.in_heap:
                    heapq.heappop(heap)  # stale (the guild emptied or was re-pushed)
                    continue
                it = self._guild_order(g)
                heads[key] = (next(it), it, g.weight)
            job, it, weight = heads[key]
            yield job
            nxt = next(it, None)
            if nxt is None:
                heapq.heappop(heap)
            else:
                counter += 1
                heads[key] = (nxt, it, weight)
                heapq.heapreplace(heap, (tag + job.cost / weight, counter, -1, key))

    def take(self, job_id: int, now: float = 0.0) -> QueuedJob:
        """Start a queued job a worker claimed: the head of the fair order, or a job behind it (a
        batch-mate, or the head was held by another worker). Its guild is charged as if it had been
        served in order."""
        g = self._peek_guild()
        if g is not None and g.users[g.ring[0]][0].job_id == job_id:
            return self._serve_head(g, now)
        job = self.cancel(job_id)
        if job is None:
            raise KeyError(f"job {job_id} is not queued")
        self.add_running(job, now)
        g = self._guilds[job.queue_key]
        charge = job.cost / g.weight
        g.finish = max(g.finish, self._vtime) + charge
        if g.in_heap:
            g.tag = max(g.tag, self._vtime) + charge
            self._push(g)
        return job

    def positions(self, now: float = 0.0) -> dict[int, tuple[int, float | None]]:
        """Job id -> (position, ETA seconds until it starts); position 1 = next; running jobs are 0."""
        out: dict[int, tuple[int, float | None]] = {}
        ahead = sum(self._remaining(job, started, now) for job, started in self._running.values())
        for job_id in self._running:
            out[job_id] = (0, 0.0)
        for i, job in enumerate(self.order(), start=1):
            out[job.job_id] = (i, self._eta(ahead))
            ahead += job.cost
        return out

    # ----------------------------------------------------------------- internals

    def _guild(self, key: Hashable) -> _Guild:
        g = self._guilds.get(key)
        if g is None:
            g = self._guilds[key] = _Guild(key, weight=self.default_weight)
        return g

    def _push(self, g: _Guild) -> None:
        self._seq += 1
        g.version += 1
        g.seq = self._seq
        g.in_heap = True
        heapq.heappush(self._heap, (g.tag, self._seq, g.version, g.key))

    def _peek_guild(self) -> _Guild | None:
        heap = self._heap
        while heap:
            _, _, version, key = heap[0]
            g = self._guilds[key]
            if g.version == version and g.in_heap:
                return g
            heapq.heappop(heap)  # stale entry (the guild emptied or was re-pushed)
        return None

    @staticmethod
    def _guild_order(g: _Guild) -> Iterator[QueuedJob]:
        """The guild's jobs in the order it serves them: its users in turn, each user's FIFO in order
        (lazy; the caller consumes it before the queue changes)."""
        ring = deque((user, iter(g.users[user])) for user in g.ring)
        while ring:
            user, jobs = ring.popleft()
            job = next(jobs, None)
            if job is not None:
                yield job
                ring.append((user, jobs))

    def _remaining(self, job: QueuedJob, started: float, now: float) -> float:
        if self._rate is None:
            return job.cost
        return max(0.0, job.cost - (now - started) * self._rate)

    def _eta(self, cost_ahead: float) -> float | None:
        if self._rate is None or self._rate <= 0:
            return None
        return cost_ahead / (self._rate * self.workers)

    def _retry_hint(self, mine: Callable[[QueuedJob], bool], now: float) -> float | None:
        """Seconds until the first of the matching jobs should have finished."""
        if self._rate is None:
            return None
        running = [self._remaining(j, s, now) for j, s in self._running.values() if mine(j)]
        if running:
            return min(running) / self._rate
        positions = self.positions(now)
        best = None
        for job in self._jobs.values():
            if mine(job):
                _, eta = positions[job.job_id]
                if eta is not None:
                    done = eta + job.cost / self._rate
                    best = done if best is None else min(best, done)
        return best
