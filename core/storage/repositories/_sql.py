"""Helpers the repositories share: the dialect's INSERT and the DM guild key."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from core.storage.models import DM_GUILD
from core.storage.validation import check_id


def insert(session: AsyncSession, table: Any) -> Any:
    """The dialect's INSERT (with ``on_conflict_do_*``) for this session's database."""
    dialect = session.bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def guild_key(guild_id: int | None) -> int:
    """The key rows of a guild (or, for None, of the DMs) are stored under."""
    return DM_GUILD if guild_id is None else check_id(guild_id, "guild id")
