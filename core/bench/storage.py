"""``chant bench storage``: submit, history page and job-by-message-id timings on a big jobs table.

Builds a fresh database (SQLite: a temporary file; PostgreSQL: a temporary schema on the server
from ``--url`` or ``$CHANT_TEST_POSTGRES_URL``, dropped afterwards), migrates it, bulk-loads
``--jobs`` jobs with one result message each (sqlite3 ``executemany`` / PostgreSQL ``COPY``), then
times the service-layer operations through the repositories, each in its own transaction:

* submit: effective quota rules + atomic reserve + job insert + attach (a write transaction);
* history: a user's newest page of 10 plus their job count (users have ~100 jobs; a "heavy" user
  with 1% of all jobs is timed separately);
* by message: the job of a random result message id (🔁 on any old result).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.types import GenerationRequest

USERS = 10_000
HEAVY_USER = 999
CHANNEL = 500
MESSAGE_BASE = 10**17


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--jobs", type=int, default=1_000_000, help="rows in the jobs table (default 1,000,000)"
    )
    parser.add_argument("--samples", type=int, default=300, help="timed operations per figure")
    parser.add_argument("--url", help="PostgreSQL server URL (default: $CHANT_TEST_POSTGRES_URL)")


def run(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    return asyncio.run(_run(args))


_COLUMNS = (
    "id", "kind", "guild_id", "channel_id", "user_id", "state", "params", "model", "seed", "count", "width",
    "height", "steps", "sampler", "cost", "attempts", "created_at", "started_at", "finished_at", "posted",
)  # fmt: skip
_MSG_COLUMNS = ("message_id", "job_id", "channel_id", "kind", "position", "created_at")


def _rows(n: int, start: datetime):
    """Jobs spread over USERS users (plus one heavy user with 1% of them) in 10 guilds, all done."""
    params = json.dumps(
        GenerationRequest(
            prompt="a photo of a cat, (masterpiece:1.2), best quality, [dog:cat:0.5]",
            negative_prompt="blurry, lowres",
            seed=1,
            model="sd15",
        ).to_dict()
    )
    for i in range(1, n + 1):
        user = HEAVY_USER if i % 100 == 0 else 1000 + i % USERS
        t = start + timedelta(seconds=i)
        yield (
            (i, "imagine", 1 + i % 10, CHANNEL, user, "done", params, "sd15", i, 1, 512, 512, 20, "Euler a",
             5242880.0, 1, t, t, t + timedelta(seconds=2), True),
            (MESSAGE_BASE + i, i, CHANNEL, "result", 0, t + timedelta(seconds=3)),
        )  # fmt: skip


def _load_sqlite(path: str, n: int, start: datetime) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")

    def sql_time(value: Any) -> Any:
        return (
            value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")
            if isinstance(value, datetime)
            else value
        )

    jobs_sql = f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    msg_sql = (
        f"INSERT INTO job_messages ({', '.join(_MSG_COLUMNS)}) VALUES ({', '.join('?' * len(_MSG_COLUMNS))})"
    )
    rows = _rows(n, start)
    while True:
        chunk = [r for _, r in zip(range(50_000), rows, strict=False)]
        if not chunk:
            break
        conn.execute("BEGIN")
        conn.executemany(jobs_sql, ([sql_time(v) for v in job] for job, _ in chunk))
        conn.executemany(msg_sql, ([sql_time(v) for v in msg] for _, msg in chunk))
        conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


async def _load_postgres(db: Any, schema: str, n: int, start: datetime) -> None:
    async with db.engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        rows = _rows(n, start)
        while True:
            chunk = [r for _, r in zip(range(100_000), rows, strict=False)]
            if not chunk:
                break
            await raw.copy_records_to_table(
                "jobs", records=[j for j, _ in chunk], columns=_COLUMNS, schema_name=schema
            )
            await raw.copy_records_to_table(
                "job_messages", records=[m for _, m in chunk], columns=_MSG_COLUMNS, schema_name=schema
            )
        await raw.execute(f"SELECT setval(pg_get_serial_sequence('{schema}.jobs', 'id'), {n})")
        await raw.execute("VACUUM ANALYZE")  # the steady state autovacuum keeps (visibility map)


def _normal_user(rng: random.Random) -> int:
    """A user with ~jobs/USERS jobs (ids 1000 + k·100 give theirs to the heavy user)."""
    return 1000 + rng.randrange(USERS // 100) * 100 + rng.randrange(1, 100)


def _ms(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "median_ms": round(statistics.median(samples) * 1000, 3),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1] * 1000, 3),
    }


async def _time(fn, samples: int) -> dict[str, float]:
    """Wall-clock median/p95 and this process's CPU time per operation (event loop + driver threads)."""
    out = []
    cpu0 = time.process_time()
    for i in range(samples):
        t0 = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t0)
    return {**_ms(out), "cpu_ms_per_op": round((time.process_time() - cpu0) / samples * 1000, 3)}


async def _measure(db: Any, n: int, samples: int) -> dict[str, Any]:
    from core.storage.repositories import Repositories

    rng = random.Random(1)
    async with db.transaction(write=True) as s:
        await Repositories(s).quotas.set_rule(1, "guild", None, "images", "day", 10**9, updated_by=1)
        await Repositories(s).quotas.set_rule(1, "role", 7, "images", "hour", 10**9, updated_by=1)

    async def history(user: int) -> None:
        async with db.transaction() as s:
            page, total = await Repositories(s).jobs.history_page(user, per_page=10)
            assert page and total >= len(page)

    async def by_message(_: int) -> None:
        job_id = rng.randint(1, n)
        async with db.transaction() as s:
            job = await Repositories(s).jobs.by_message(MESSAGE_BASE + job_id)
            assert job is not None and job.id == job_id

    request = GenerationRequest(
        prompt="a cat, masterpiece", negative_prompt="blurry", seed=42, model="sd15", count=2
    )

    async def submit(i: int) -> None:
        """What ChantService.submit does in SQL: quota rules, job row, atomic reserve, one transaction."""
        user = 50_000 + i % 50
        async with db.transaction(write=True) as s:
            r = Repositories(s)
            allowances = await r.quotas.effective(1, user, (7,))
            job = await r.jobs.add(user_id=user, channel_id=CHANNEL, guild_id=1, request=request)
            await r.quotas.reserve(1, user, {"images": request.count}, allowances, job_id=job.id)

    await _time(submit, 20)  # warm up pools and caches
    result = {
        "submit": await _time(submit, samples),
        "history_page": await _time(lambda _: history(_normal_user(rng)), samples),
        "history_page_heavy_user": await _time(lambda _: history(HEAVY_USER), max(20, samples // 5)),
        "job_by_message_id": await _time(by_message, samples),
    }
    result["heavy_user_jobs"] = n // 100
    result["load_average_at_end"] = round(os.getloadavg()[0], 2)
    return result


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import text

    from core.storage import migrate
    from core.storage.db import Database

    start = datetime(2025, 1, 1, tzinfo=UTC)
    out: dict[str, Any] = {"backend": args.backend, "jobs": args.jobs, "samples": args.samples}
    out["cpus"] = os.cpu_count()
    out["load_average_at_start"] = round(os.getloadavg()[0], 2)
    if args.backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="chant-bench-") as tmp:
            path = str(Path(tmp) / "bench.db")
            db = Database(f"sqlite:///{path}")
            await migrate.upgrade(db.engine)
            await db.dispose()
            t0 = time.perf_counter()
            _load_sqlite(path, args.jobs, start)
            out["load_s"] = round(time.perf_counter() - t0, 1)
            out["db_mb"] = round(os.path.getsize(path) / 2**20)
            db = Database(f"sqlite:///{path}")
            try:
                out.update(await _measure(db, args.jobs, args.samples))
            finally:
                await db.dispose()
        return out

    url = args.url or os.environ.get("CHANT_TEST_POSTGRES_URL")
    if not url:
        raise SystemExit("chant bench storage --backend postgres needs --url or $CHANT_TEST_POSTGRES_URL")
    schema = f"chant_bench_{uuid.uuid4().hex[:8]}"
    admin = Database(url)
    async with admin.transaction() as s:
        await s.execute(text(f'CREATE SCHEMA "{schema}"'))
        out["server"] = (await s.execute(text("SHOW server_version"))).scalar()
    db = Database(url, connect_args={"server_settings": {"search_path": schema}})
    try:
        await migrate.upgrade(db.engine)
        t0 = time.perf_counter()
        await _load_postgres(db, schema, args.jobs, start)
        out["load_s"] = round(time.perf_counter() - t0, 1)
        out.update(await _measure(db, args.jobs, args.samples))
    finally:
        await db.dispose()
        async with admin.transaction() as s:
            await s.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()
    return out
