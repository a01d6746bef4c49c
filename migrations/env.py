"""Alembic environment for chant: targets ``core.storage.models.Base.metadata``.

Two ways in:

* in-process (``core.storage.migrate``, ``chant db``, tests, startup): the caller opens a connection
  and passes it as ``config.attributes["connection"]`` (Alembic cookbook: "sharing a connection");
* the plain ``alembic`` command: ``sqlalchemy.url`` from the config (or ``$CHANT_DATABASE_URL``),
  run on an async engine.

SQLite gets ``render_as_batch`` so ALTERs become table copies.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from core.storage.db import create_engine
from core.storage.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def render_item(type_: str, obj, autogen_context):
    """Render our TypeDecorators as their plain SQLAlchemy types, so revisions import nothing of ours."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_item=render_item,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("CHANT_DATABASE_URL")
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("CHANT_DATABASE_URL")
    if not url:
        raise SystemExit("no database URL: set sqlalchemy.url or $CHANT_DATABASE_URL (or use `chant db`)")
    asyncio.run(run_async_migrations(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
