"""What runs in a bot process besides the use cases: the in-process worker (when there is one, with the
engine it owns) and the announcer's listening and polling."""

from __future__ import annotations

import asyncio

from core.engine.api import Engine
from core.queue.worker import Worker
from core.services.announcer import Announcer
from core.services.prompts import TagSource
from core.storage.db import Database


class Runtime:
    def __init__(
        self,
        db: Database,
        announcer: Announcer,
        worker: Worker | None,
        engine: Engine | None,
        tags: TagSource | None = None,
    ) -> None:
        self.db = db
        self.announcer = announcer
        self.worker = worker
        self.engine = engine
        self.tags = tags
        self._tag_load: asyncio.Task | None = None

    async def start(self) -> None:
        # PostgreSQL: other processes NOTIFY; the poller covers a missed note. SQLite is one process: a
        # bot without its own worker can only poll.
        await self.announcer.start(
            listen=not self.db.is_sqlite, poll=self.worker is None or not self.db.is_sqlite
        )
        if self.worker is not None:
            self.worker.start()
        if self.tags is not None:  # seconds for a big list: in a thread, while the bot already serves
            self._tag_load = asyncio.create_task(self.tags.load(), name="chant-tags")

    async def stop(self) -> None:
        if self._tag_load is not None and not self._tag_load.done():
            self._tag_load.cancel()
        if self.worker is not None:
            await self.worker.stop()
            if self.engine is not None:
                self.engine.close()  # frees the GPU (this process's worker owned the engine)
        await self.announcer.stop()
