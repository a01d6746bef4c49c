"""PostgreSQL LISTEN for the queue and the service (NOTIFY is sent inside SQL transactions)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from core.storage.db import Database

log = logging.getLogger(__name__)


async def listen(db: Database, channel: str, on_payload: Callable[[str], None]) -> Any | None:
    """A dedicated asyncpg connection that calls ``on_payload(text)`` per NOTIFY on ``channel``.

    Returns the connection (close it when done), or None when LISTEN is unavailable: callers then
    rely on polling alone.
    """
    if db.is_sqlite:
        return None
    try:
        import asyncpg

        dsn = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        await conn.add_listener(channel, lambda _c, _pid, _ch, payload: on_payload(payload))
        return conn
    except Exception:
        log.warning("LISTEN %s is unavailable; polling instead", channel, exc_info=True)
        return None
