"""``chant worker``: a GPU worker process over the shared PostgreSQL database."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run a GPU worker that takes jobs from the shared PostgreSQL queue",
        description="Run one GPU worker (one per GPU; several per machine are fine). Needs database.url "
        "to point at PostgreSQL; with SQLite, `chant run` runs the worker in-process. "
        "CHANT_FAKE_ENGINE=1 runs the torch-free fake engine (tests, demos).",
    )
    p.set_defaults(func=_worker)


def _worker(args: argparse.Namespace, settings) -> int:
    from core.storage.db import normalize_url

    try:
        url = normalize_url(settings.database.url)
    except ValueError as exc:
        print(f"chant worker: {exc}")
        return 2
    if url.get_backend_name() == "sqlite":
        print(
            "chant worker: database.url is SQLite, which serves one process; `chant run` runs the "
            "worker in-process. Point database.url (or CHANT_DATABASE_URL) at PostgreSQL for separate workers."
        )
        return 2
    return asyncio.run(run_worker(settings))


class NotifyListener:
    """Tells bot processes about progress (start and finish are NOTIFYed by the store's transactions)."""

    def __init__(self, store) -> None:
        self.store = store

    async def job_started(self, job_id: int) -> None:
        pass

    async def job_progress(self, job_id, step, total, eta_s, preview_png) -> None:
        try:
            await self.store.notify(
                {"t": "progress", "id": job_id, "step": step, "total": total, "eta": eta_s}
            )
        except Exception:
            log.debug("progress note for job %s not sent", job_id, exc_info=True)

    async def job_finished(self, job_id: int) -> None:
        pass


async def run_worker(settings) -> int:
    from core.bootstrap import build_engine, build_worker, open_database
    from core.queue.pg import listen
    from core.queue.store import JOBS_CHANNEL

    db = await open_database(settings)
    engine = build_engine(settings)
    worker = build_worker(settings, db, engine)
    worker.listener = NotifyListener(worker.store)
    conn = await listen(db, JOBS_CHANNEL, lambda _payload: worker.wake())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info("worker %s started", worker.store.worker_id)
    task = worker.start()
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await worker.stop()
    stopper.cancel()
    if conn is not None:
        await conn.close()
    engine.close()
    await db.dispose()
    log.info("worker %s stopped", worker.store.worker_id)
    return 0
