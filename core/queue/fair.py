"""The fair scheduler: a plain state machine with no I/O (you call it; it never calls out).

``submit(job)`` adds a job, ``next(now)`` says which job to run, ``finish(job_id, now)`` and
``cancel(job_id)`` take jobs out. Time is always passed in, so tests need no clock and no event loop.

Fairness, in two levels:

* **Across guilds**: deficit round robin in its virtual-time form (start-time fair queueing, i.e. DRR
  with an infinitely small quantum). Each guild (and the DM queue) carries a start tag; the guild
  with the smallest tag is served next, and serving a job moves that guild's tag on by
  ``cost / weight``, where cost ≈ pixels × steps × images. A guild that sends big jobs gets fewer of
  them; a guild with weight 2 gets twice the service. A guild that was idle joins at the current
  virtual time, so it neither starves nor banks credit while away. Every decision is one heap pop
  and one push: O(log guilds).
* **Across users within a guild**: round robin over the users that have jobs waiting; each user's
  own jobs stay in the order they were submitted (FIFO per user).

Caps (per user, per guild, global) are checked by :meth:`FairScheduler.check` / ``submit`` and
reported as :class:`QueueFull` with the limit that was hit and a retry hint from the measured
throughput.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

DM = "dm"  # the queue key of direct messages (all DMs share one queue, fair across users)

STANDARD_COST = 512 * 512 * 20  # one 512² image at 20 steps = 1.0 cost unit


def request_cost(width: int, height: int, steps: int, count: int = 1, *, hires_factor: float = 1.0) -> float:
    """A job's cost in standard images (512², 20 steps = 1.0): pixels × steps × images."""
    if width <= 0 or height <= 0 or steps <= 0 or count <= 0:
        raise ValueError(
            f"cost needs positive width, height, steps and count, got {width}x{height}, {steps}, {count}"
        )
    return width * height * steps * count * hires_factor / STANDARD_COST


@dataclass(frozen=True)
class QueuedJob:
    job_id: int
    guild_id: int | None  # None = a DM
    user_id: int
    cost: float = 1.0  # see request_cost
    batch_key: Hashable = None  # jobs with equal keys may share one engine call
    images: int = 1  # images the job makes (batches are sized in images)

    @property
    def queue_key(self) -> Hashable:
        return DM if self.guild_id is None else self.guild_id


@dataclass(frozen=True)
class Caps:
    per_user: int = 3  # queued + running jobs of one user in one guild (or in DMs)
    per_guild: int = 50
    global_: int = 500


class QueueFull(Exception):
    """A cap was hit; ``limit`` is "user" | "guild" | "global"; ``retry_after_s`` is a hint (None if unknown)."""

    def __init__(self, limit: str, cap: int, retry_after_s: float | None) -> None:
        self.limit = limit
        self.cap = cap
        self.retry_after_s = retry_after_s
        what = {
            "user": "you already have",
            "guild": "this server already has",
            "global": "the bot already has",
        }
        super().__init__(f"{what[limit]} {cap} job(s) queued (the {limit} limit)")


@dataclass
class _Guild:
    key: Hashable
    weight: float = 1.0
    caps: Caps | None = None  # None = the scheduler's caps
    tag: float = 0.0  # start tag of the next job this guild will be served
    finish: float = 0.0  # finish tag of the last job served
    users: dict[int, deque[QueuedJob]] = field(default_factory=dict)
    ring: deque[int] = field(default_factory=deque)  # users with waiting jobs, round robin
    queued: int = 0
    active: int = 0  # queued + running (for the guild cap)
    in_heap: bool = False
    version: int = 0
    seq: int = 0  # tie-break of the heap entry (earlier pushes first)


class FairScheduler:
    """Per-guild queues served fairly; see the module docstring."""

    def __init__(self, caps: Caps | None = None, *, default_weight: float = 1.0, workers: int = 1) -> None:
        if default_weight <= 0:
            raise ValueError(f"guild weight must be positive, got {default_weight}")
        self.caps = caps or Caps()
        self.default_weight = default_weight
        self.workers = max(1, workers)
        self._guilds: dict[Hashable, _Guild] = {}
        self._heap: list[tuple[float, int, int, Hashable]] = []  # (tag, seq, version, guild key)
        self._seq = 0
        self._vtime = 0.0
        self._jobs: dict[int, QueuedJob] = {}  # queued jobs by id
        self._running: dict[int, tuple[QueuedJob, float]] = {}  # job id -> (job, started at)
        self._user_active: dict[tuple[Hashable, int], int] = {}
        self._queued_total = 0
        # Measured throughput: cost units per second, an exponential moving average.
        self._rate: float | None = None
        self.rate_alpha = 0.3

    # ----------------------------------------------------------------- configuration

    def set_guild(
        self, guild_id: int | None, *, weight: float | None = None, caps: Caps | None = None
    ) -> None:
        """Give a guild (None = DMs) an operator weight and/or its own caps."""
        g = self._guild(DM if guild_id is None else guild_id)
        if weight is not None:
            if weight <= 0:
                raise ValueError(f"guild weight must be positive, got {weight}")
            g.weight = weight
        if caps is not None:
            g.caps = caps

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

    def caps_for(self, guild_id: int | None) -> Caps:
        g = self._guilds.get(DM if guild_id is None else guild_id)
        return g.caps if g is not None and g.caps is not None else self.caps

    def check(self, guild_id: int | None, user_id: int, now: float = 0.0) -> None:
        """Raise :class:`QueueFull` if one more job from this user would exceed a cap."""
        key = DM if guild_id is None else guild_id
        caps = self.caps_for(guild_id)
        active_user = self._user_active.get((key, user_id), 0)
        if active_user >= caps.per_user:
            raise QueueFull(
                "user",
                caps.per_user,
                self._retry_hint(lambda j: j.queue_key == key and j.user_id == user_id, now),
            )
        g = self._guilds.get(key)
        if g is not None and g.active >= caps.per_guild:
            raise QueueFull("guild", caps.per_guild, self._retry_hint(lambda j: j.queue_key == key, now))
        if self._queued_total + len(self._running) >= self.caps.global_:
            raise QueueFull("global", self.caps.global_, self._retry_hint(lambda j: True, now))

    def retry_hint(self, limit: str, guild_id: int | None, user_id: int, now: float = 0.0) -> float | None:
        """Seconds until one of the jobs counted by ``limit`` ("user" | "guild" | "global") ends."""
        key = DM if guild_id is None else guild_id
        if limit == "user":
            return self._retry_hint(lambda j: j.queue_key == key and j.user_id == user_id, now)
        if limit == "guild":
            return self._retry_hint(lambda j: j.queue_key == key, now)
        return self._retry_hint(lambda j: True, now)

    # ----------------------------------------------------------------- events in

    def submit(self, job: QueuedJob, now: float = 0.0, *, check_caps: bool = True) -> None:
        """Queue ``job`` at the back of its user's FIFO; raises QueueFull when over a cap."""
        if job.job_id in self:
            raise ValueError(f"job {job.job_id} is already queued or running")
        if not job.cost > 0:
            raise ValueError(f"job cost must be positive, got {job.cost}")
        if check_caps:
            self.check(job.guild_id, job.user_id, now)
        self._enqueue(job, front=False)

    def _enqueue(self, job: QueuedJob, *, front: bool) -> None:
        """Put ``job`` at the back (new) or front (requeued) of its user's FIFO."""
        g = self._guild(job.queue_key)
        fifo = g.users.get(job.user_id)
        if fifo is None:
            fifo = g.users[job.user_id] = deque()
        if not fifo:
            (g.ring.appendleft if front else g.ring.append)(job.user_id)
        (fifo.appendleft if front else fifo.append)(job)
        g.queued += 1
        g.active += 1
        self._jobs[job.job_id] = job
        self._queued_total += 1
        ukey = (job.queue_key, job.user_id)
        self._user_active[ukey] = self._user_active.get(ukey, 0) + 1
        if not g.in_heap:
            g.tag = max(self._vtime, g.finish)
            self._push(g)

    def next(self, now: float = 0.0) -> QueuedJob | None:
        """Take the next job in fair order (it becomes running), or None when nothing is queued."""
        g = self._peek_guild()
        if g is None:
            return None
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

    def peek(self) -> QueuedJob | None:
        """The job :meth:`next` would return, without taking it."""
        g = self._peek_guild()
        if g is None:
            return None
        return g.users[g.ring[0]][0]

    def next_batch(
        self, now: float = 0.0, max_n: int = 1, key: Callable[[QueuedJob], Hashable] | None = None
    ) -> list[QueuedJob]:
        """Take up to ``max_n`` compatible jobs from the front of the fair order.

        The first job is :meth:`next`'s; further jobs are taken while the next job in fair order
        has the same key (default: ``job.batch_key``), so batching never reorders anyone.
        """
        key = key or (lambda j: j.batch_key)
        first = self.next(now)
        if first is None:
            return []
        batch = [first]
        want = key(first)
        while len(batch) < max_n:
            head = self.peek()
            if head is None or key(head) != want:
                break
            job = self.next(now)
            assert job is head
            batch.append(job)
        return batch

    def finish(self, job_id: int, now: float | None = None, *, cost: float | None = None) -> None:
        """A running job ended (done, failed or cancelled while running).

        With ``now``, the job's run time updates the measured throughput; ``cost`` overrides the
        job's estimated cost for that measurement.
        """
        entry = self._running.pop(job_id, None)
        if entry is None:
            raise KeyError(f"job {job_id} is not running")
        job, started = entry
        self._release(job)
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
        self._release(job)
        if not g.queued and g.in_heap:
            g.in_heap = False
            g.version += 1  # its heap entry is now stale
        return job

    def add_running(self, job: QueuedJob, started: float) -> None:
        """Record a job that is already running (e.g. when rebuilding from the jobs table)."""
        if job.job_id in self:
            raise ValueError(f"job {job.job_id} is already queued or running")
        g = self._guild(job.queue_key)
        g.active += 1
        ukey = (job.queue_key, job.user_id)
        self._user_active[ukey] = self._user_active.get(ukey, 0) + 1
        self._running[job.job_id] = (job, started)

    def requeue(self, job_id: int) -> QueuedJob:
        """Put a running job back at the front of its user's FIFO (e.g. a lost lease)."""
        job, _ = self._running.pop(job_id)
        self._release(job)
        self._enqueue(job, front=True)
        return job

    # ----------------------------------------------------------------- position and ETA

    def order(self) -> list[QueuedJob]:
        """All queued jobs in the order they would be served if nothing else arrived."""
        return list(self.iter_order())

    def front(self, k: int) -> list[QueuedJob]:
        """The first ``k`` jobs of :meth:`order` (cheaper: stops early)."""
        return list(itertools.islice(self.iter_order(), k))

    def iter_order(self) -> Iterator[QueuedJob]:
        heap: list[tuple[float, int, QueuedJob, float, Iterator[QueuedJob]]] = []
        for g in self._guilds.values():
            if g.queued:
                it = self._guild_order(g)
                heap.append((g.tag, g.seq, next(it), g.weight, it))
        heapq.heapify(heap)
        counter = self._seq  # re-pushes get fresh sequence numbers, exactly as next() does
        while heap:
            tag, _seq, job, weight, it = heap[0]
            yield job
            nxt = next(it, None)
            if nxt is None:
                heapq.heappop(heap)
            else:
                counter += 1
                heapq.heapreplace(heap, (tag + job.cost / weight, counter, nxt, weight, it))

    def take(self, job_id: int, now: float = 0.0) -> QueuedJob:
        """Start a specific queued job (a worker claimed it, maybe ahead of :meth:`next`'s choice).

        Its guild is charged as if it had been served in order.
        """
        head = self.peek()
        if head is not None and head.job_id == job_id:
            job = self.next(now)
            assert job is not None
            return job
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

    def position(self, job_id: int, now: float = 0.0) -> tuple[int, float | None]:
        """(position, ETA in seconds); raises KeyError for unknown jobs."""
        return self.positions(now)[job_id]

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
        fifos = {user: list(g.users[user]) for user in g.ring}
        ring = deque(g.ring)
        index = dict.fromkeys(ring, 0)
        while ring:
            user = ring.popleft()
            yield fifos[user][index[user]]
            index[user] += 1
            if index[user] < len(fifos[user]):
                ring.append(user)

    def _release(self, job: QueuedJob) -> None:
        g = self._guilds[job.queue_key]
        g.active -= 1
        ukey = (job.queue_key, job.user_id)
        left = self._user_active[ukey] - 1
        if left:
            self._user_active[ukey] = left
        else:
            del self._user_active[ukey]

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

    def snapshot(self) -> dict[str, Any]:
        """Counts for stats and debugging."""
        return {
            "queued": self._queued_total,
            "running": len(self._running),
            "guilds": sum(1 for g in self._guilds.values() if g.queued),
            "vtime": self._vtime,
            "rate": self._rate,
        }
