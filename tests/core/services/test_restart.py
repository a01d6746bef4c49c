"""Never lose a job: restarts resume the queue, retry a crashed job once, post results exactly once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import select, update

from core.services import ImagineOptions, JobDone, JobFailed
from core.storage.models import Job
from tests.core.services.conftest import Harness, actor, wait_for

ROOT = Path(__file__).resolve().parents[3]

RUN_BOT_CORE = textwrap.dedent(
    """
    import asyncio
    from core.bootstrap import bootstrap
    from core.config import load_settings

    async def main():
        service = await bootstrap(load_settings())
        await service.start()
        await asyncio.sleep(20)  # the CRASH job kills this process long before
        await service.stop()

    asyncio.run(main())
    """
)


def run_process_that_crashes(tmp_path: Path, db_url: str) -> int:
    env = dict(os.environ, CHANT_FAKE_ENGINE="1", CHANT_DATABASE_URL=db_url, PYTHONPATH=str(ROOT))
    env.pop("CHANT_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_BOT_CORE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode


async def test_queued_jobs_resume_in_order_after_a_restart(tmp_path) -> None:
    h = Harness(tmp_path)
    service = await h.open(start=False)  # accepted, but the process "dies" before running them
    a = actor()
    ids = [
        (await service.submit_imagine(a, ImagineOptions(prompt=f"p{i}", steps=2))).job_id for i in range(3)
    ]
    await h.close()

    h2 = Harness(tmp_path)
    service = await h2.open(start=False)
    events = service.events()
    await service.start()
    done = [(await wait_for(events, lambda e: isinstance(e, JobDone))).job.id for _ in ids]
    assert done == ids
    await h2.close()


async def test_a_job_running_when_the_process_died_is_retried_once(tmp_path) -> None:
    h = Harness(tmp_path)
    service = await h.open(start=False)
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="x", steps=2))
    async with h.db.transaction(write=True) as s:  # the state a kill -9 mid-job leaves behind
        await s.execute(
            update(Job).where(Job.id == r.job_id).values(state="running", attempts=1, lease_owner="dead:1")
        )
    await h.close()

    h2 = Harness(tmp_path)
    service = await h2.open(start=False)
    events = service.events()
    await service.start()
    done = await wait_for(events, lambda e: isinstance(e, JobDone))
    assert done.job.id == r.job_id
    await h2.close()


async def test_a_job_that_kills_the_worker_twice_is_failed_with_a_reason(tmp_path) -> None:
    h = Harness(tmp_path)
    service = await h.open(start=False)
    bad = await service.submit_imagine(actor(), ImagineOptions(prompt="CRASH the driver", steps=2))
    good = await service.submit_imagine(actor(user=11), ImagineOptions(prompt="fine", steps=2))
    await h.close()
    url = h.settings.database.url

    assert run_process_that_crashes(tmp_path, url) == 137  # first try kills the process
    assert run_process_that_crashes(tmp_path, url) == 137  # the retry kills it again

    h3 = Harness(tmp_path)
    service = await h3.open(start=False)
    events = service.events()
    await service.start()
    failed = await wait_for(events, lambda e: isinstance(e, JobFailed))
    assert failed.job.id == bad.job_id and "2 times" in failed.reason
    done = await wait_for(events, lambda e: isinstance(e, JobDone))
    assert done.job.id == good.job_id
    async with h3.db.session() as s:
        attempts = await s.scalar(select(Job.attempts).where(Job.id == bad.job_id))
    assert attempts == 2
    await h3.close()


async def test_a_finished_result_is_posted_after_restart_exactly_once(tmp_path) -> None:
    h = Harness(tmp_path)
    service = await h.open(start=False)
    events = service.events()
    await service.start()
    r1 = await service.submit_imagine(actor(), ImagineOptions(prompt="one", steps=2))
    r2 = await service.submit_imagine(actor(), ImagineOptions(prompt="two", steps=2))
    for _ in range(2):
        await wait_for(events, lambda e: isinstance(e, JobDone))
    await service.record_result_messages(r1.job_id, [111])  # r1 was posted; the bot died before r2
    await h.close()

    h2 = Harness(tmp_path)
    service = await h2.open()
    pending = await service.unposted_results()
    assert [v.id for v in pending] == [r2.job_id]
    assert (await service.job_images(r2.job_id))[0].png.startswith(b"\x89PNG")
    await service.record_result_messages(r2.job_id, [222])
    await service.record_result_messages(r2.job_id, [222])  # a repeat is harmless
    assert await service.unposted_results() == []
    assert (await service.job_for_message(222)).id == r2.job_id
    await h2.close()

    h3 = Harness(tmp_path)
    service = await h3.open()
    assert await service.unposted_results() == []
    await h3.close()


async def test_a_bot_that_subscribes_after_start_still_gets_each_result_once(tmp_path) -> None:
    h = Harness(tmp_path)
    service = await h.open(start=False)
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="x", steps=2))
    await h.close()

    h2 = Harness(tmp_path)
    service = await h2.open()  # started: the queued job runs before the bot subscribes
    for _ in range(200):
        if (await service.show(actor(), r.job_id)).state == "done":
            break
        await asyncio.sleep(0.02)
    events = service.events()  # the bot's delivery subscribes now, then reads the backlog
    assert await service.unposted_results() == []
    done = await wait_for(events, lambda e: isinstance(e, JobDone))
    assert done.job.id == r.job_id
    await h2.close()


async def test_a_status_message_is_recorded_with_its_job_so_a_restart_finds_it(tmp_path) -> None:
    """The bot posts the status message first and submits with its id: one transaction stores both, so
    no kill between Discord's answer and a second write can leave the message unknown."""
    h = Harness(tmp_path)
    service = await h.open()
    events = service.events()
    first = await service.submit_imagine(
        actor(), ImagineOptions(prompt="a fox", steps=2), status_message_id=8001
    )
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == first.job_id)
    await service.record_result_messages(first.job_id, [9001])
    await h.close()

    h2 = Harness(tmp_path)
    service = await h2.open(start=False)  # nothing runs: the next jobs stay queued
    plain = await service.submit_imagine(actor(user=21), ImagineOptions(prompt="b"), status_message_id=8002)
    reroll = await service.reroll(actor(user=22), 9001, status_message_id=8003)
    variation = await service.variation(actor(user=23), 9001, status_message_id=8004)
    silent = await service.submit_imagine(actor(user=24), ImagineOptions(prompt="c"))
    await h2.close()  # "kill -9": the bot never wrote anything after the submits

    h3 = Harness(tmp_path)
    service = await h3.open(start=False)
    live = {job.id: (job.status_message_id, reply) for job, reply in await service.live_status_jobs()}
    assert live == {
        plain.job_id: (8002, None),
        reroll.job_id: (8003, 9001),
        variation.job_id: (8004, 9001),
    }
    assert silent.job_id not in live
    assert (await service.show(actor(user=21), plain.job_id)).status_message_id == 8002
    await h3.close()
