"""A throwaway PostgreSQL database per test (other suites share the server's `test` database)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url


@pytest.fixture
async def pg_fresh_url(postgres_url: str) -> AsyncIterator[str]:
    base = make_url(postgres_url).set(drivername="postgresql")
    name = f"chant_queue_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(base.render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
