"""Workers on the real PostgreSQL: SKIP LOCKED claims, leases, kill -9, LISTEN/NOTIFY events."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from core.bootstrap import bootstrap, build_store, open_database
from core.config import load_settings
from core.queue import notify
from core.services import Actor, ImagineOptions, JobCancelled, JobDone, JobProgress, JobStarted
from core.storage.models import Job, JobImage
from core.storage.repositories import Repositories
from core.types import GenerationRequest

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[3]


def write_config(tmp_path: Path, url: str, **queue) -> Path:
    q = {"lease_seconds": 1.5, "poll_interval_s": 0.1, **queue}
    lines = [
        'log_level = "INFO"',
        "[database]",
        f'url = "{url}"',
        "[queue]",
        *(f"{k} = {v}" for k, v in q.items()),
        "[engine]",
        "max_batch = 2",
        # The bot process runs no engine: it knows the workers' (fake engine's) model by this name.
        '[engine.models.fake-sd15]',
        'source = "/on/the/workers/fake-sd15.safetensors"',
        "[limits]",
        "max_queued_per_user = 50",
        "max_queued_per_guild = 50",
    ]
    path = tmp_path / "chant.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_worker(tmp_path: Path, config: Path, name: str, delay: float = 0.02) -> subprocess.Popen:
    env = dict(
        os.environ,
        CHANT_CONFIG=str(config),
        CHANT_FAKE_ENGINE="1",
        CHANT_FAKE_ENGINE_DELAY=str(delay),
        PYTHONPATH=str(ROOT),
    )
    env.pop("CHANT_DATABASE_URL", None)
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "core.cli", "worker"], cwd=tmp_path, env=env, stdout=log, stderr=log
    )


async def test_claims_never_overlap_under_competition(pg_fresh_url: str, tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, pg_fresh_url), env={})
    db = await open_database(settings)
    try:
        async with db.transaction(write=True) as s:
            repos = Repositories(s)
            for i in range(40):
                await repos.jobs.add(
                    user_id=1 + i % 4, channel_id=1, guild_id=1, request=GenerationRequest("x")
                )
        stores = [build_store(settings, db, owner=f"w{k}") for k in range(4)]
        ids = list(range(1, 41))

        async def grab(store):
            got = []
            for job_id in ids:  # every worker tries every job in the same order: maximal contention
                got += [c.job_id for c in await store.claim([job_id])]
            return got

        results = await asyncio.gather(*(grab(s) for s in stores))
        claimed = [j for r in results for j in r]
        assert sorted(claimed) == ids  # each job exactly once
        async with db.session() as s:
            owners = dict((await s.execute(select(Job.id, Job.lease_owner))).all())
        for k, r in enumerate(results):
            assert all(owners[j] == f"w{k}" for j in r)
    finally:
        await db.dispose()


async def test_expired_lease_returns_the_job_and_renewal_keeps_it(pg_fresh_url: str, tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, pg_fresh_url, lease_seconds=0.5), env={})
    db = await open_database(settings)
    try:
        async with db.transaction(write=True) as s:
            a = await Repositories(s).jobs.add(
                user_id=1, channel_id=1, guild_id=1, request=GenerationRequest("a")
            )
            b = await Repositories(s).jobs.add(
                user_id=1, channel_id=1, guild_id=1, request=GenerationRequest("b")
            )
        w1 = build_store(settings, db, owner="w1")
        assert [c.job_id for c in await w1.claim([a.id, b.id])] == [a.id, b.id]
        await asyncio.sleep(0.3)
        assert await w1.renew([a.id]) == {a.id}  # a renewed, b left to expire
        await asyncio.sleep(0.35)
        requeued, failed = await w1.recover()
        assert (requeued, failed) == ([b.id], [])
        assert await w1.state_of(b.id) == "queued" and await w1.state_of(a.id) == "running"
    finally:
        await db.dispose()


async def test_two_worker_processes_kill_9_one_every_job_finishes_exactly_once(
    pg_fresh_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, pg_fresh_url)
    settings = load_settings(config, env={})
    db = await open_database(settings)
    service = await bootstrap(settings, db=db, worker=False)  # a bot process without a GPU
    events = service.events()
    await service.start()
    workers: list[subprocess.Popen] = []
    try:
        ids = []
        for i in range(50):  # queued first: a busy 2-core box submits slower than workers drain
            guild = 1 + i % 5
            actor = Actor(user_id=100 + i % 10, guild_id=guild, channel_id=guild * 10)
            receipt = await service.submit_imagine(actor, ImagineOptions(prompt=f"job {i}", steps=5, seed=i))
            ids.append(receipt.job_id)
        workers += [start_worker(tmp_path, config, f"w{k}") for k in range(2)]

        victim = workers[0]
        deadline = time.monotonic() + 30
        killed_jobs: list[int] = []
        while not killed_jobs and time.monotonic() < deadline:  # wait until the victim is mid-job
            async with db.session() as s:
                busy = await s.scalar(
                    select(func.count()).where(
                        Job.state == "running", Job.lease_owner.like(f"%:{victim.pid}")
                    )
                )
            if busy:
                os.kill(victim.pid, signal.SIGSTOP)  # frozen: what it holds now is what it dies with
                async with db.session() as s:
                    killed_jobs = list(
                        await s.scalars(
                            select(Job.id).where(
                                Job.state == "running", Job.lease_owner.like(f"%:{victim.pid}")
                            )
                        )
                    )
                if not killed_jobs:
                    os.kill(victim.pid, signal.SIGCONT)
            await asyncio.sleep(0.01)
        assert killed_jobs, "the first worker never started a job"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)

        done_events: collections.Counter[int] = collections.Counter()

        async def collect():
            async for event in events:
                if isinstance(event, JobDone):
                    done_events[event.job.id] += 1
                    if set(done_events) >= set(ids):
                        return

        await asyncio.wait_for(collect(), 60)
        await asyncio.sleep(0.5)  # let any duplicate note arrive before counting
        assert sorted(done_events) == sorted(ids) and set(done_events.values()) == {1}

        async with db.session() as s:
            states = dict((await s.execute(select(Job.state, func.count()).group_by(Job.state))).all())
            images = dict(
                (await s.execute(select(JobImage.job_id, func.count()).group_by(JobImage.job_id))).all()
            )
            attempts = dict(
                (await s.execute(select(Job.id, Job.attempts).where(Job.id.in_(killed_jobs)))).all()
            )
        assert states == {"done": 50}
        assert images == dict.fromkeys(ids, 1)  # one image per job: nothing stored twice
        assert all(n == 2 for n in attempts.values())  # the killed jobs ran again, once
        assert workers[1].poll() is None  # the survivor is still serving
    finally:
        await service.stop()
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(10)
            except subprocess.TimeoutExpired:
                w.kill()
        await db.dispose()
    assert workers[1].returncode == 0, (tmp_path / "w1.log").read_text()[-3000:]


async def test_bot_process_sees_progress_and_cancels_a_job_on_a_worker_process(
    pg_fresh_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, pg_fresh_url)
    settings = load_settings(config, env={})
    db = await open_database(settings)
    service = await bootstrap(settings, db=db, worker=False)
    events = service.events()
    await service.start()
    worker = start_worker(tmp_path, config, "w", delay=0.05)
    try:
        owner = Actor(user_id=1, guild_id=1, channel_id=1)
        slow = await service.submit_imagine(owner, ImagineOptions(prompt="slow", steps=50))

        slow_steps: list[int] = []

        async def until(predicate):
            async for event in events:
                if isinstance(event, JobProgress) and event.job_id == slow.job_id:
                    slow_steps.append(event.step)
                if predicate(event):
                    return event

        await asyncio.wait_for(until(lambda e: isinstance(e, JobStarted) and e.job_id == slow.job_id), 30)
        progress = await asyncio.wait_for(
            until(lambda e: isinstance(e, JobProgress) and e.job_id == slow.job_id), 30
        )
        assert progress.total == 50 and progress.step < 50
        await service.cancel(owner, slow.job_id)
        await asyncio.wait_for(until(lambda e: isinstance(e, JobCancelled) and e.job.id == slow.job_id), 10)
        quick = await service.submit_imagine(owner, ImagineOptions(prompt="quick", steps=2))
        await asyncio.wait_for(until(lambda e: isinstance(e, JobDone) and e.job.id == quick.job_id), 30)
        # the worker stopped between steps: the last step's note (always sent) never came
        assert slow_steps and max(slow_steps) < 50
        assert await service.job_images(slow.job_id) == ()
        assert (await service.show(owner, slow.job_id)).state == "cancelled"
    finally:
        await service.stop()
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)
        await db.dispose()


async def _terminate_listeners(url: str) -> int:
    """Kill the backends of this database that LISTEN, as a server restart would (the shared server
    itself must stay up for the other suites)."""
    conn = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
        for row in pids:
            await conn.execute("SELECT pg_terminate_backend($1)", row["pid"])
        for _ in range(100):  # until they are gone: no note sent from now on can reach them
            left = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", [r["pid"] for r in pids]
            )
            if not left:
                break
            await asyncio.sleep(0.05)
        return len(pids)
    finally:
        await conn.close()


async def test_a_lost_listen_connection_comes_back_and_catches_up(pg_fresh_url: str, tmp_path: Path) -> None:
    """A bot with remote workers: after its LISTEN backend dies (a PostgreSQL restart), events flow again,
    and a job that started while nobody listened is announced started."""
    settings = load_settings(write_config(tmp_path, pg_fresh_url), env={})
    db = await open_database(settings)
    service = await bootstrap(settings, db=db, worker=False)
    events = service.events()
    await service.start()
    worker = build_store(settings, db, owner="remote")  # a worker elsewhere: it claims and NOTIFYs

    async def until(predicate, timeout: float = 15.0):
        async def run():
            async for event in events:
                if predicate(event):
                    return event

        return await asyncio.wait_for(run(), timeout)

    async def progress_arrives(job_id: int) -> None:
        # NOTIFY until one is heard (the new LISTEN may not be up yet when the first is sent).
        async def send():
            while True:
                await notify.publish(db, notify.EVENTS, notify.Note("progress", job_id, 3, 10, None))
                await asyncio.sleep(0.2)

        sender = asyncio.create_task(send())
        try:
            await until(lambda e: isinstance(e, JobProgress) and e.job_id == job_id)
        finally:
            sender.cancel()

    try:
        owner = Actor(user_id=1, guild_id=1, channel_id=1)
        first = await service.submit_imagine(owner, ImagineOptions(prompt="before"))
        assert [c.job_id for c in await worker.claim([first.job_id])] == [first.job_id]
        await until(lambda e: isinstance(e, JobStarted) and e.job_id == first.job_id)
        await progress_arrives(first.job_id)

        assert await _terminate_listeners(pg_fresh_url) == 1
        during = await service.submit_imagine(owner, ImagineOptions(prompt="during the outage"))
        assert [c.job_id for c in await worker.claim([during.job_id])] == [during.job_id]  # note lost
        await until(lambda e: isinstance(e, JobStarted) and e.job_id == during.job_id)
        await progress_arrives(during.job_id)
    finally:
        await service.stop()
        await db.dispose()
