"""How a bot process learns what happens to jobs, and tells the bot: the event machinery.

Three sources report, and the :class:`~core.services.events.Ledger` makes each job's start and end
announced once, whichever reports first:

* the in-process worker calls the :class:`Announcer` (it is the worker's ``WorkerListener``;
  :mod:`core.bootstrap` wires it);
* with PostgreSQL, workers in other processes NOTIFY (:mod:`core.queue.notify`), heard on LISTEN
  (when that connection is lost, it comes back and the table tells what was missed meanwhile);
* without a worker here, or with PostgreSQL, a poller reads the jobs table (the fallback when a
  NOTIFY was missed, and all there is for a bot beside a SQLite worker in another process).

Queue positions are recomputed in the background when a job starts, so a worker starting a batch of
16 jobs does not wait for 16 queue scans (the GPU would idle); the scans coalesce.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from core.queue import notify
from core.queue.notify import EVENTS, Note
from core.queue.positions import QueuePositions
from core.services.events import Ledger, Once
from core.services.reads import images_of, view_of
from core.services.types import JobCancelled, JobDone, JobFailed, JobProgress
from core.storage.db import Database
from core.storage.repositories import Repositories

log = logging.getLogger(__name__)

FINISHED = ("done", "failed", "cancelled")


class Announcer:
    def __init__(
        self, db: Database, ledger: Ledger, queue: QueuePositions, *, poll_interval_s: float
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.queue = queue
        self.poll_interval_s = max(0.05, poll_interval_s)
        self._local = Once()  # jobs the in-process worker ran (their progress reaches us directly)
        self._recompute: asyncio.Task | None = None  # recomputing queue positions (one at a time)
        self._recompute_again = False
        self._tasks: set[asyncio.Task] = set()
        self._listening: notify.Listener | None = None

    # ------------------------------------------------------------------ the in-process worker

    async def job_started(self, job_id: int) -> None:
        self._local.first(job_id)
        self._started(job_id)

    async def job_progress(
        self, job_id: int, step: int, total: int, eta_s: float | None, preview_png: bytes | None
    ) -> None:
        self.ledger.hub.publish(JobProgress(job_id, step, total, eta_s, preview_png))
        if preview_png is None:  # other bot processes see the bar too (previews stay here)
            await notify.publish(self.db, EVENTS, Note("progress", job_id, step, total, eta_s))

    async def job_finished(self, job_id: int) -> None:
        """The job's row reached its end (its images are stored): load it and announce it, once."""
        if not self.ledger.claim_end(job_id):
            return
        async with self.db.session() as s:
            job = await Repositories(s).jobs.get(job_id)
            if job is None or job.state not in FINISHED:
                self.ledger.release_end(job_id)
                return
            view = await view_of(s, job)
            images = await images_of(s, job_id) if view.state == "done" else ()
            maps = await Repositories(s).jobs.control_maps(job_id) if view.state == "done" else ()
        if view.state == "done":
            self.ledger.ended(JobDone(view, images, maps))
        elif view.state == "failed":
            self.ledger.ended(JobFailed(view, view.error or "The job failed."))
        else:
            self.ledger.ended(JobCancelled(view))

    def _started(self, job_id: int) -> None:
        if self.ledger.started(job_id):
            self._positions_changed()

    # ------------------------------------------------------------------ queue positions

    def _positions_changed(self) -> None:
        """Recompute and announce queue positions soon, in the background."""
        if self._recompute is not None and not self._recompute.done():
            self._recompute_again = True
            return
        self._recompute = asyncio.create_task(self._recompute_loop(), name="chant-positions")

    async def _recompute_loop(self) -> None:
        while True:
            self._recompute_again = False
            try:
                self.ledger.moved(await self.queue.positions())
            except Exception:
                log.exception("could not update queue positions")
            if not self._recompute_again:
                return

    # ------------------------------------------------------------------ other processes

    async def start(self, *, listen: bool, poll: bool) -> None:
        self.ledger.begin()
        if listen:
            self._listening = notify.Listener(self.db, EVENTS, self._on_note, on_reconnect=self._catch_up)
            await self._listening.start()
        if poll:
            self._spawn(self._poll_finished(), name="chant-poll-finished")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._recompute] if self._recompute is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._recompute = None
        if self._listening is not None:
            await self._listening.close()
            self._listening = None

    def _spawn(self, coro: Any, name: str | None = None) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_note(self, note: Note) -> None:
        if note.kind == "progress":
            if note.job_id not in self._local:
                self.ledger.hub.publish(JobProgress(note.job_id, note.step, note.total, note.eta_s, None))
        elif note.kind == "started":
            self._started(note.job_id)
        elif note.kind in ("done", "failed"):
            self._spawn(self.job_finished(note.job_id))

    async def _catch_up(self) -> None:
        """LISTEN came back after a loss: the notes sent meanwhile are gone, so announce from the table
        what changed — jobs that started (running now), jobs that ended, and the queue's new order."""
        async with self.db.session() as s:
            jobs = Repositories(s).jobs
            running = await jobs.running_ids()
            ended = await jobs.finished_since(self.ledger.begin())
        for job_id in running:
            self._started(job_id)
        for job_id in ended:
            if not self.ledger.announced_end(job_id):
                await self.job_finished(job_id)
        self._positions_changed()

    async def _poll_finished(self) -> None:
        since = self.ledger.begin()
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                async with self.db.session() as s:
                    ids = await Repositories(s).jobs.finished_since(since)
                for job_id in ids:
                    if not self.ledger.announced_end(job_id):
                        await self.job_finished(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("polling for finished jobs failed")
