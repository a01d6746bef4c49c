"""PostgreSQL NOTIFY between chant processes: the wire format is written and read here, and only here.

Two channels. Workers tell bot processes on :data:`EVENTS` that a job started, progressed, finished or
failed (the bot loads the job and announces it); bot processes tell workers on :data:`JOBS` that a job
was queued or cancelled (they wake up and look at the table, which stays the source of truth). A note
is JSON ``{"t": kind, "id": job id}``, plus ``step``/``total``/``eta`` for progress. A note is sent
inside the transaction that made the change, so it arrives only if the change was committed.

SQLite serves one process: there is nobody to tell, and sending is a no-op there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
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


async def listen(db: Database, channel: str, on_note: Callable[[Note], None]) -> Any | None:
    """A dedicated asyncpg connection that calls ``on_note(note)`` per NOTIFY on ``channel``.

    Returns the connection (close it when done), or None when LISTEN is unavailable (SQLite, or the
    server refused): callers then rely on polling alone.
    """
    if db.is_sqlite:
        return None

    def on_payload(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        note = decode(payload)
        if note is None:
            log.debug("ignored a NOTIFY on %s that is not a chant note: %r", channel, payload[:200])
            return
        on_note(note)

    try:
        import asyncpg

        dsn = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        await conn.add_listener(channel, on_payload)
        return conn
    except Exception:
        log.warning("LISTEN %s is unavailable; polling instead", channel, exc_info=True)
        return None


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
