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

    q = sub.add_parser("queue", help="inspect the job queue or set a guild's share of the GPU")
    qsub = q.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    st = qsub.add_parser("status", help="jobs per state, the busiest guilds, running jobs and throughput")
    st.set_defaults(func=_status)
    w = qsub.add_parser("weight", help="set a guild's fair-queue weight (2 = twice the share; 1 = default)")
    w.add_argument("guild_id", type=int)
    w.add_argument("weight", type=float)
    w.set_defaults(func=_weight)


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


async def run_worker(settings) -> int:
    from core.bootstrap import build_engine, build_worker, open_database
    from core.queue import notify

    db = await open_database(settings)
    engine = build_engine(settings)
    worker = build_worker(settings, db, engine, listener=notify.ProgressNotifier(db))
    conn = await notify.listen(db, notify.JOBS, lambda _note: worker.wake())
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


def _status(args: argparse.Namespace, settings) -> int:
    return asyncio.run(_status_async(settings))


async def _status_async(settings) -> int:
    from sqlalchemy import func, select

    from core.bootstrap import build_store, open_database
    from core.storage.models import Job

    db = await open_database(settings, upgrade=False)
    try:
        async with db.session() as s:
            states = dict((await s.execute(select(Job.state, func.count()).group_by(Job.state))).all())
            busiest = (
                await s.execute(
                    select(Job.guild_id, func.count())
                    .where(Job.state == "queued")
                    .group_by(Job.guild_id)
                    .order_by(func.count().desc())
                    .limit(10)
                )
            ).all()
            running = (
                await s.execute(
                    select(Job.id, Job.guild_id, Job.lease_owner, Job.lease_expires_at).where(
                        Job.state == "running"
                    )
                )
            ).all()
        rate = await build_store(settings, db, owner="cli").throughput()
    finally:
        await db.dispose()
    print("jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none"))
    for guild, n in busiest:
        print(f"  queued in {'DMs' if guild is None else f'guild {guild}'}: {n}")
    for job_id, guild, owner, until in running:
        print(f"  running: job {job_id} (guild {guild}) on {owner}, lease until {until:%H:%M:%S}")
    print("throughput: " + (f"{rate:.3f} standard images/s per worker" if rate else "not measured yet"))
    return 0


def _weight(args: argparse.Namespace, settings) -> int:
    if not args.weight > 0:
        print(f"chant queue weight: the weight must be a positive number, got {args.weight}")
        return 2
    return asyncio.run(_weight_async(settings, args.guild_id, args.weight))


async def _weight_async(settings, guild_id: int, weight: float) -> int:
    from core.bootstrap import open_database
    from core.storage.repositories import Repositories

    db = await open_database(settings)
    try:
        async with db.transaction(write=True) as s:
            before = await Repositories(s).guilds.update(guild_id, weight=weight)
    except ValueError as exc:
        print(f"chant queue weight: {exc}")
        return 2
    finally:
        await db.dispose()
    print(
        f"guild {guild_id}: weight {before['weight']:g} -> {weight:g} (workers pick it up within a poll interval)"
    )
    return 0
