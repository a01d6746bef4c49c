"""The in-process event hub."""

from __future__ import annotations

import asyncio

from core.services import JobStarted
from core.services.events import EventHub


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = EventHub()
    a, b = hub.subscribe(), hub.subscribe()
    for i in range(3):
        hub.publish(JobStarted(i))
    assert [(await anext(a)).job_id for _ in range(3)] == [0, 1, 2]
    assert [(await anext(b)).job_id for _ in range(3)] == [0, 1, 2]


async def test_events_without_a_listener_go_to_the_next_subscriber_once() -> None:
    hub = EventHub(backlog=2)
    for i in range(3):
        hub.publish(JobStarted(i))  # nobody listens yet (the bot subscribes after start)
    first = hub.subscribe()
    assert [(await anext(first)).job_id for _ in range(2)] == [1, 2]  # bounded: the oldest dropped
    second = hub.subscribe()
    hub.publish(JobStarted(9))
    assert (await anext(second)).job_id == 9


async def test_closing_ends_iteration() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    hub.close()
    assert [e async for e in sub] == []
    assert hub.subscribers == 0
    await asyncio.sleep(0)
