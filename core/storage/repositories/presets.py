"""Presets of a user or a guild (names case-insensitive, at most 25 per owner)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.storage.models import Preset
from core.storage.validation import MAX_NAME_CHARS, check_id, check_json_texts, check_name, check_text

MAX_PRESETS_PER_OWNER = 25  # Discord's autocomplete shows 25 choices


class PresetLimitReached(ValueError):
    """The owner already has :data:`MAX_PRESETS_PER_OWNER` presets."""


class PresetRepo:
    """Presets of a user (``owner_kind="user"``) or a guild (``"guild"``); names case-insensitive."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _where(self, owner_kind: str, owner_id: int) -> Any:
        if owner_kind not in ("user", "guild"):
            raise ValueError(f"preset owner must be 'user' or 'guild', got {owner_kind!r}")
        check_id(owner_id, f"{owner_kind} id")
        return and_(Preset.owner_kind == owner_kind, Preset.owner_id == owner_id)

    async def _lock_owner(self, owner_kind: str, owner_id: int) -> None:
        """Serialise saves per owner so the 25-preset cap and name uniqueness hold under concurrency.

        PostgreSQL: a transaction-scoped advisory lock (user ids as keys, guild ids negated).
        SQLite: ``Database.write_session()`` already holds the write lock.
        """
        self._where(owner_kind, owner_id)
        if self.session.bind.dialect.name == "postgresql":
            key = owner_id if owner_kind == "user" else -owner_id
            await self.session.execute(select(func.pg_advisory_xact_lock(key)))

    async def get(self, owner_kind: str, owner_id: int, name: str) -> Preset | None:
        key = check_name(name, "preset name").casefold()
        return await self.session.scalar(
            select(Preset).where(self._where(owner_kind, owner_id), Preset.name_key == key)
        )

    async def save(
        self, owner_kind: str, owner_id: int, name: str, params: Mapping[str, Any], *, created_by: int
    ) -> tuple[Preset, bool]:
        """Create or replace (same name, any case) a preset; returns ``(preset, created)``."""
        check_name(name, "preset name")
        params = dict(check_json_texts(dict(params), "preset"))
        await self._lock_owner(owner_kind, owner_id)
        existing = await self.get(owner_kind, owner_id, name)
        if existing is not None:
            existing.name, existing.params, existing.created_by = name, params, created_by
            await self.session.flush()
            return existing, False
        count = await self.session.scalar(
            select(func.count()).select_from(Preset).where(self._where(owner_kind, owner_id))
        )
        if (count or 0) >= MAX_PRESETS_PER_OWNER:
            raise PresetLimitReached(
                f"at most {MAX_PRESETS_PER_OWNER} presets per {owner_kind}: delete one before saving {name!r}"
            )
        preset = Preset(
            owner_kind=owner_kind,
            owner_id=owner_id,
            name=name,
            name_key=name.casefold(),
            params=params,
            created_by=check_id(created_by, "creator id"),
        )
        self.session.add(preset)
        await self.session.flush()
        return preset, True

    async def list(self, owner_kind: str, owner_id: int) -> list[Preset]:
        rows = await self.session.scalars(
            select(Preset).where(self._where(owner_kind, owner_id)).order_by(Preset.name_key)
        )
        return list(rows)

    async def names(self, owner_kind: str, owner_id: int, prefix: str = "", limit: int = 25) -> list[str]:
        """Names starting with ``prefix`` (case-insensitive), for autocomplete."""
        check_text(prefix, "prefix", max_chars=MAX_NAME_CHARS)
        key = prefix.casefold()
        stmt = select(Preset.name).where(self._where(owner_kind, owner_id)).order_by(Preset.name_key)
        if key:
            # A range on name_key instead of LIKE: no wildcards to escape in user text.
            stmt = stmt.where(Preset.name_key >= key, Preset.name_key < key + "\U0010ffff")
        return list(await self.session.scalars(stmt.limit(limit)))

    async def delete(self, owner_kind: str, owner_id: int, name: str) -> Preset | None:
        preset = await self.get(owner_kind, owner_id, name)
        if preset is not None:
            await self.session.delete(preset)
            await self.session.flush()
        return preset
