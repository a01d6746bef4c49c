"""``chant queue status|weight``: what the queue holds and serves; a guild's fair-share weight.

(``chant worker``, which wires a whole worker process, is in :mod:`core.cli`.)"""

from __future__ import annotations

import argparse
import asyncio


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("queue", help="inspect the job queue or set a guild's share of the GPU")
    qsub = q.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    st = qsub.add_parser("status", help="jobs per state, the busiest guilds, running jobs and throughput")
    st.set_defaults(func=_status)
    w = qsub.add_parser("weight", help="set a guild's fair-queue weight (2 = twice the share; 1 = default)")
    w.add_argument("guild_id", type=int)
    w.add_argument("weight", type=float)
    w.set_defaults(func=_weight)


def _status(args: argparse.Namespace, settings) -> int:
    return asyncio.run(_status_async(settings))


async def _status_async(settings) -> int:
    from core.queue.store import JobStore
    from core.storage.db import open_database

    db = await open_database(settings.database, upgrade=False)
    try:
        store = JobStore(db, worker_id="cli", lease_seconds=settings.queue.lease_seconds)
        status = await store.status()
        rate = await store.throughput()
    finally:
        await db.dispose()
    print("jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(status.states.items())) or "none"))
    for guild, n in status.busiest:
        print(f"  queued in {'DMs' if guild is None else f'guild {guild}'}: {n}")
    for job_id, guild, owner, until in status.running:
        print(f"  running: job {job_id} (guild {guild}) on {owner}, lease until {until:%H:%M:%S}")
    print("throughput: " + (f"{rate:.3f} standard images/s per worker" if rate else "not measured yet"))
    return 0


def _weight(args: argparse.Namespace, settings) -> int:
    if not args.weight > 0:
        print(f"chant queue weight: the weight must be a positive number, got {args.weight}")
        return 2
    return asyncio.run(_weight_async(settings, args.guild_id, args.weight))


async def _weight_async(settings, guild_id: int, weight: float) -> int:
    from core.storage.db import open_database
    from core.storage.repositories import Repositories

    db = await open_database(settings.database)
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
