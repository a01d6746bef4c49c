"""A process killed inside a transaction leaves nothing half-written; backups are consistent."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.storage.backup import backup_sqlite
from core.storage.db import Database, sqlite_path
from core.storage.models import Job, JobImage, UsageEntry
from core.storage.repositories import Repositories
from core.types import GeneratedImage, GenerationRequest

ROOT = Path(__file__).resolve().parents[3]

WRITER = """
import asyncio, os, sys
from core.storage.db import Database
from core.storage.repositories import Repositories
from core.types import GeneratedImage, GenerationRequest

async def main():
    schema = os.environ.get("SCHEMA")
    kwargs = {"connect_args": {"server_settings": {"search_path": schema}}} if schema else {}
    db = Database(os.environ["URL"], **kwargs)
    async with db.transaction(write=True) as s:
        r = Repositories(s)
        job = await r.jobs.add(user_id=1, channel_id=2, guild_id=3, request=GenerationRequest(prompt="committed"))
    async with db.transaction(write=True) as s:
        r = Repositories(s)
        await r.quotas.reserve(3, 1, {"images": 1}, [])
        job = await r.jobs.add(user_id=1, channel_id=2, guild_id=3, request=GenerationRequest(prompt="half"))
        await r.jobs.add_images(job.id, [GeneratedImage(b"x" * 100_000, 1, 0, "i")])
        print("inside", flush=True)
        await asyncio.sleep(120)  # killed here, mid-transaction

asyncio.run(main())
"""


async def _kill_mid_write(db: Database, env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=60)
        assert line.strip() == "inside"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # Whatever the server or the SQLite file holds now: the committed job and nothing else.
    for _ in range(50):  # PostgreSQL notices the dead client within moments
        async with db.transaction(write=True) as s:
            prompts = list(await s.scalars(select(Job.params)))
            images = await s.scalar(select(func.count()).select_from(JobImage))
            usage = await s.scalar(select(func.count()).select_from(UsageEntry))
        if len(prompts) == 1:
            break
        await asyncio.sleep(0.1)
    assert [p["prompt"] for p in prompts] == ["committed"]
    assert (images, usage) == (0, 0)
    async with db.transaction(write=True) as s:  # and the database takes writes again
        await Repositories(s).jobs.add(
            user_id=1, channel_id=2, guild_id=3, request=GenerationRequest(prompt="after")
        )


async def test_killed_writer_leaves_no_half_written_job_sqlite(sqlite_db: Database) -> None:
    await _kill_mid_write(sqlite_db, {"URL": str(sqlite_db.url)})
    with sqlite3.connect(sqlite_path(sqlite_db.url)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.postgres
async def test_killed_writer_leaves_no_half_written_job_postgres(
    pg_schema: tuple[str, str], postgres_db: Database
) -> None:
    url, schema = pg_schema
    await _kill_mid_write(postgres_db, {"URL": url, "SCHEMA": schema})


async def test_backup_while_writing_is_a_consistent_copy(sqlite_db: Database, tmp_path: Path) -> None:
    """A writer commits jobs with two images each while the backup runs: the copy holds whole jobs."""
    stop = threading.Event()
    done = [0]

    async def writer() -> int:
        n = 0
        while not stop.is_set():
            async with sqlite_db.transaction(write=True) as s:
                r = Repositories(s)
                job = await r.jobs.add(
                    user_id=1, channel_id=2, guild_id=3, request=GenerationRequest(prompt=f"j{n}")
                )
                await r.jobs.add_images(
                    job.id, [GeneratedImage(b"a" * 5000, 1, 0, "i"), GeneratedImage(b"b" * 5000, 2, 0, "i")]
                )
            n += 1
            done[0] = n
            await asyncio.sleep(0)
        return n

    async def backups() -> list[Path]:
        out = []
        for i in range(3):
            while done[0] < 3 * (i + 1):
                await asyncio.sleep(0.01)
            dest = tmp_path / f"backup{i}.db"
            await asyncio.to_thread(backup_sqlite, sqlite_path(sqlite_db.url), dest)
            out.append(dest)
        stop.set()
        return out

    written, paths = await asyncio.gather(writer(), backups())
    for path in paths:
        assert not Path(f"{path}-wal").exists()  # standalone file
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            per_job = conn.execute(
                "SELECT job_id, count(*) FROM job_images GROUP BY job_id HAVING count(*) != 2"
            ).fetchall()
            assert 3 <= jobs <= written and per_job == []
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() is not None
    with pytest.raises(ValueError, match="already exists"):
        backup_sqlite(sqlite_path(sqlite_db.url), paths[0])
    with pytest.raises(ValueError, match="no SQLite database"):
        backup_sqlite(tmp_path / "missing.db", tmp_path / "x.db")


def test_chant_db_backup_cli(sqlite_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli import main

    dest = tmp_path / "copy.db"
    assert main(["db", "backup", str(dest), "--url", str(sqlite_db.url)]) == 0
    assert dest.exists() and "backed up" in capsys.readouterr().out
    assert main(["db", "backup", str(dest), "--url", str(sqlite_db.url)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["db", "backup", str(tmp_path / "pg.db"), "--url", "postgresql://u@127.0.0.1/x"]) == 2
    assert "pg_dump" in capsys.readouterr().err
