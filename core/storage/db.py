"""Async engine and sessions for SQLite (aiosqlite, the embedded default) and PostgreSQL (asyncpg).

* URLs: ``sqlite:///path`` / ``sqlite+aiosqlite:///path`` and ``postgresql://``, ``postgres://``
  or ``postgresql+asyncpg://`` are accepted and normalised to the async drivers.
* SQLite connections get WAL, foreign keys on, a busy timeout and ``synchronous=NORMAL``. The
  sqlite3 module's own transaction handling is switched off, so a transaction really starts at
  SQLAlchemy's ``begin`` (reads included): ``BEGIN`` for :meth:`Database.session`, and
  ``BEGIN IMMEDIATE`` (take the write lock first) for :meth:`Database.write_session`, which is
  what read-check-write work such as quota reservation must use.
* Repositories never commit; whoever opens the session owns the transaction::

      async with db.write_session() as session, session.begin():
          ...  # commits at the end, rolls back on an exception
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_only

from core.config import DatabaseSettings
from core.storage.faults import check_sqlite_file

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str | URL) -> URL:
    """The async-driver form of a database URL; a clear ValueError for anything else."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except Exception as exc:  # sqlalchemy.exc.ArgumentError
        raise ValueError(f"not a database URL: {url!r} ({exc})") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise ValueError(f"PostgreSQL driver {driver!r} is not supported: use postgresql+asyncpg://")
        return parsed.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        if driver not in ("", "aiosqlite", "pysqlite"):
            raise ValueError(f"SQLite driver {driver!r} is not supported: use sqlite+aiosqlite://")
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")


def sqlite_path(url: str | URL) -> str | None:
    """The file path of a SQLite URL (None for PostgreSQL or an in-memory database)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return parsed.database


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event starts transactions
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "foreign_keys=ON",
        f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "synchronous=NORMAL",
        "cache_size=-16384",  # 16 MiB page cache per connection
        "mmap_size=268435456",  # read through a 256 MiB shared memory map (fewer syscalls)
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    # Straight to aiosqlite: one trip to its thread instead of three (cursor, execute, close).
    await_only(conn.connection.driver_connection.execute(f"BEGIN {mode}"))


def create_engine(url: str | URL, *, echo: bool = False, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` with chant's per-connection settings."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        if path and not path.startswith("file:") and "uri" not in parsed.query:
            check_sqlite_file(path)  # a missing folder, read-only or damaged file: one clear line, untouched
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        engine = create_async_engine(parsed, echo=echo, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(parsed, echo=echo, **kwargs)


class Database:
    """An engine plus its two session factories. Build one per process (``core/bootstrap.py``)."""

    def __init__(self, url: str | URL, *, echo: bool = False, **engine_kwargs: Any) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url, echo=echo, **engine_kwargs)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        writer = self.engine.execution_options(sqlite_begin="IMMEDIATE") if self.is_sqlite else self.engine
        self.write_sessions = async_sessionmaker(writer, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def session(self) -> AsyncSession:
        """A session for reads and simple writes (SQLite: deferred ``BEGIN``)."""
        return self.sessions()

    def write_session(self) -> AsyncSession:
        """A session whose transactions take the write lock at once on SQLite (``BEGIN IMMEDIATE``).

        Use it for read-check-write work: quota reservation, claiming jobs, mark-posted.
        """
        return self.write_sessions()

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """``async with db.transaction(write=True) as session:`` commits on success, else rolls back."""
        async with self.write_session() if write else self.session() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


async def open_database(settings: DatabaseSettings, *, upgrade: bool | None = None) -> Database:
    """The process's Database for ``[database]``; migrates to the newest schema when configured (the
    default) or asked."""
    db = Database(settings.url, echo=settings.echo)
    if settings.upgrade_on_start if upgrade is None else upgrade:
        from core.storage import migrate

        await migrate.upgrade(db.engine)
    return db

