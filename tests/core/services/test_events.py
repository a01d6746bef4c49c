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


async def test_the_ledger_announces_a_start_once_and_positions_only_when_they_move() -> None:
    from core.services import JobQueued
    from core.services.events import Ledger

    ledger = Ledger(EventHub())
    sub = ledger.hub.subscribe()
    ledger.queued(1, 2, None)
    ledger.queued(2, 3, None)
    ledger.moved({1: (1, 5.0), 2: (3, 9.0)})  # job 2 did not move: not announced again
    assert ledger.started(1) and not ledger.started(1)
    ledger.moved({2: (1, None)})
    got = [await anext(sub) for _ in range(5)]
    assert got == [
        JobQueued(1, 2, None),
        JobQueued(2, 3, None),
        JobQueued(1, 1, 5.0),
        JobStarted(1),
        JobQueued(2, 1, None),
    ]
    assert ledger.claim_end(1) and not ledger.claim_end(1)
    ledger.release_end(1)  # it had not ended after all
    assert ledger.claim_end(1)


def test_once_forgets_the_oldest_ids_past_its_bound() -> None:
    from core.services.events import Once

    once = Once(keep=3)
    assert all(once.first(i) for i in range(7))
    assert not once.first(6) and 6 in once
    assert 0 not in once and once.first(0)  # forgotten: the smallest ids are the oldest
