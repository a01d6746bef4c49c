"""The fair scheduler, driven by hand as the worker drives it (front, take, finish): no event loop and
no clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.queue.fair import FairScheduler, QueuedJob


def serve(s: FairScheduler, now: float = 0.0) -> QueuedJob | None:
    """The worker's decision: claim the front of the fair order (it is running from now on)."""
    front = s.front(1)
    return s.take(front[0].job_id, now) if front else None


def drain(s: FairScheduler, now: float = 0.0) -> list[QueuedJob]:
    out = []
    while (job := serve(s, now)) is not None:
        out.append(job)
        s.finish(job.job_id)
    return out


def submit_many(s: FairScheduler, spec: list[tuple[int | None, int, int]], start: int = 1) -> None:
    """spec: (guild, user, count)."""
    ids = itertools.count(start)
    for guild, user, n in spec:
        for _ in range(n):
            s.submit(QueuedJob(next(ids), guild, user))


def test_one_guild_one_user_is_fifo() -> None:
    s = FairScheduler()
    submit_many(s, [(1, 10, 5)])
    assert [j.job_id for j in drain(s)] == [1, 2, 3, 4, 5]


def test_an_empty_queue_has_no_front_and_nothing_to_take() -> None:
    s = FairScheduler()
    assert s.front(4) == [] and s.order() == [] and s.positions() == {}
    with pytest.raises(KeyError, match="not queued"):
        s.take(1)


def test_guilds_are_interleaved_at_equal_weight() -> None:
    s = FairScheduler()
    submit_many(s, [(1, 10, 30), (2, 20, 10), (3, 30, 2)])
    served = drain(s)
    first6 = [j.guild_id for j in served[:6]]
    assert first6.count(3) == 2
    assert first6 == [1, 2, 3, 1, 2, 3]


def test_users_within_a_guild_take_turns() -> None:
    s = FairScheduler()
    submit_many(s, [(1, 10, 10)])
    s.submit(QueuedJob(100, 1, 20))
    served = drain(s)
    # user 20 arrived after user 10's ten jobs but is served second, not eleventh
    assert [j.user_id for j in served[:3]] == [10, 20, 10]


def test_weight_gives_proportional_service() -> None:
    s = FairScheduler()
    s.set_guild(1, weight=2.0)
    submit_many(s, [(1, 10, 40), (2, 20, 40)])
    first30 = [serve(s).guild_id for _ in range(30)]
    assert first30.count(1) == 20 and first30.count(2) == 10


def test_cost_is_charged_big_jobs_get_fewer_turns() -> None:
    s = FairScheduler()
    for i in range(20):
        s.submit(QueuedJob(i, 1, 10, cost=4.0))
        s.submit(QueuedJob(100 + i, 2, 20, cost=1.0))
    first = [serve(s) for _ in range(15)]
    cost1 = sum(j.cost for j in first if j.guild_id == 1)
    cost2 = sum(j.cost for j in first if j.guild_id == 2)
    assert [j.guild_id for j in first].count(2) == 12
    assert abs(cost1 - cost2) <= 4.0


def test_dms_form_their_own_queue() -> None:
    s = FairScheduler()
    submit_many(s, [(1, 10, 5), (None, 20, 1), (None, 30, 1)])
    served = [j.guild_id for j in drain(s)]
    assert served[:4] == [1, None, 1, None]


def test_idle_guild_joins_at_current_virtual_time_without_banked_credit() -> None:
    s = FairScheduler()
    submit_many(s, [(1, 10, 20)])
    for _ in range(10):
        s.finish(serve(s).job_id)
    submit_many(s, [(2, 20, 10)], start=1000)
    served = [j.guild_id for j in drain(s)[:10]]
    assert served.count(2) == 5  # alternates from now on; no burst of 10 for guild 2


def test_taking_a_job_behind_the_head_charges_its_guild_as_if_served_in_order() -> None:
    """A worker may claim a batch-mate (or skip a head another worker holds): fairness holds."""
    s = FairScheduler()
    submit_many(s, [(1, 10, 2), (2, 20, 2)])  # fair order: 1, 3, 2, 4
    assert [j.job_id for j in s.order()] == [1, 3, 2, 4]
    s.finish(s.take(3).job_id)  # guild 2's first job, out of turn
    assert [j.guild_id for j in drain(s)] == [1, 2, 1]  # guild 2 already had its turn: 2, 1, 2, 1


def test_retry_hint_comes_from_measured_throughput() -> None:
    s = FairScheduler()
    s.submit(QueuedJob(1, 1, 10, cost=2.0))
    s.finish(serve(s, 0.0).job_id, 4.0)  # 2 units in 4 s -> 0.5 units/s
    assert s.rate == pytest.approx(0.5)
    s.submit(QueuedJob(2, 1, 10, cost=2.0))
    serve(s, 10.0)
    assert s.retry_hint("user", 1, 10, now=11.0) == pytest.approx(3.0)  # 1.5 units left at 0.5/s
    assert s.retry_hint("guild", 1, 99, now=11.0) == pytest.approx(3.0)
    assert s.retry_hint("user", 2, 10, now=11.0) is None  # nothing of this user's here
    assert FairScheduler().retry_hint("global", 1, 10) is None  # nothing measured yet


def test_a_rebuilt_queue_takes_its_measured_rate_and_worker_count() -> None:
    s = FairScheduler(rate=0.5, workers=2)
    s.add_running(QueuedJob(1, 1, 10, cost=2.0), started=0.0)
    s.submit(QueuedJob(2, 2, 20, cost=1.0))
    assert s.positions(now=2.0) == {1: (0, 0.0), 2: (1, pytest.approx(1.0))}  # 1 unit left / (0.5 × 2)


def test_cancel_removes_a_queued_job() -> None:
    s = FairScheduler()
    submit_many(s, [(1, 10, 2), (2, 20, 1)])
    assert s.cancel(1).job_id == 1
    assert s.cancel(1) is None
    s.submit(QueuedJob(9, 1, 10))
    assert [j.job_id for j in drain(s)] == [2, 3, 9]


def test_cancelling_a_guilds_only_job_leaves_no_ghost_turn() -> None:
    s = FairScheduler()
    submit_many(s, [(1, 10, 1), (2, 20, 2)])
    s.cancel(1)
    assert [j.job_id for j in drain(s)] == [2, 3]
    assert len(s) == 0


def test_finish_unknown_job_is_an_error() -> None:
    s = FairScheduler()
    with pytest.raises(KeyError, match="not running"):
        s.finish(5)


def test_duplicate_and_free_jobs_are_refused() -> None:
    s = FairScheduler()
    s.submit(QueuedJob(1, 1, 1))
    with pytest.raises(ValueError, match="already"):
        s.submit(QueuedJob(1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        s.submit(QueuedJob(2, 1, 1, cost=0))
    with pytest.raises(ValueError, match="positive"):
        s.set_guild(1, weight=0)


def test_positions_and_eta_follow_the_fair_order() -> None:
    s = FairScheduler()
    submit_many(s, [(1, 10, 3), (2, 20, 1)])
    pos = s.positions()
    assert pos[1][0] == 1 and pos[4][0] == 2 and pos[2][0] == 3 and pos[3][0] == 4
    assert pos[1][1] is None  # no throughput measured yet
    job = serve(s, 0.0)
    s.finish(job.job_id, 2.0)  # 1 unit per 2 s
    job = serve(s, 2.0)
    pos = s.positions(3.0)
    assert pos[job.job_id] == (0, 0.0)
    assert pos[2] == (1, pytest.approx(1.0))  # half of the running job left
    assert pos[3] == (2, pytest.approx(3.0))


# ---------------------------------------------------------------------- properties

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(0, 5), st.integers(0, 3), st.sampled_from([0.5, 1.0, 3.0])),
        st.tuples(st.just("serve"), st.just(0), st.just(0), st.just(0.0)),
        st.tuples(st.just("cancel"), st.integers(0, 60), st.just(0), st.just(0.0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_property_order_predicts_service_and_bookkeeping(script) -> None:
    s = FairScheduler()
    ids = itertools.count(1)
    submitted: dict[tuple[int | None, int], list[int]] = {}
    served: dict[tuple[int | None, int], list[int]] = {}
    live: set[int] = set()
    for op, a, b, cost in script:
        if op == "submit":
            guild = None if a == 0 else a
            job = QueuedJob(next(ids), guild, b, cost=cost)
            s.submit(job)
            submitted.setdefault((guild, b), []).append(job.job_id)
            live.add(job.job_id)
        elif op == "serve":
            predicted = s.order()
            job = serve(s)
            assert (job is None) == (not predicted)
            if job is not None:
                assert job is predicted[0]
                # serving the head leaves the rest of the predicted order as it was
                assert s.order() == predicted[1:]
                served.setdefault((job.guild_id, job.user_id), []).append(job.job_id)
                s.finish(job.job_id)
                live.discard(job.job_id)
        elif s.cancel(a) is not None:
            live.discard(a)
            for lst in submitted.values():
                if a in lst:
                    lst.remove(a)
        assert {j.job_id for j in s.queued()} == live and len(s) == len(live)
    predicted = s.order()
    rest = drain(s)
    assert rest == predicted  # order() predicts exactly what the worker will be served
    for job in rest:
        served.setdefault((job.guild_id, job.user_id), []).append(job.job_id)
    # every uncancelled job is served exactly once, in its user's submission order
    assert served == {k: v for k, v in submitted.items() if v}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 3), st.sampled_from([0.25, 1.0, 4.0])),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 5),
)
def test_property_no_starvation(flooders, victim_jobs) -> None:
    """A guild that arrives behind flooders is served within a bounded number of decisions."""
    s = FairScheduler()
    ids = itertools.count(1)
    guilds = set()
    for guild, user, cost in flooders:
        guilds.add(guild)
        for _ in range(30):
            s.submit(QueuedJob(next(ids), guild, user, cost=cost))
    victim = [QueuedJob(next(ids), 99, 1, cost=1.0) for _ in range(victim_jobs)]
    for job in victim:
        s.submit(job)
    served = 0
    pending = {j.job_id for j in victim}
    while pending:
        job = serve(s)
        s.finish(job.job_id)
        served += 1
        pending.discard(job.job_id)
    # each other guild can get at most (victim cost / its smallest job cost + 1) turns per victim job
    bound = victim_jobs * (len(guilds) * (1.0 / 0.25 + 1) + 1)
    assert served <= bound


def test_jain_index_of_the_fairness_scenario_is_near_one() -> None:
    s = FairScheduler()
    submit_many(s, [(1, 10, 30), (2, 20, 10), (3, 30, 2)])
    first6 = drain(s)[:6]
    per_guild = [sum(1 for j in first6 if j.guild_id == g) for g in (1, 2, 3)]
    jain = sum(per_guild) ** 2 / (3 * sum(x * x for x in per_guild))
    assert jain == pytest.approx(1.0)
