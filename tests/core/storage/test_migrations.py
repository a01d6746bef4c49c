from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect

from core.storage import migrate
from core.storage.db import create_engine
from core.storage.models import Base
from tests.core.storage.conftest import pg_database

ROOT = Path(__file__).resolve().parents[3]
CHANT = [sys.executable, "-c", "import sys; from bot.cli import main; sys.exit(main())"]


async def _tables(engine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names())) - {"alembic_version"}


async def _round_trip(engine) -> None:
    assert await _tables(engine) == set()
    await migrate.upgrade(engine)
    assert await _tables(engine) == set(Base.metadata.tables)
    assert await migrate.current_revision(engine) == migrate.head_revision()
    assert await migrate.check(engine) is None  # models and migrations agree on this backend
    await migrate.downgrade(engine, "base")
    assert await _tables(engine) == set()
    assert await migrate.current_revision(engine) is None
    drift = await migrate.check(engine)
    assert drift is not None and "not up to date" in drift
    await migrate.upgrade(engine)
    assert await _tables(engine) == set(Base.metadata.tables)
    assert await migrate.check(engine) is None


async def test_upgrade_downgrade_upgrade_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        await _round_trip(engine)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_upgrade_downgrade_upgrade_postgres(pg_schema: tuple[str, str]) -> None:
    db = pg_database(*pg_schema)
    try:
        await _round_trip(db.engine)
    finally:
        await db.dispose()


def _chant(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CHANT_CONFIG", "CHANT_DATABASE_URL")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([*CHANT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_chant_db_commands_work_from_any_directory(tmp_path: Path) -> None:
    proc = _chant("db", "check", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "models and migrations agree" in proc.stdout
    assert not list(tmp_path.iterdir())  # the check used a temporary database, not ./chant.db
    proc = _chant("db", "upgrade", "--url", f"sqlite:///{tmp_path / 'live.db'}", cwd=tmp_path)
    assert proc.returncode == 0 and f"database at {migrate.head_revision()}" in proc.stdout, proc.stderr


def test_chant_db_check_fails_on_drift_and_bad_urls_are_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHANT_CONFIG", raising=False)
    monkeypatch.delenv("CHANT_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'live.db'}"
    assert main(["db", "check", "--database", "--url", url]) == 1
    assert "not up to date" in capsys.readouterr().err
    assert main(["db", "upgrade", "--url", url]) == 0
    assert main(["db", "check", "--database", "--url", url]) == 0
    assert main(["db", "current", "--url", url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == migrate.head_revision()
    assert main(["db", "downgrade", "base", "--url", url, "--yes"]) == 0
    assert "database at None" in capsys.readouterr().out
    assert main(["db", "current", "--url", "mysql://x@y/z"]) == 2
    assert "unsupported database 'mysql'" in capsys.readouterr().err


async def test_sqlite_batch_migrations_do_not_cascade_deletes(sqlite_db) -> None:
    """A batch migration re-creates ``jobs``; with foreign keys on, that would delete its images."""
    import sqlalchemy as sa
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import func, select, text

    from core.storage.models import JobImage
    from core.storage.repositories import Repositories
    from core.types import GeneratedImage, GenerationRequest

    async with sqlite_db.transaction(write=True) as s:
        r = Repositories(s)
        job = await r.jobs.add(user_id=1, channel_id=2, guild_id=3, request=GenerationRequest(prompt="x"))
        await r.jobs.add_images(job.id, [GeneratedImage(b"png", 1, 0, "i")])

    seen = []

    def recreate_jobs(cfg) -> None:
        conn = cfg.attributes["connection"]
        seen.append(conn.exec_driver_sql("PRAGMA foreign_keys").scalar())
        with Operations(MigrationContext.configure(conn)).batch_alter_table(
            "jobs", recreate="always"
        ) as batch:
            batch.add_column(sa.Column("extra", sa.Integer()))

    await migrate.run(sqlite_db.engine, recreate_jobs)
    assert seen == [0]
    async with sqlite_db.session() as s:
        assert await s.scalar(select(func.count()).select_from(JobImage)) == 1
        assert (await s.execute(text("PRAGMA foreign_keys"))).scalar() == 1


async def _move_sources(engine) -> None:
    """0003 moves each job's input blobs into source_images, one row per content, and back on downgrade."""
    import sqlalchemy as sa

    await migrate.upgrade(engine, "0002")
    photo, mask = b"\xff\xd8a phone photo", b"\x89PNG a mask"
    inputs = {1: (photo, None), 2: (photo, None), 3: (photo, mask), 4: (b"\x89PNG other", None)}
    async with engine.begin() as conn:
        for job_id in inputs:
            await conn.execute(
                sa.text(
                    "INSERT INTO jobs (id, kind, channel_id, user_id, state, params, seed, count, width, height,"
                    " steps, sampler, cost, attempts, posted, created_at) VALUES (:id, 'imagine', 1, 1, 'done',"
                    " '{}', 1, 1, 64, 64, 1, 'Euler', 1.0, 0, false, :t)"
                ),
                {"id": job_id, "t": datetime(2026, 1, job_id, tzinfo=UTC)},
            )
        for job_id, (init, m) in inputs.items():
            await conn.execute(
                sa.text("INSERT INTO job_inputs (job_id, init_image, mask_image) VALUES (:j, :i, :m)"),
                {"j": job_id, "i": init, "m": m},
            )
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        sources = (await conn.execute(sa.text("SELECT id, data, size_bytes FROM source_images"))).all()
        assert sorted(data for _, data, _ in sources) == sorted([photo, mask, b"\x89PNG other"])
        rows = await conn.execute(
            sa.text(
                "SELECT j.job_id, i.data, m.data FROM job_inputs j JOIN source_images i ON i.id = j.init_image_id"
                " LEFT JOIN source_images m ON m.id = j.mask_image_id"
            )
        )
        assert {job_id: (init, m) for job_id, init, m in rows} == inputs
    await migrate.downgrade(engine, "0002")
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT job_id, init_image, mask_image FROM job_inputs"))
        assert {job_id: (init, m) for job_id, init, m in rows} == inputs


async def test_0003_moves_input_images_into_source_images_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        await _move_sources(engine)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_0003_moves_input_images_into_source_images_postgres(pg_schema: tuple[str, str]) -> None:
    db = pg_database(*pg_schema)
    try:
        await _move_sources(db.engine)
    finally:
        await db.dispose()
