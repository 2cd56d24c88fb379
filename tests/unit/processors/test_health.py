"""Health that tells the truth: per-partition progress, stalls, /livez and its gauges."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from processors.health import PartitionProgress, Stall, liveness
from processors.metrics import Metrics
from processors.restore import RestoreProgress
from processors.runtime import WorkerRuntime
from processors.settings import Settings

EVENTS = TP("omni.customer-events", 0)
WEB = TP("touchpoint.web", 3)
STALL = 120.0


def tracker_at(tp: TP = EVENTS, processed: int = 9, highwater: int = 10) -> PartitionProgress:
    progress = PartitionProgress()
    progress.processed(tp, processed, now=0.0)
    progress.observe(tp, highwater, now=0.0)
    return progress


class TestStalls:
    def test_idle_partition_is_never_stalled(self) -> None:
        progress = tracker_at(processed=9, highwater=10)  # everything processed
        for now in (10.0, STALL, 86_400.0):
            progress.observe(EVENTS, 10, now)
            assert progress.stalled(now, STALL) == []
            assert progress.stall_seconds(EVENTS, now) == 0.0
        assert progress.lag(EVENTS) == 0

    def test_lag_without_progress_stalls_after_stall_seconds(self) -> None:
        progress = tracker_at(processed=9, highwater=10)
        progress.observe(EVENTS, 15, now=100.0)  # five messages arrive; none is processed
        assert progress.stalled(100.0 + STALL - 1, STALL) == []
        progress.observe(EVENTS, 16, now=100.0 + STALL)
        assert progress.stalled(100.0 + STALL, STALL) == [EVENTS]
        [stall] = progress.stalls(100.0 + STALL, STALL)
        assert stall == Stall(EVENTS, lag=6, seconds=STALL)

    def test_clock_starts_when_the_lag_appears_not_at_the_last_progress(self) -> None:
        # Idle for a day, then one message: not stalled the moment it arrives.
        progress = tracker_at(processed=9, highwater=10)
        progress.observe(EVENTS, 11, now=86_400.0)
        assert progress.stalled(86_400.0 + 1, STALL) == []
        assert progress.stall_seconds(EVENTS, 86_400.0 + 1) == 1.0

    def test_progress_resets_the_clock(self) -> None:
        progress = tracker_at(processed=9, highwater=1_000)
        progress.processed(EVENTS, 500, now=STALL - 1)  # still behind, but moving
        assert progress.stalled(STALL + 10, STALL) == []
        assert progress.stall_seconds(EVENTS, STALL + 10) == 11.0
        assert progress.stalled(2 * STALL - 1, STALL) == [EVENTS]
        progress.processed(EVENTS, 999, now=2 * STALL)  # caught up
        assert progress.stalled(10 * STALL, STALL) == []
        assert progress.lag(EVENTS) == 0

    def test_old_or_repeated_offsets_are_not_progress(self) -> None:
        progress = tracker_at(processed=9, highwater=20)
        progress.processed(EVENTS, 9, now=STALL - 1)
        progress.processed(EVENTS, 3, now=STALL - 1)
        assert progress.stalled(STALL, STALL) == [EVENTS]

    def test_commits_paused_while_processing_goes_on_is_no_processing_stall(self) -> None:
        # Redis down: offsets are not committed, the agent keeps processing. Only the
        # commit is stuck, and liveness excuses that while the read model is behind.
        progress = tracker_at(processed=9, highwater=10)
        progress.committed(EVENTS, 10, now=0.0)
        for minute in range(1, 11):
            now = 60.0 * minute
            progress.observe(EVENTS, 10 + 100 * minute, now)
            progress.processed(EVENTS, 5 + 100 * minute, now)
            assert [s.kind for s in progress.stalls(now, STALL)] == (
                ["commit"] if now - 60.0 >= STALL else []  # processed past it since 60 s
            )
            assert liveness(progress.stalls(now, STALL), STALL, now)[0] == 200
        assert progress.committed_lag(EVENTS) == 1_000

    def test_a_commit_stuck_behind_processing_is_a_stall(self) -> None:
        # An offset delivered and never acknowledged: later batches are processed, the
        # commit never passes it. Only a restart (read again from the commit) moves it.
        progress = tracker_at(processed=9, highwater=10)
        progress.committed(EVENTS, 10, now=0.0)
        progress.processed(EVENTS, 30, now=1.0)
        progress.observe(EVENTS, 31, now=1.0)
        assert progress.stalls(STALL - 1, STALL) == []
        [stall] = progress.stalls(STALL + 1, STALL)
        assert (stall.kind, stall.lag, stall.seconds) == ("commit", 21, STALL)  # since 1.0
        status, body = liveness([stall], STALL, read_model_lag_seconds=0.0)
        assert status == 503 and body["stalled"][0]["stalled"] == "commit"
        progress.committed(EVENTS, 25, now=STALL + 2)  # the commit moves: not stalled
        assert progress.stalls(STALL + 3, STALL) == []
        progress.committed(EVENTS, 31, now=STALL + 4)  # caught up with processing
        assert progress.stalls(10 * STALL, STALL) == []

    def test_a_commit_past_the_last_reported_batch_is_progress(self) -> None:
        progress = tracker_at(processed=9, highwater=100)
        progress.committed(EVENTS, 60, now=STALL - 1)
        assert progress.lag(EVENTS) == 40
        assert progress.stalled(STALL + 1, STALL) == []

    def test_a_restarted_worker_stuck_on_its_first_message(self) -> None:
        # Nothing processed since the restart: the committed offset is the baseline.
        progress = PartitionProgress()
        progress.committed(EVENTS, 40, now=0.0)
        progress.observe(EVENTS, 41, now=0.0)
        assert progress.stalled(STALL, STALL) == [EVENTS]
        # Same, but caught up before the restart: idle, not stalled.
        progress.committed(WEB, 41, now=0.0)
        progress.observe(WEB, 41, now=0.0)
        assert WEB not in progress.stalled(10 * STALL, STALL)

    def test_unknown_baseline_is_not_a_stall_until_the_start_is_known(self) -> None:
        progress = PartitionProgress()
        progress.observe(EVENTS, 50, now=0.0)
        assert progress.needs_start(EVENTS)
        assert progress.stalled(10 * STALL, STALL) == []
        assert progress.committed_lag(EVENTS) is None
        progress.start(EVENTS, 0, now=10 * STALL)  # a new group reads from the log start
        assert not progress.needs_start(EVENTS)
        assert progress.committed_lag(EVENTS) == 50
        assert progress.stalled(11 * STALL, STALL) == [EVENTS]

    def test_time_not_ready_does_not_count(self) -> None:
        progress = tracker_at(processed=9, highwater=100)
        progress.restart_clocks(STALL - 1)  # recovering tables until then
        assert progress.stalled(STALL + 10, STALL) == []
        assert progress.stalled(2 * STALL, STALL) == [EVENTS]

    def test_revoked_partitions_are_forgotten(self) -> None:
        progress = tracker_at(processed=9, highwater=100)
        progress.observe(WEB, 5, now=0.0)
        progress.forget([EVENTS])
        assert progress.partitions() == {WEB}
        assert progress.stalled(10 * STALL, STALL) == []
        assert progress.lag(EVENTS) is None and progress.committed_lag(EVENTS) is None

    def test_plain_tuples_find_the_same_partition(self) -> None:
        progress = tracker_at(processed=9, highwater=100)
        progress.processed(("omni.customer-events", 0), 99, now=1.0)  # type: ignore[arg-type]
        assert progress.lag(EVENTS) == 0

    def test_a_handled_batch_reports_each_partitions_last_offset(self) -> None:
        progress = tracker_at(processed=9, highwater=100)
        progress.observe(WEB, 10, now=0.0)
        batch: Any = [
            SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))
            for tp, offset in [(EVENTS, 10), (WEB, 4), (EVENTS, 11), (WEB, 9), (EVENTS, 12)]
        ]
        progress.processed_events(batch, now=5.0)
        assert progress.lag(EVENTS) == 87 and progress.lag(WEB) == 0
        assert progress.stall_seconds(EVENTS, 6.0) == 1.0

    def test_committed_lag(self) -> None:
        progress = tracker_at(processed=49, highwater=100)
        assert progress.committed_lag(EVENTS) is None  # nothing committed, no start known
        progress.committed(EVENTS, 30)
        assert progress.committed_lag(EVENTS) == 70
        progress.committed(EVENTS, 20)  # an older value never moves it back
        assert progress.committed_lag(EVENTS) == 70


class TestLiveness:
    def test_live_without_stalls(self) -> None:
        assert liveness([], STALL, 0.0) == (200, {"live": True})

    def test_a_stall_fails_and_names_the_partition(self) -> None:
        status, body = liveness([Stall(EVENTS, 6, 130.04)], STALL, 0.5)
        assert status == 503
        assert body == {
            "live": False,
            "stall_seconds": STALL,
            "stalled": [
                {
                    "topic": "omni.customer-events",
                    "partition": 0,
                    "lag": 6,
                    "seconds_without_progress": 130.0,
                    "stalled": "processing",
                }
            ],
        }
        json.dumps(body)

    def test_waiting_for_redis_is_not_a_reason_to_restart(self) -> None:
        status, body = liveness([Stall(EVENTS, 6, 130.0)], STALL, 300.0)
        assert status == 200
        assert body["live"] is True and body["waiting_for"] == "redis"
        assert body["stalled"][0]["partition"] == 0


# --- the runtime's wiring (no broker: a fake consumer) ---------------------------------


class FakeConsumer:
    def __init__(self) -> None:
        self.highwaters: dict[TP, int | None] = {}
        self.positions: dict[TP, int] = {}
        self.committed_offsets: dict[TP, int | None] = {}
        self.earliest: dict[TP, int] = {}
        self.earliest_asked: list[TP] = []

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TP) -> int | None:
        return self.positions.get(tp)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        self.earliest_asked.extend(tps)
        return {tp: self.earliest[tp] for tp in tps if tp in self.earliest}


@pytest.fixture
def runtime() -> WorkerRuntime:
    settings = Settings(stall_seconds=STALL)
    consumer = FakeConsumer()
    ready = asyncio.Event()
    ready.set()
    registry = CollectorRegistry()
    pipeline = SimpleNamespace(
        settings=settings,
        registry=registry,  # for the test's reads
        metrics=Metrics(registry),
        progress=PartitionProgress(),
        restore_progress=RestoreProgress(),
        writer=SimpleNamespace(lag_seconds=0.0),
        source_topics=frozenset([EVENTS.topic, WEB.topic]),
    )
    app: Any = SimpleNamespace(
        pipeline=pipeline,
        consumer=consumer,
        rebalancing=False,
        tables=SimpleNamespace(recovery=SimpleNamespace(completed=ready)),
    )
    return WorkerRuntime(app)


def gauge(runtime: WorkerRuntime, name: str, tp: TP) -> float | None:
    registry: CollectorRegistry = runtime.app.pipeline.registry  # type: ignore[attr-defined]
    labels = {"topic": tp.topic, "partition": str(tp.partition)}
    value: float | None = registry.get_sample_value(name, labels)
    return value


def livez(runtime: WorkerRuntime) -> tuple[int, dict[str, Any]]:
    response = asyncio.run(runtime._livez(None))  # type: ignore[arg-type]
    return response.status, json.loads(response.text or "")


def tick(runtime: WorkerRuntime, now: float) -> None:
    """What ``_update_gauges`` does per tick, with a chosen clock."""
    consumer: FakeConsumer = runtime.app.consumer  # type: ignore[assignment]
    assigned = consumer.assignment()
    runtime._forget_partitions(runtime._gauged - assigned)
    runtime._gauged |= assigned
    for tp in assigned:
        asyncio.run(runtime._observe_progress(tp, consumer.highwaters[tp], now))
    runtime._export_progress(assigned, now)


def test_stalled_partition_fails_livez_and_is_exported(
    runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer: FakeConsumer = runtime.app.consumer  # type: ignore[assignment]
    progress = runtime.app.pipeline.progress
    consumer.highwaters = {EVENTS: 50, WEB: 7}
    consumer.committed_offsets = {EVENTS: 40, WEB: 7}  # Faust's, read at assignment
    tick(runtime, now=0.0)
    assert gauge(runtime, "omni_consumer_committed_lag_messages", EVENTS) == 10
    assert gauge(runtime, "omni_partition_stalled", EVENTS) == 0

    tick(runtime, now=STALL + 1)
    assert gauge(runtime, "omni_partition_stalled", EVENTS) == 1
    assert gauge(runtime, "omni_partition_stall_seconds", EVENTS) == STALL + 1
    assert gauge(runtime, "omni_partition_stalled", WEB) == 0  # idle
    monkeypatch.setattr("processors.runtime.time.monotonic", lambda: STALL + 2)
    status, body = livez(runtime)
    assert status == 503
    assert [(s["topic"], s["partition"]) for s in body["stalled"]] == [("omni.customer-events", 0)]

    progress.processed(EVENTS, 45, now=STALL + 2)  # the agent moves again
    status, body = livez(runtime)
    assert (status, body) == (200, {"live": True})


def test_not_ready_never_fails_livez(
    runtime: WorkerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer: FakeConsumer = runtime.app.consumer  # type: ignore[assignment]
    consumer.highwaters = {EVENTS: 50}
    consumer.committed_offsets = {EVENTS: 40}
    tick(runtime, now=0.0)
    monkeypatch.setattr("processors.runtime.time.monotonic", lambda: 10 * STALL)
    runtime.app.rebalancing = True
    assert livez(runtime)[0] == 200


def test_not_ready_while_a_bulk_restore_runs(runtime: WorkerRuntime) -> None:
    consumer: FakeConsumer = runtime.app.consumer  # type: ignore[assignment]
    consumer.highwaters = {EVENTS: 50}
    assert runtime.is_ready()
    restores = runtime.app.pipeline.restore_progress
    restores.started(remaining=1_000)
    assert not runtime.is_ready()
    restores.advanced(400)
    assert restores.remaining == 600
    restores.finished(left=600, skipped=3)
    assert runtime.is_ready()
    assert (restores.remaining, restores.records, restores.skipped) == (0, 400, 3)


def test_new_group_asks_for_the_log_start_once(runtime: WorkerRuntime) -> None:
    consumer: FakeConsumer = runtime.app.consumer  # type: ignore[assignment]
    consumer.highwaters = {EVENTS: 50, WEB: 0, TP("touchpoint.sms", 1): None}
    consumer.earliest = {EVENTS: 20}
    tick(runtime, now=0.0)
    tick(runtime, now=1.0)
    assert consumer.earliest_asked == [EVENTS]  # empty or unfetched partitions: not asked
    assert gauge(runtime, "omni_consumer_committed_lag_messages", EVENTS) == 30


def test_revoked_partitions_stop_being_exported(runtime: WorkerRuntime) -> None:
    consumer: FakeConsumer = runtime.app.consumer  # type: ignore[assignment]
    consumer.highwaters = {EVENTS: 50, WEB: 7}
    consumer.committed_offsets = {EVENTS: 40, WEB: 7}
    tick(runtime, now=0.0)
    del consumer.highwaters[EVENTS]  # revoked
    tick(runtime, now=1.0)
    assert gauge(runtime, "omni_partition_stalled", EVENTS) is None
    assert gauge(runtime, "omni_consumer_committed_lag_messages", EVENTS) is None
    assert gauge(runtime, "omni_partition_stalled", WEB) == 0
    assert runtime.app.pipeline.progress.partitions() == {WEB}


def test_stall_seconds_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().stall_seconds == 120.0
    monkeypatch.setenv("OMNI_STALL_SECONDS", "30")
    assert Settings().stall_seconds == 30.0
    with pytest.raises(ValueError, match="stall_seconds"):
        Settings(stall_seconds=0)
