"""The customer step around the pure ``step``: per batch, state records (pending for the
checkpoint), outputs on their topics, read-model writes handed to the writer; timers
fired from markers; events of partitions no longer owned left alone.

No broker, no Redis: the producer and the writer record what they are given, the
tables are RocksDB stores in a temporary folder (tests/unit/processors/test_checkpoint.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import processors.customer as customer_module
from processors.checkpoint import header_value
from processors.customer import CustomerProcessor
from processors.domain.timers import DueIndex
from producers.simulator import make_event
from tests.unit.processors.doubles import Event, Message, customer_processor, stored_state

TOPIC = "omni.customer-events"
CHANGELOG = "app-customers-changelog"  # the test Table's changelog topic name


def build(tmp_path: Path, **overrides: Any) -> CustomerProcessor:
    return customer_processor(tmp_path, **overrides)


def sent(processor: CustomerProcessor) -> list[tuple[Any, ...]]:
    return processor.producer.sent  # type: ignore[attr-defined]


def writes(processor: CustomerProcessor) -> list[Any]:
    return processor.writer.writes  # type: ignore[attr-defined]


def event(record: dict[str, Any], offset: int, partition: int = 0) -> Event:
    key = str(record["customer_id"]).encode()
    return Event(Message(key, orjson.dumps(record), partition, offset, timestamp=time.time()))


def marker(key: bytes, offset: int, partition: int = 0) -> Event:
    return Event(Message(key, b"", partition, offset))


def process(processor: CustomerProcessor, *events: Event) -> None:
    processor.process(list(events), ack=None)  # type: ignore[arg-type]


def check_in(customer: str) -> dict[str, Any]:
    return make_event(customer, "kiosk", "kiosk.checked_in", {"appointment_id": "A1"})


def cart(customer: str) -> dict[str, Any]:
    lines = [{"sku": "S1", "qty": 1, "unit_price": 2.5}]
    return make_event(
        customer, "web", "cart.updated", {"cart_id": "C1", "items": lines, "currency": "EUR"}
    )


def test_an_event_gives_a_pending_record_outputs_and_read_model_writes(tmp_path: Path) -> None:
    processor = build(tmp_path)
    process(processor, event(check_in("c1"), 41))
    state = stored_state(processor.records, b"c1", 0)
    assert state["customer_id"] == "c1"
    topics = [s[0] for s in sent(processor)]
    assert topics.count("trigger.push") == 1 and topics.count("trigger.crm") == 1
    assert topics.count("decision.log") == 2
    # One record (state and timeline) went to the changelog stamped with the batch's
    # last input offset, and waits for the checkpoint's commit (not in RocksDB yet).
    [record] = [s for s in sent(processor) if s[0] == CHANGELOG and s[1] == b"c1"]
    assert record[1] == b"c1" and (header_value(record[6]) or b"").endswith(b":41")
    assert processor.checkpoint.pending_events == 1
    assert processor.records.table.data.partition_db(0).get(b"c1") is None  # type: ignore[attr-defined]
    assert "omni:profile:c1" in {w.key for w in writes(processor)}
    assert processor.metrics.processed._value.get() == 1


def test_events_of_a_partition_no_longer_owned_are_left_to_its_new_owner(tmp_path: Path) -> None:
    processor = build(tmp_path)
    processed: list[tuple[int, int]] = []
    processor.on_processed = lambda partition, offset: processed.append((partition, offset))
    process(processor, event(check_in("c1"), 5, partition=7), event(check_in("c2"), 9))
    assert processor.records.get(b"c1", 7) is None
    assert stored_state(processor.records, b"c2", 0)["customer_id"] == "c2"
    keys = {s[1] for s in sent(processor)}
    assert b"c2" in keys and b"c1" not in keys
    assert processed == [(0, 9)]
    assert processor.checkpoint.pending_events == 1


def test_a_duplicate_writes_no_record_but_is_projected_again(tmp_path: Path) -> None:
    processor = build(tmp_path)
    record = check_in("c1")
    process(processor, event(record, 1))
    before = len(sent(processor))
    writes(processor).clear()
    process(processor, event(record, 2))  # the same event id again (a replay)
    assert sent(processor)[before:] == []  # no changelog record, no trigger, no decision
    assert "omni:profile:c1" in {w.key for w in writes(processor)}
    assert processor.metrics.duplicates._value.get() == 1


def test_a_due_timer_fires_when_its_marker_is_read(tmp_path: Path) -> None:
    processor = build(tmp_path, cart_abandon_after_seconds=0.001)
    process(processor, event(cart("c1"), 1))
    assert processor.rebuild_due({0, 1}) == 1
    assert processor.fire_due(time.time() + 1) == 1
    [marker_record] = [s for s in sent(processor) if s[0] == TOPIC]
    assert marker_record[1:4] == (b"c1", b"", 0)  # empty value, the customer's partition
    process(processor, marker(b"c1", 2))
    reminders = [orjson.loads(s[2]) for s in sent(processor) if s[0].startswith("trigger.")]
    assert [r["type"] for r in reminders] == ["cart_reminder"]
    assert processor.metrics.timers_fired._value.get() == 1
    state = stored_state(processor.records, b"c1", 0)
    assert [t["kind"] for t in state["timers"]] == ["ignored_check"]  # the cart timer is gone
    assert processor.fire_due(time.time() + 3600) == 0  # nothing left to fire


def test_a_marker_for_a_customer_without_a_record_changes_nothing(tmp_path: Path) -> None:
    processor = build(tmp_path)
    process(processor, marker(b"ghost", 1))
    assert processor.records.get(b"ghost", 0) is None
    assert [s[0] for s in sent(processor)] == []
    assert writes(processor) == []


def test_a_failing_timer_is_retried_in_a_minute_not_dead_lettered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = build(tmp_path, cart_abandon_after_seconds=0.001)
    process(processor, event(cart("c1"), 1))
    processor.rebuild_due({0})

    def broken(*args: Any) -> Any:
        raise RuntimeError("timer bug")

    monkeypatch.setattr(customer_module, "fire_timers", broken)
    started = time.time()
    process(processor, marker(b"c1", 2))
    assert not [s for s in sent(processor) if s[0] == "touchpoint.deadletter"]
    assert processor.metrics.timer_failures._value.get() == 1
    due: DueIndex = processor.due[0]
    assert due.pop_due(started + 59) == []
    assert due.pop_due(time.time() + 61) == [b"c1"]
    # The timer is still in the record, for the retry.
    assert len(stored_state(processor.records, b"c1", 0)["timers"]) == 1
