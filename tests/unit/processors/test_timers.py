"""Durable per-customer timers and the partition's due index."""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson

from processors.domain.timers import (
    DEFERRED_TRIGGER,
    IGNORED_CHECK,
    MAX_TIMERS,
    DueIndex,
    Timer,
    cancel,
    is_scheduled,
    next_due,
    pop_due,
    schedule,
    timer_id,
)

T0 = 1_795_000_000.0


def timer(source: str, due_at: float, kind: str = DEFERRED_TRIGGER, **data: Any) -> Timer:
    return Timer.new(kind, "c1", source, due_at, data)


class TestTimerId:
    def test_deterministic_and_distinct(self) -> None:
        assert timer_id(DEFERRED_TRIGGER, "c1", "e1") == timer_id(DEFERRED_TRIGGER, "c1", "e1")
        ids = {
            timer_id(DEFERRED_TRIGGER, "c1", "e1"),
            timer_id(IGNORED_CHECK, "c1", "e1"),
            timer_id(DEFERRED_TRIGGER, "c2", "e1"),
            timer_id(DEFERRED_TRIGGER, "c1", "e2"),
        }
        assert len(ids) == 4
        assert len(timer_id(DEFERRED_TRIGGER, "c1", "e1")) == 32

    def test_round_trips_through_orjson(self) -> None:
        t = timer("e1", T0, trigger={"trigger_id": "abc", "expires_at": None})
        assert Timer.from_dict(orjson.loads(orjson.dumps(t.to_dict()))) == t


class TestSchedule:
    def test_idempotent(self) -> None:
        timers: list[dict[str, Any]] = []
        assert schedule(timers, timer("e1", T0))
        assert not schedule(timers, timer("e1", T0))
        # Same id with other data or time: still the first one.
        assert not schedule(timers, timer("e1", T0 + 50, extra=1))
        assert [Timer.from_dict(t) for t in timers] == [timer("e1", T0)]

    def test_kept_sorted_by_due_time(self) -> None:
        timers: list[dict[str, Any]] = []
        dues = [T0 + n for n in range(20)]
        random.Random(7).shuffle(dues)
        for n, due in enumerate(dues):
            schedule(timers, timer(f"e{n}", due))
        assert [t["due_at"] for t in timers] == sorted(dues)

    def test_full_list_refuses_new_timers(self) -> None:
        timers: list[dict[str, Any]] = []
        for n in range(MAX_TIMERS):
            assert schedule(timers, timer(f"e{n}", T0 + n))
        late, early = timer("late", T0 + 1000), timer("early", T0 - 1000)
        assert not schedule(timers, late)
        assert not schedule(timers, early)
        assert len(timers) == MAX_TIMERS
        assert not is_scheduled(timers, early.timer_id)
        assert is_scheduled(timers, timer("e0", T0).timer_id)
        assert schedule(timers, late, max_timers=MAX_TIMERS + 1)

    def test_stored_as_plain_dicts(self) -> None:
        timers: list[dict[str, Any]] = []
        schedule(timers, timer("e1", T0, trigger_id="abc"))
        assert orjson.loads(orjson.dumps(timers)) == timers
        assert timers[0]["data"] == {"trigger_id": "abc"}


class TestPopDue:
    def test_pops_due_timers_in_order_and_leaves_the_rest(self) -> None:
        timers: list[dict[str, Any]] = []
        for source, due in [("c", T0 + 30), ("a", T0 + 10), ("later", T0 + 100), ("b", T0 + 20)]:
            schedule(timers, timer(source, due))
        fired = pop_due(timers, T0 + 30)  # due_at == now is due
        assert [t.due_at for t in fired] == [T0 + 10, T0 + 20, T0 + 30]
        assert [t["due_at"] for t in timers] == [T0 + 100]
        # Popped timers are gone: they cannot fire twice.
        assert pop_due(timers, T0 + 30) == []
        assert [t.due_at for t in pop_due(timers, T0 + 1000)] == [T0 + 100]
        assert timers == []

    def test_same_due_time_orders_by_id(self) -> None:
        timers: list[dict[str, Any]] = []
        for source in "abcdef":
            schedule(timers, timer(source, T0))
        fired = pop_due(timers, T0)
        assert [t.timer_id for t in fired] == sorted(t.timer_id for t in fired)

    def test_nothing_due_leaves_the_list_alone(self) -> None:
        timers: list[dict[str, Any]] = []
        schedule(timers, timer("a", T0))
        before = copy.deepcopy(timers)  # list(timers) would share the timers
        assert pop_due(timers, T0 - 1) == []
        assert timers == before

    def test_next_due(self) -> None:
        timers: list[dict[str, Any]] = []
        assert next_due(timers) is None
        schedule(timers, timer("b", T0 + 5))
        schedule(timers, timer("a", T0 + 1))
        assert next_due(timers) == T0 + 1
        pop_due(timers, T0 + 1)
        assert next_due(timers) == T0 + 5


class TestCancel:
    def test_by_id(self) -> None:
        timers: list[dict[str, Any]] = []
        a, b = timer("a", T0), timer("b", T0 + 1)
        schedule(timers, a)
        schedule(timers, b)
        assert cancel(timers, a.timer_id) == [a]
        assert cancel(timers, a.timer_id) == []
        assert [Timer.from_dict(t) for t in timers] == [b]

    def test_by_predicate(self) -> None:
        timers: list[dict[str, Any]] = []
        schedule(timers, timer("a", T0, kind=IGNORED_CHECK, trigger_id="t1"))
        schedule(timers, timer("b", T0 + 1, kind=IGNORED_CHECK, trigger_id="t2"))
        schedule(timers, timer("c", T0 + 2, trigger_id="t1"))
        removed = cancel(timers, lambda t: t.data.get("trigger_id") == "t1")
        assert [t.due_at for t in removed] == [T0, T0 + 2]
        assert [t["data"]["trigger_id"] for t in timers] == ["t2"]


class TestDueIndex:
    def test_pops_due_keys_in_order_once(self) -> None:
        index = DueIndex()
        index.update(b"c", T0 + 3)
        index.update(b"a", T0 + 1)
        index.update(b"b", T0 + 2)
        index.update(b"z", None)
        assert len(index) == 3 and index.next_due() == T0 + 1
        assert index.pop_due(T0) == []
        assert index.pop_due(T0 + 2) == [b"a", b"b"]
        assert index.pop_due(T0 + 2) == []
        assert b"c" in index and b"a" not in index
        assert index.pop_due(T0 + 10) == [b"c"]
        assert len(index) == 0 and index.next_due() is None

    def test_update_moves_and_clears(self) -> None:
        index = DueIndex()
        index.update(b"a", T0 + 1)
        index.update(b"b", T0 + 1)
        index.update(b"a", T0 + 50)  # its timer fired or was cancelled; next one later
        index.update(b"b", None)  # no timers left
        assert index.pop_due(T0 + 10) == []
        assert index.get(b"a") == T0 + 50
        index.update(b"a", T0 + 5)  # an earlier timer was scheduled
        assert index.next_due() == T0 + 5
        assert index.pop_due(T0 + 100) == [b"a"]

    def test_ties_by_key(self) -> None:
        index = DueIndex([(b"b", T0), (b"a", T0), (b"c", T0)])
        assert index.pop_due(T0) == [b"a", b"b", b"c"]

    def test_rebuild_replaces_everything(self) -> None:
        index = DueIndex()
        index.update(b"stale", T0)
        index.rebuild([(b"a", T0 + 2), (b"b", None), (b"c", T0 + 1)])
        assert len(index) == 2 and b"stale" not in index
        assert index.pop_due(T0 + 5) == [b"c", b"a"]

    def test_heap_stays_bounded_under_churn(self) -> None:
        index = DueIndex()
        rng = random.Random(1)
        for n in range(10_000):
            index.update(bytes([n % 10]), T0 + rng.random() * 1000)
        assert len(index) == 10
        assert len(index._heap) <= 2 * len(index) + 65
        popped = index.pop_due(T0 + 1000)
        assert sorted(popped) == [bytes([n]) for n in range(10)]

    def test_matches_a_full_scan(self) -> None:
        rng = random.Random(3)
        index = DueIndex()
        truth: dict[bytes, float] = {}
        now = T0
        for _ in range(2_000):
            key = bytes([rng.randrange(50)])
            due = None if rng.random() < 0.2 else now + rng.uniform(-10, 100)
            index.update(key, due)
            if due is None:
                truth.pop(key, None)
            else:
                truth[key] = due
            if rng.random() < 0.1:
                now += rng.uniform(0, 30)
                expected = sorted((d, k) for k, d in truth.items() if d <= now)
                assert index.pop_due(now) == [k for _, k in expected]
                for _, k in expected:
                    del truth[k]
        assert len(index) == len(truth)
