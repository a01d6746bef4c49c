"""PostgreSQL NOTIFY between chant processes: the wire format is written and read here, and only here.

Two channels. Workers tell bot processes on :data:`EVENTS` that a job started, progressed, finished or
failed (the bot loads the job and announces it); bot processes tell workers on :data:`JOBS` that a job
was queued or cancelled (they wake up and look at the table, which stays the source of truth). A note
is JSON ``{"t": kind, "id": job id}``, plus ``step``/``total``/``eta`` for progress. A note is sent
inside the transaction that made the change, so it arrives only if the change was committed.

SQLite serves one process: there is nobody to tell, and sending is a no-op there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.storage.db import Database

log = logging.getLogger(__name__)

EVENTS = "chant_events"  # worker → bot processes: started | progress | done | failed
JOBS = "chant_jobs"  # bot processes and workers → workers: queued | cancel (wake up and look)
KINDS = ("started", "progress", "done", "failed", "queued", "cancel")

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


@dataclass(frozen=True)
class Note:
    kind: str  # one of KINDS
    job_id: int
    step: int = 0  # progress only
    total: int = 0
    eta_s: float | None = None


def encode(note: Note) -> str:
    data: dict[str, Any] = {"t": note.kind, "id": note.job_id}
    if note.kind == "progress":
        data.update(step=note.step, total=note.total, eta=note.eta_s)
    return json.dumps(data)


def decode(payload: str) -> Note | None:
    """The note in a NOTIFY payload, or None for anything else (never raises)."""
    try:
        data = json.loads(payload)
        kind, job_id = data["t"], int(data["id"])
        if kind not in KINDS:
            return None
        if kind == "progress":
            eta = data.get("eta")
            return Note(
                kind, job_id, int(data["step"]), int(data["total"]), None if eta is None else float(eta)
            )
        return Note(kind, job_id)
    except (ValueError, KeyError, TypeError):
        return None


def started_sql(id_column: str) -> str:
    """:func:`encode` of a "started" note as a SQL expression, for a statement that claims and notifies
    in one round trip (``RETURNING pg_notify(...)``)."""
    return f"json_build_object('t', 'started', 'id', {id_column})::text"


async def send(session: AsyncSession, channel: str, note: Note) -> None:
    """NOTIFY ``note`` when the session's transaction commits (PostgreSQL; nothing on SQLite)."""
    if session.bind.dialect.name != "postgresql":
        return
    await session.execute(_NOTIFY, {"channel": channel, "payload": encode(note)})


async def publish(db: Database, channel: str, note: Note) -> None:
    """:func:`send` in a transaction of its own (progress, which changes no row)."""
    if db.is_sqlite:
        return
    async with db.session() as s, s.begin():
        await send(s, channel, note)


class Listener:
    """LISTEN on ``channel`` on a dedicated asyncpg connection that comes back when it is lost.

    ``on_note(note)`` is called per NOTIFY. A server restart, a terminated backend or a cut network ends
    the connection (asyncpg reports it; a silent half-open one is found by a ping every
    ``check_every_s``); it is reopened with exponential backoff, and ``on_reconnect()`` is then called:
    every note sent meanwhile is lost, so the caller looks at the table for what changed.

    Nothing on SQLite (one process: there is nobody to listen to). If the server refuses at start,
    callers rely on polling until it accepts.
    """

    def __init__(
        self,
        db: Database,
        channel: str,
        on_note: Callable[[Note], None],
        *,
        on_reconnect: Callable[[], Awaitable[None] | None] | None = None,
        retry_s: tuple[float, float] = (0.5, 30.0),  # first and longest wait between reconnects
        check_every_s: float = 15.0,
    ) -> None:
        self.db = db
        self.channel = channel
        self.on_note = on_note
        self.on_reconnect = on_reconnect
        self.retry_s = retry_s
        self.check_every_s = check_every_s
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.reconnects = 0  # times the connection came back after a loss

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> bool:
        """Connect now and keep the connection up from here on; False when not (yet) listening."""
        if self.db.is_sqlite:
            return False
        try:
            await self._connect()
        except Exception:
            log.warning("LISTEN %s is unavailable; polling until it is", self.channel, exc_info=True)
            self._lost.set()
        self._task = asyncio.create_task(self._keep_up(), name=f"chant-listen-{self.channel}")
        return self.connected

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._drop()

    async def _connect(self) -> None:
        import asyncpg

        dsn = self.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn, server_settings={"application_name": f"chant listen {self.channel}"})
        try:
            await conn.add_listener(self.channel, self._on_payload)
        except BaseException:
            conn.terminate()
            raise
        self._lost.clear()
        conn.add_termination_listener(lambda _conn: self._lost.set())
        self._conn = conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
            conn.terminate()

    def _on_payload(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        note = decode(payload)
        if note is None:
            log.debug("ignored a NOTIFY on %s that is not a chant note: %r", self.channel, payload[:200])
            return
        self.on_note(note)

    async def _keep_up(self) -> None:
        while True:
            await self._wait_until_lost()
            await self._drop()
            log.warning("LISTEN %s lost; reconnecting", self.channel)
            delay = self.retry_s[0]
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                    break
                except Exception as exc:
                    log.info("LISTEN %s: reconnecting failed (%s); again in %.1fs", self.channel, exc, delay)
                    delay = min(2 * delay, self.retry_s[1])
            self.reconnects += 1
            log.warning("LISTEN %s is back; catching up on what changed meanwhile", self.channel)
            if self.on_reconnect is not None:
                try:
                    result = self.on_reconnect()
                    if result is not None:
                        await result
                except Exception:
                    log.exception("catching up after LISTEN %s came back failed", self.channel)

    async def _wait_until_lost(self) -> None:
        """Return when the connection ended, or stopped answering a ping."""
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self.check_every_s)
                return
            try:
                await asyncio.wait_for(self._conn.execute("SELECT 1"), min(10.0, self.check_every_s))
            except Exception:
                return


class ProgressNotifier:
    """The listener of a worker in its own process (``chant worker``): tells bot processes about
    progress. Start and finish are NOTIFYed by the store's transactions that record them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def job_started(self, job_id: int) -> None:
        pass

    async def job_progress(
        self, job_id: int, step: int, total: int, eta_s: float | None, preview_png: bytes | None
    ) -> None:
        try:
            await publish(self.db, EVENTS, Note("progress", job_id, step, total, eta_s))
        except Exception:
            log.debug("progress note for job %s not sent", job_id, exc_info=True)

    async def job_finished(self, job_id: int) -> None:
        pass
