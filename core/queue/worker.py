"""The worker: a thin asyncio loop around :mod:`core.queue.fair` and the engine.

One loop per GPU. Each turn it syncs the scheduler with the jobs table (the source of truth), takes
the front of the fair order, claims the first job and the compatible jobs right behind it (up to the
batch's image capacity: ``engine.max_batch``, or what the engine says fits in free VRAM) in SQL under a
lease, runs the engine in a thread (``asyncio.to_thread``), forwards progress, stores the images and
reports to a :class:`WorkerListener` (the announcer of :mod:`core.services` in-process; PostgreSQL
NOTIFY in a ``chant worker`` process; :mod:`core.bootstrap` wires which).

Every result image is scored for moderation by the :class:`ImageScorer` (when one is configured) in
the same worker thread, right after the engine call and batched over the batch's images, so the event
loop never waits on it; the store decides post / spoiler / block from the score as it stores them.

Storing a batch's results (database writes, listener calls) overlaps the engine running the next
batch: the GPU does not wait for the database. Results are stored in the order their batches ran, and
``stop()`` waits for every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from core.engine.api import Engine
from core.queue.fair import FairScheduler
from core.queue.outputs import ResultFiles
from core.queue.store import Claimed, JobStore
from core.types import (
    GenerationCancelled,
    GenerationError,
    GenerationResult,
    OutOfMemory,
    Progress,
)

log = logging.getLogger(__name__)

OOM_MESSAGE = "The GPU ran out of memory for this job. Try a smaller size or fewer images."
SETTLE_GATE_TIMEOUT_S = 2.0  # results wait at most this long for the next batch's claim
PROGRESS_MIN_INTERVAL_S = 0.25  # progress notes per job at most this often (last step always)


class WorkerListener(Protocol):
    async def job_started(self, job_id: int) -> None: ...

    async def job_progress(
        self, job_id: int, step: int, total: int, eta_s: float | None, preview_png: bytes | None
    ) -> None: ...

    async def job_finished(self, job_id: int) -> None:
        """The job's row reached done/failed (its images are stored); load and announce it."""


class ImageScorer(Protocol):
    """The moderation classifier as the worker sees it (:class:`core.engine.classifier.ClassifierScorer`,
    or a stub in tests): called in the worker thread."""

    def scores(self, pngs: Sequence[bytes]) -> list[float | None]:
        """One score (0..1, the unsafe labels' probability) per image; None where it could not check."""
        ...


@runtime_checkable
class Preloads(Protocol):
    """An engine that can load (compile, warm up) its default model ahead of the first job (the
    diffusers engine; not part of :class:`core.engine.api.Engine`)."""

    def preload(self) -> object: ...


class NullListener:
    async def job_started(self, job_id: int) -> None:
        pass

    async def job_progress(self, job_id, step, total, eta_s, preview_png) -> None:
        pass

    async def job_finished(self, job_id: int) -> None:
        pass


class Worker:
    def __init__(
        self,
        store: JobStore,
        engine: Engine,
        *,
        listener: WorkerListener | None = None,
        max_batch: int = 1,  # most images per engine call; 0 = ask ``engine.batch_capacity(request)``
        poll_interval_s: float = 1.0,
        recover_all_on_start: bool = False,
        default_weight: float = 1.0,
        scorer: ImageScorer | None = None,
        outputs: ResultFiles | None = None,  # outputs.dir: results also written as files
    ) -> None:
        self.store = store
        self.outputs = outputs
        self.engine = engine
        self.scorer = scorer  # None: results are stored "not checked"
        self.listener: WorkerListener = listener or NullListener()
        self.max_batch = max(0, max_batch)
        self.poll_interval_s = poll_interval_s
        self.recover_all_on_start = recover_all_on_start
        # Caps are the submit path's business (it refuses in SQL); the worker schedules what is there.
        self.fair = FairScheduler(default_weight=default_weight)
        self._weighted: set[int] = set()  # guilds with an operator weight (re-read on full syncs)
        self._wake = asyncio.Event()
        self._stopping = False
        self._running: dict[int, float] = {}  # job id -> start (monotonic)
        self._cancelled: set[int] = set()
        self._task: asyncio.Task | None = None
        self._last_recover = 0.0
        self._max_seen = 0  # newest job id the scheduler has seen
        # front of the fair order offered to claim (batch-mates are looked for among them)
        self.candidates = max(8, 2 * self.max_batch) if self.max_batch else 64
        self.served: deque[int] = deque(maxlen=10_000)  # job ids in start order (tests, stats)
        self._settling: asyncio.Task | None = None  # storing the last batch's results
        self._settle_gate: asyncio.Event | None = None  # opens once the next batch is claimed
        self.engine_busy_s = 0.0  # seconds spent inside engine calls (benchmarks: GPU utilisation)
        self.batches = 0  # engine calls made

    # ------------------------------------------------------------------ control

    def wake(self) -> None:
        """New work may be there (a submit, a cancel): look now instead of at the next poll."""
        self._wake.set()

    def cancel(self, job_id: int) -> None:
        """Stop a running job between steps (its row was already set to cancelled by the service)."""
        self._cancelled.add(job_id)
        self._wake.set()

    @property
    def running_ids(self) -> list[int]:
        return list(self._running)

    def start(self) -> asyncio.Task:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="chant-worker")
        return self._task

    async def stop(self) -> None:
        """Stop after the current step; running jobs go back to the queue uncounted."""
        self._stopping = True
        self._cancelled.update(self._running)
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None
        await self.drain()

    async def drain(self) -> None:
        """Wait until the results of every batch run so far are stored."""
        self._open_settle_gate()
        while self._settling is not None:
            task = self._settling
            await asyncio.shield(task)
            if self._settling is task:
                self._settling = None

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        await self._preload()
        while not self._stopping:  # recover orphans first (retry if the database is not up yet)
            try:
                await self._recover(all_running=self.recover_all_on_start)
                await self.sync(full=True)
                break
            except Exception:
                log.exception("recovering orphaned jobs failed; retrying")
                await self._idle()
        self._last_recover = time.monotonic()
        while not self._stopping:
            self._wake.clear()  # a wake-up from here on makes _idle return at once
            try:
                worked = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker turn failed; retrying after %.1fs", self.poll_interval_s)
                worked = False
            if not worked and not self._stopping:
                await self._idle()

    async def _preload(self) -> None:
        """Load (compile, warm up) the default model and the classifier before claiming jobs, so no
        user waits for them."""
        if isinstance(self.scorer, Preloads) and not self._stopping:
            try:
                await asyncio.to_thread(self.scorer.preload)
            except Exception as exc:  # its images are stored "not checked"; the policy says what follows
                log.error("could not load the moderation classifier: %s", exc)
        if not isinstance(self.engine, Preloads) or self._stopping:
            return
        start = time.monotonic()
        try:
            report = await asyncio.to_thread(self.engine.preload)
        except Exception as exc:  # no default model, a broken file: jobs will say so one by one
            log.warning("could not preload the default model (%s); loading it with the first job", exc)
            return
        log.info("engine ready in %.1fs: %s", time.monotonic() - start, report)

    async def step(self) -> bool:
        """One turn: sync, pick, claim, run. False when there was nothing to do."""
        full = time.monotonic() - self._last_recover > self.poll_interval_s
        if full:
            self._last_recover = time.monotonic()
            await self._recover()
        await self.sync(full=full)
        try:
            claimed = await self.claim_next()
        finally:
            self._open_settle_gate()  # the last batch's results may be written now
        if not claimed:
            return False
        await self.run_batch(claimed)
        return True

    async def claim_next(self) -> list[Claimed]:
        """Claim the first available job in fair order, plus compatible jobs right behind it.

        Candidates are the front of the fair order; one statement claims the first one no other
        worker holds (``SKIP LOCKED``), so competing workers rarely retry.
        """
        while True:
            candidates = self.fair.front(self.candidates)
            if not candidates:
                return []
            claimed = await self.store.claim([c.job_id for c in candidates], limit=1)
            if not claimed:  # all taken by other workers or cancelled: forget them, look further
                for c in candidates:
                    self.fair.cancel(c.job_id)
                continue
            first = claimed[0].job_id
            index = next(i for i, c in enumerate(candidates) if c.job_id == first)
            for c in candidates[:index]:  # skipped: another worker holds them
                self.fair.cancel(c.job_id)
            batch = list(claimed)
            room = await self._capacity(claimed[0]) - claimed[0].request.count
            if room > 0:
                key = candidates[index].batch_key
                mates = []
                for c in candidates[index + 1 :]:  # the run of compatible jobs right behind it
                    if c.batch_key != key or c.images > room:
                        break
                    mates.append(c.job_id)
                    room -= c.images
                if mates:
                    batch += await self.store.claim(mates)
            now = time.monotonic()
            got = {c.job_id for c in batch}
            for c in candidates[index:]:
                if c.job_id in got:
                    self.fair.take(c.job_id, now)
            return batch

    def _open_settle_gate(self) -> None:
        if self._settle_gate is not None:
            self._settle_gate.set()
            self._settle_gate = None

    async def _capacity(self, first: Claimed) -> int:
        """Images one engine call may take for jobs like ``first``: the configured maximum, or the
        engine's estimate (``batch_capacity``: free VRAM at that size; measured once per size)."""
        if self.max_batch:
            return self.max_batch
        try:
            return max(1, int(await asyncio.to_thread(self.engine.batch_capacity, first.request)))
        except Exception:
            log.exception("job %s: the engine could not size its batch; it runs alone", first.job_id)
            return 1

    async def _recover(self, *, all_running: bool = False) -> None:
        _, failed = await self.store.recover(all_running=all_running)
        for job_id in failed:
            await self.listener.job_finished(job_id)

    async def sync(self, *, full: bool = True) -> None:
        """Make the scheduler's queue equal the queued rows of the jobs table.

        ``full=False`` only adds jobs newer than the newest one seen (cheap, every turn); a full
        sync also drops jobs that left the queue elsewhere and picks up re-queued ones.
        """
        ids = await self.store.queued_ids(after=0 if full else self._max_seen)
        if full:
            weights = await self.store.guild_weights()
            for gid in self._weighted - set(weights):  # back to the default weight
                self.fair.set_guild(gid, weight=self.fair.default_weight)
            for gid, weight in weights.items():
                self.fair.set_guild(gid, weight=weight)
            self._weighted = set(weights)
            in_db = set(ids)
            for job in [j for j in self.fair.queued() if j.job_id not in in_db]:
                self.fair.cancel(job.job_id)
        new_ids = [i for i in ids if i not in self.fair]
        if not new_ids:
            return
        self._max_seen = max(self._max_seen, *new_ids)
        new = await self.store.load(new_ids)
        for job in new:
            self.fair.submit(job)

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    # ------------------------------------------------------------------ running a batch

    async def run_batch(self, claimed: Sequence[Claimed]) -> None:
        ids = [c.job_id for c in claimed]
        requests = [c.request for c in claimed]
        start = time.monotonic()
        for job_id in ids:
            self._running[job_id] = start
            self.served.append(job_id)
            await self.listener.job_started(job_id)
        loop = asyncio.get_running_loop()
        last_note: dict[int, float] = {}

        def on_progress(i: int, p: Progress) -> None:
            job_id = ids[i]
            t = time.monotonic()
            if (
                p.step < p.total
                and p.preview_png is None
                and t - last_note.get(job_id, 0.0) < PROGRESS_MIN_INTERVAL_S
            ):
                return
            last_note[job_id] = t
            elapsed = t - start
            eta = elapsed / p.step * (p.total - p.step) if p.step else None
            asyncio.run_coroutine_threadsafe(
                self.listener.job_progress(job_id, p.step, p.total, eta, p.preview_png), loop
            )

        def should_cancel(i: int) -> bool:
            return ids[i] in self._cancelled

        done = asyncio.Event()
        renew = asyncio.create_task(self._renew_loop(ids, done))
        engine_start = time.monotonic()
        self.batches += 1
        try:
            results = await asyncio.to_thread(self._generate, requests, on_progress, should_cancel)
        except Exception as exc:  # the engine call as a whole failed: every job in it failed
            results = [exc] * len(ids)
        except BaseException:  # cancelled: the renewal ends with us
            done.set()
            raise
        finally:
            self.engine_busy_s += time.monotonic() - engine_start
        elapsed = time.monotonic() - start
        costs = [self._cost(job_id) for job_id in ids]
        total_cost = sum(costs) or 1.0
        now = time.monotonic()
        for k, job_id in enumerate(ids):
            if job_id in self.fair:
                self.fair.finish(job_id, now if k == 0 else None, cost=total_cost if k == 0 else None)
        shares = [elapsed * cost / total_cost for cost in costs]
        # The next batch may start now; its results are stored after these (the chain keeps the order).
        # Writing waits until the next batch is claimed: on SQLite the claim needs the write lock, and
        # the engine would otherwise wait for this batch's whole write transaction.
        self._open_settle_gate()
        gate = self._settle_gate = asyncio.Event()
        self._settling = asyncio.create_task(
            self._settle_batch(self._settling, (renew, done), ids, results, shares, gate), name="chant-settle"
        )

    def _generate(
        self,
        requests: list,
        on_progress: Callable[[int, Progress], None],
        should_cancel: Callable[[int], bool],
    ) -> list[GenerationResult | BaseException]:
        """The engine call and the classifier, in the worker thread."""
        results = self.engine.generate_batch(requests, on_progress=on_progress, should_cancel=should_cancel)
        return self._score(results) if self.scorer is not None else results

    def _score(
        self, results: Sequence[GenerationResult | BaseException]
    ) -> list[GenerationResult | BaseException]:
        """Each result image with its classifier score: one classifier call for the batch's images."""
        assert self.scorer is not None
        pngs = [image.png for r in results if isinstance(r, GenerationResult) for image in r.images]
        if not pngs:
            return list(results)
        try:
            scores = list(self.scorer.scores(pngs))
            if len(scores) != len(pngs):
                raise ValueError(f"{len(scores)} scores for {len(pngs)} images")
        except Exception:
            log.exception("the moderation classifier failed; %d image(s) stored as not checked", len(pngs))
            scores = [None] * len(pngs)
        it = iter(scores)
        out: list[GenerationResult | BaseException] = []
        for r in results:
            if isinstance(r, GenerationResult):
                images = tuple(dataclasses.replace(image, score=next(it)) for image in r.images)
                r = dataclasses.replace(r, images=images)
            out.append(r)
        return out

    async def _settle_batch(
        self,
        previous: asyncio.Task | None,
        renewal: tuple[asyncio.Task, asyncio.Event],
        ids: list[int],
        results: Sequence[GenerationResult | BaseException],
        shares: list[float],
        gate: asyncio.Event,
    ) -> None:
        """Store one batch's outcomes, after the batch before it and after the next batch's claim.

        The jobs' lease is renewed until their results are written, so a waiting result is never
        taken for an orphan.
        """
        renew, done = renewal
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gate.wait(), SETTLE_GATE_TIMEOUT_S)
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
        finally:
            # Let a renewal in flight finish rather than cancel it inside its write transaction: a
            # cancelled SQLite write can keep the write lock and stall every other writer.
            done.set()
            await renew
        # The finished jobs' images in one transaction (one commit for the batch); if that fails, one
        # by one below, so one bad row cannot take its batch-mates' images with it.
        stored: set[int] | None = None
        finished = [
            (job_id, result, share)
            for job_id, result, share in zip(ids, results, shares, strict=True)
            if isinstance(result, GenerationResult)
        ]
        if len(finished) > 1:
            try:
                stored = await self.store.complete_many(finished)
            except Exception:
                log.exception("storing %d results together failed; storing them one by one", len(finished))
        done: list[tuple[int, GenerationResult]] = []  # stored and announced: their files next
        for job_id, result, share in zip(ids, results, shares, strict=True):
            try:
                if stored is not None and isinstance(result, GenerationResult):
                    if job_id in stored:
                        await self.listener.job_finished(job_id)
                        done.append((job_id, result))
                    else:
                        log.info("job %s finished but is no longer ours (cancelled or lease lost)", job_id)
                elif await self._settle(job_id, result, share) and isinstance(result, GenerationResult):
                    done.append((job_id, result))
            except Exception:
                log.exception("job %s: could not store its outcome", job_id)
            self._running.pop(job_id, None)
            self._cancelled.discard(job_id)
        if self.outputs is not None and done:
            await self._write_files(done)

    async def _write_files(self, done: list[tuple[int, GenerationResult]]) -> None:
        """``outputs.dir``: the stored results as files, less the images moderation blocked (their
        decisions were stored with them; unknown when that read fails, so nothing is written then)."""
        assert self.outputs is not None
        try:
            blocked = await self.store.blocked([job_id for job_id, _ in done])
        except Exception:
            log.exception("jobs %s: could not read their moderation decisions; no files written for them",
                          [job_id for job_id, _ in done])  # fmt: skip
            return
        for job_id, result in done:
            await self.outputs.save(job_id, result, withheld=blocked.get(job_id, set()))

    async def _settle(
        self, job_id: int, result: GenerationResult | BaseException, gpu_seconds: float
    ) -> bool:
        """Store one job's outcome; True when it is a result that was stored (done)."""
        if isinstance(result, GenerationResult):
            if await self.store.complete(job_id, result, gpu_seconds):
                await self.listener.job_finished(job_id)
                return True
            log.info("job %s finished but is no longer ours (cancelled or lease lost)", job_id)
            return False
        if isinstance(result, GenerationCancelled):
            if self._stopping:
                await self.store.release(job_id)  # shutdown: back to the queue, not counted
            return False  # otherwise the service already marked it cancelled
        if isinstance(result, OutOfMemory):
            reason = str(result) or OOM_MESSAGE
            log.warning("job %s: out of memory: %s", job_id, reason)
        elif isinstance(result, GenerationError):
            reason = str(result)
        else:
            log.error("job %s failed unexpectedly", job_id, exc_info=result)
            reason = (
                f"Something went wrong on our side (job {job_id}); an operator can look it up in the logs."
            )
        if await self.store.fail(job_id, reason):
            await self.listener.job_finished(job_id)
        return False

    def _cost(self, job_id: int) -> float:
        for job in self.fair.running:
            if job.job_id == job_id:
                return job.cost
        return 1.0

    async def _renew_loop(self, ids: list[int], done: asyncio.Event) -> None:
        # At the poll interval (it also tells us of jobs cancelled elsewhere) but not more than twice a
        # second (each renewal is a database write other writers wait for); always 3 times per lease.
        interval = min(self.store.lease.total_seconds() / 3, max(0.5, self.poll_interval_s))
        while True:
            try:
                await asyncio.wait_for(done.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                mine = await self.store.renew(ids)
            except Exception:
                log.exception("lease renewal failed")
                continue
            for job_id in ids:
                if job_id not in mine:  # cancelled by its owner, or our lease was taken over
                    self._cancelled.add(job_id)
