"""In-process fan-out of job events: every subscriber gets every event, in order."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from core.services.types import JobEvent


class Subscription(AsyncIterator[JobEvent]):
    """Registered when created, so no event published after ``subscribe()`` is missed."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[JobEvent | None] = asyncio.Queue()
        hub._subs.add(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> JobEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        self._hub._subs.discard(self)
        self._queue.put_nowait(None)

    async def aclose(self) -> None:
        self.close()


class EventHub:
    """Fan-out to every subscriber. Events published while nobody listens are kept (up to
    ``backlog``) and handed to the next subscriber, so a bot that subscribes a moment after
    ``ChantService.start()`` misses no result."""

    def __init__(self, backlog: int = 10_000) -> None:
        self._subs: set[Subscription] = set()
        self._backlog: deque[JobEvent] = deque(maxlen=backlog)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        while self._backlog:
            sub._queue.put_nowait(self._backlog.popleft())
        return sub

    def publish(self, event: JobEvent) -> None:
        if not self._subs:
            self._backlog.append(event)
            return
        for sub in list(self._subs):
            sub._queue.put_nowait(event)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)
