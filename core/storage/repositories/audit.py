"""The audit log of admin actions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.storage.models import AuditEntry
from core.storage.validation import check_id, check_json_texts, check_text


class AuditRepo:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(
        self,
        guild_id: int | None,
        actor_id: int,
        action: str,
        target: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        entry = AuditEntry(
            guild_id=guild_id,
            actor_id=check_id(actor_id, "actor id"),
            action=check_text(action, "audit action", max_chars=64, empty=False),
            target=check_text(target, "audit target", max_chars=200),
            details=dict(check_json_texts(dict(details or {}), "audit details")),
        )
        self.session.add(entry)
        await self.session.flush()
        return entry

    async def recent(self, guild_id: int | None, *, limit: int = 50) -> list[AuditEntry]:
        stmt = select(AuditEntry).where(
            AuditEntry.guild_id.is_(None) if guild_id is None else AuditEntry.guild_id == guild_id
        )
        return list(await self.session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit)))
