from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from core.storage.db import Database, normalize_url, sqlite_path
from core.storage.models import JobMessage


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///chant.db", "sqlite+aiosqlite:///chant.db"),
        ("sqlite+aiosqlite:////abs/chant.db", "sqlite+aiosqlite:////abs/chant.db"),
        ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u:pw@h/db", "postgresql+asyncpg://u:***@h/db"),
    ],
)
def test_urls_are_normalised_to_async_drivers(url: str, expected: str) -> None:
    assert str(normalize_url(url)) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("postgresql+psycopg2://h/db", "driver 'psycopg2'"),
        ("not a url", "not a database URL"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_url(url)


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite:///data/chant.db") == "data/chant.db"
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("postgresql://h/db") is None


async def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(sqlite_db: Database) -> None:
    async with sqlite_db.session() as s:
        assert (await s.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await s.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await s.execute(text("PRAGMA busy_timeout"))).scalar() == 30_000


async def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError):
        async with db.transaction(write=True) as s:
            s.add(JobMessage(message_id=1, job_id=12345, channel_id=1, kind="result"))


async def test_write_sessions_take_the_sqlite_write_lock_at_begin(sqlite_db: Database) -> None:
    path = sqlite_path(sqlite_db.url)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        async with sqlite_db.transaction() as s:  # deferred: a read does not block writers
            await s.execute(text("SELECT 1"))
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        async with sqlite_db.transaction(write=True) as s:  # immediate: the lock is ours from BEGIN
            await s.execute(text("SELECT 1"))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()


@pytest.mark.postgres
async def test_postgres_scheme_is_accepted(postgres_url: str) -> None:
    db = Database(postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        async with db.session() as s:
            assert (await s.execute(text("SELECT 1"))).scalar() == 1
        assert db.dialect == "postgresql" and not db.is_sqlite
    finally:
        await db.dispose()


def test_the_schema_uses_the_naming_convention(tmp_path: Path) -> None:
    from core.storage.models import Base

    names = {idx.name for table in Base.metadata.tables.values() for idx in table.indexes}
    assert {"ix_jobs_user_id_id", "ix_jobs_state_id", "ix_job_messages_job_id"} <= names
