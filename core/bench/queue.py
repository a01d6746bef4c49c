"""``chant bench queue``: scheduler decision time, fairness, and claim + lease latency on PostgreSQL.

* decision: the worker's ``front`` + ``take`` + ``finish`` + one ``submit`` (queue size held steady)
  with 10,000 queued jobs across 1,000 guilds; target ≤ 50 µs.
* fairness: guilds submitting 30, 10 and 2 jobs at once at equal weight; where the small guild's
  jobs land in the served order, and Jain's index of per-guild service.
* claim (with ``--pg URL`` or ``$CHANT_TEST_POSTGRES_URL``): N worker processes compete for queued
  jobs in fair order with ``SELECT … FOR UPDATE SKIP LOCKED`` + lease; median time to a claim.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import random
import statistics
import time
import uuid

from core.queue.fair import FairScheduler, QueuedJob


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=10_000, help="queued jobs for the decision benchmark")
    parser.add_argument("--guilds", type=int, default=1_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument(
        "--pg", default=os.environ.get("CHANT_TEST_POSTGRES_URL"), help="PostgreSQL URL (claim bench)"
    )
    parser.add_argument("--workers", type=int, default=4, help="competing worker processes (claim bench)")
    parser.add_argument("--claims", type=int, default=200, help="claims per worker (claim bench)")
    parser.add_argument("--submits", type=int, default=200, help="ChantService.submit_imagine calls (SQLite)")


def run(args: argparse.Namespace, settings) -> dict:
    out: dict = {}
    out.update(bench_decision(args.jobs, args.guilds, args.decisions))
    out.update(bench_fairness())
    out.update(bench_submit(args.submits))
    if args.pg:
        out.update(bench_claims(args.pg, args.workers, args.claims))
    else:
        out["claim"] = "skipped: pass --pg URL or set CHANT_TEST_POSTGRES_URL"
    return out


# ---------------------------------------------------------------------- scheduler decision


def bench_decision(n_jobs: int, n_guilds: int, decisions: int) -> dict:
    rng = random.Random(7)
    fair = FairScheduler()
    ids = itertools.count(1)

    def new_job() -> QueuedJob:
        guild = rng.randrange(n_guilds)
        return QueuedJob(
            next(ids), guild, guild * 10 + rng.randrange(5), cost=rng.choice((0.5, 1.0, 2.0, 4.0))
        )

    for _ in range(n_jobs):
        fair.submit(new_job())
    samples = []
    clock = time.perf_counter_ns
    for _ in range(decisions):
        t0 = clock()
        job = _serve(fair)
        fair.finish(job.job_id)
        fair.submit(new_job())
        samples.append(clock() - t0)
    samples.sort()
    t0 = time.perf_counter()
    order = fair.order()
    positions_ms = (time.perf_counter() - t0) * 1000
    return {
        "decision_queued": len(fair),
        "decision_guilds": n_guilds,
        "decision_median_us": round(samples[len(samples) // 2] / 1000, 2),
        "decision_p99_us": round(samples[int(len(samples) * 0.99)] / 1000, 2),
        "positions_all_ms": round(positions_ms, 1),
        "positions_count": len(order),
    }


def _serve(fair: FairScheduler) -> QueuedJob | None:
    """The worker's decision: take the front of the fair order."""
    front = fair.front(1)
    return fair.take(front[0].job_id) if front else None


# ---------------------------------------------------------------------- fairness


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 0.0


def max_min_share(total: int, demands: list[int]) -> list[float]:
    """Max-min fair allocation of ``total`` jobs among guilds with these demands."""
    share = [0.0] * len(demands)
    left = float(total)
    active = [i for i, d in enumerate(demands) if d > 0]
    while active and left > 1e-9:
        each = left / len(active)
        for i in list(active):
            give = min(each, demands[i] - share[i])
            share[i] += give
            left -= give
            if share[i] >= demands[i] - 1e-9:
                active.remove(i)
    return share


def bench_fairness() -> dict:
    demands = {1: 30, 2: 10, 3: 2}
    fair = FairScheduler()
    ids = itertools.count(1)
    for guild, n in demands.items():
        for _ in range(n):
            fair.submit(QueuedJob(next(ids), guild, guild * 100))
    served = []
    while (job := _serve(fair)) is not None:
        fair.finish(job.job_id)
        served.append(job.guild_id)
    small = [i + 1 for i, g in enumerate(served) if g == 3]
    out = {"fairness_small_guild_served_at": small, "fairness_small_guild_within_first_6": max(small) <= 6}
    for window in (6, 30):
        got = [served[:window].count(g) for g in demands]
        share = max_min_share(window, list(demands.values()))
        out[f"fairness_jain_first_{window}"] = round(
            jain([g / s for g, s in zip(got, share, strict=True)]), 4
        )
    out["fairness_first_12"] = "".join("ABC"[g - 1] for g in served[:12])
    return out


# ---------------------------------------------------------------------- service submit (SQLite)


def bench_submit(n: int) -> dict:
    return asyncio.run(_bench_submit(n))


async def _bench_submit(n: int) -> dict:
    """``submit_imagine`` end to end on a fresh SQLite file: checks, quota, caps, insert, position."""
    import dataclasses
    import tempfile

    from core.bootstrap import bootstrap, open_database
    from core.config import LimitSettings, Settings
    from core.services import Actor, ImagineOptions
    from core.testing.fake_engine import FakeEngine

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings()
        settings = dataclasses.replace(
            settings,
            database=dataclasses.replace(settings.database, url=f"sqlite+aiosqlite:///{tmp}/bench.db"),
            limits=dataclasses.replace(
                LimitSettings(), max_queued_per_user=n, max_queued_per_guild=n, max_queued_global=n
            ),
        )
        db = await open_database(settings)
        service = await bootstrap(settings, db=db, engine=FakeEngine(), worker=False)
        latencies = []
        for i in range(n):
            actor = Actor(user_id=1 + i % 20, guild_id=1 + i % 5, channel_id=1)
            t0 = time.perf_counter()
            await service.submit_imagine(actor, ImagineOptions(prompt=f"a (red:1.2) fox {i}", steps=20))
            latencies.append((time.perf_counter() - t0) * 1000)
        await db.dispose()
    latencies.sort()
    return {
        "submit_sqlite_median_ms": round(latencies[len(latencies) // 2], 2),
        "submit_sqlite_p95_ms": round(latencies[int(len(latencies) * 0.95)], 2),
    }


# ---------------------------------------------------------------------- claims on PostgreSQL


def bench_claims(url: str, workers: int, claims: int) -> dict:
    return asyncio.run(_bench_claims(url, workers, claims))


async def _bench_claims(url: str, workers: int, claims: int) -> dict:
    import asyncpg
    from sqlalchemy.engine import make_url

    base = make_url(url).set(drivername="postgresql")
    name = f"chant_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(base.render_as_string(hide_password=False))
    await admin.execute(f'CREATE DATABASE "{name}"')
    db_url = base.set(database=name).render_as_string(hide_password=False)
    try:
        from core.storage import migrate
        from core.storage.db import Database
        from core.storage.repositories import Repositories
        from core.types import GenerationRequest

        db = Database(db_url)
        await migrate.upgrade(db.engine)
        total = workers * claims
        async with db.transaction(write=True) as s:
            repos = Repositories(s)
            for i in range(total):
                await repos.jobs.add(
                    user_id=1 + i % 50, channel_id=1, guild_id=1 + i % 20, request=GenerationRequest("bench")
                )
        await db.dispose()
        ctx = multiprocessing.get_context("spawn")
        with ctx.Manager() as manager, ctx.Pool(workers) as pool:
            barrier = manager.Barrier(workers)  # measure only once every worker is set up
            results = pool.starmap(
                _claim_worker, [(db_url, f"bench-{k}", claims, barrier) for k in range(workers)]
            )
        latencies = sorted(x for r in results for x in r[0])
        claimed = sum(len(r[0]) for r in results)
        return {
            "claim_workers": workers,
            "claim_jobs_claimed": claimed,
            "claim_median_ms": round(statistics.median(latencies), 2),
            "claim_p95_ms": round(latencies[int(len(latencies) * 0.95)], 2),
            "lease_renew_median_ms": round(statistics.median(x for r in results for x in r[1]), 2),
        }
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _claim_worker(db_url: str, owner: str, claims: int, barrier) -> tuple[list[float], list[float]]:
    return asyncio.run(_claim_loop(db_url, owner, claims, barrier))


async def _claim_loop(db_url: str, owner: str, claims: int, barrier) -> tuple[list[float], list[float]]:
    """One worker: the real Worker's claim path (fair order, SKIP LOCKED, lease) and a lease renewal."""
    from core.queue.store import JobStore
    from core.queue.worker import Worker
    from core.storage.db import Database

    db = Database(db_url, pool_size=2, max_overflow=0)
    store = JobStore(db, worker_id=owner, lease_seconds=30)
    worker = Worker(store, engine=None)
    await worker.sync(full=True)
    await store.renew([0])  # warm the connection pool and statement caches
    barrier.wait()
    latencies: list[float] = []
    renewals: list[float] = []
    while len(latencies) < claims:
        t0 = time.perf_counter()
        got = await worker.claim_next()  # one statement: pick in fair order, lock, set the lease
        if not got:
            break
        t1 = time.perf_counter()
        await store.renew([c.job_id for c in got])
        latencies.append((t1 - t0) * 1000)
        renewals.append((time.perf_counter() - t1) * 1000)
        for c in got:
            worker.fair.finish(c.job_id)
    await db.dispose()
    return latencies, renewals
