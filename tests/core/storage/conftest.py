"""A migrated database per test, on SQLite (always) and PostgreSQL (when CHANT_TEST_POSTGRES_URL is set).

PostgreSQL tests run in a fresh schema per test (``search_path``), dropped afterwards, so runs are
isolated and repeatable on a shared server.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from core.storage import migrate
from core.storage.db import Database, create_engine

_TEMPLATE: dict[str, Path] = {}


async def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate once per session, then copy the file: each test still starts from real migrations."""
    if "path" not in _TEMPLATE:
        path = tmp_path_factory.mktemp("template") / "template.db"
        engine = create_engine(f"sqlite:///{path}")
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        await engine.dispose()
        _TEMPLATE["path"] = path
    return _TEMPLATE["path"]


@pytest.fixture
async def sqlite_db(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Database]:
    path = tmp_path / "chant.db"
    shutil.copy(await _sqlite_template(tmp_path_factory), path)
    db = Database(f"sqlite:///{path}")
    yield db
    await db.dispose()


@pytest.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[tuple[str, str]]:
    """(url, schema): an empty schema of its own on the real server."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield postgres_url, schema
    async with admin.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await admin.dispose()


def pg_database(url: str, schema: str, **kwargs) -> Database:
    # At most 20 connections: the shared test server allows 100 in all.
    kwargs = {"pool_size": 5, "max_overflow": 15, **kwargs}
    return Database(url, connect_args={"server_settings": {"search_path": schema}}, **kwargs)


@pytest.fixture
async def postgres_db(pg_schema: tuple[str, str]) -> AsyncIterator[Database]:
    db = pg_database(*pg_schema)
    await migrate.upgrade(db.engine)
    yield db
    await db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> Database:
    """The storage suite's database: every test that takes it runs on both backends."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        return request.getfixturevalue("postgres_db")
    return request.getfixturevalue("sqlite_db")
