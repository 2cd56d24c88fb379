"""The customer agent and the record format: one record per customer (state and
timeline), records and timelines written by the previous layout (state JSON in
``customers``, timeline JSON in ``timelines``) still load and migrate, a corrupt
record is dead-lettered, a record over OMNI_MAX_STATE_BYTES falls back to the old
layout."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors import customer as customer_module
from processors.customer import CustomerProcessor
from processors.domain.record_codec import V1, decode_record
from tests.unit.processors.doubles import customer_processor, stored_state, stored_timeline
from tests.unit.processors.test_customer import (
    CHANGELOG,
    cart,
    check_in,
    event,
    marker,
    process,
    sent,
    writes,
)

KEY = b"c1"


def profile(customer: str, language: str) -> dict[str, Any]:
    from producers.simulator import make_event

    return make_event(customer, "crm", "profile.updated", {"language": language})


def history() -> list[dict[str, Any]]:
    return [check_in("c1"), profile("c1", "fr"), cart("c1")]


def store_directly(table: Any, key: bytes, value: bytes) -> None:
    """In RocksDB, as a store restored from an older worker's changelog holds it."""
    table.table.data.partition_db(0)[key] = value


def legacy_processor(tmp_path: Path, state: Any, timeline: Any, **overrides: Any) -> Any:
    """A worker whose store holds her records as the previous layout wrote them."""
    processor = customer_processor(tmp_path, **overrides)
    store_directly(processor.records, KEY, orjson.dumps(state))  # plain state JSON
    store_directly(processor.timelines, KEY, orjson.dumps(timeline))
    return processor


def native(tmp_path: Path, **overrides: Any) -> CustomerProcessor:
    """A worker that processed her history in the current layout."""
    processor = customer_processor(tmp_path, **overrides)
    for offset, record in enumerate(history()):
        process(processor, event(record, offset))
    return processor


def test_one_record_per_customer_holds_state_and_timeline(tmp_path: Path) -> None:
    processor = native(tmp_path)
    value = processor.records.get(KEY, 0)
    assert value is not None and value[0] == V1
    assert stored_state(processor.records, KEY)["traits"]["language"] == "fr"
    timeline = stored_timeline(processor.records, KEY)
    assert [e["type"] for e in timeline] == ["cart.updated", "profile.updated", "kiosk.checked_in"]
    assert processor.timelines.get(KEY, 0) is None  # nothing in the old table
    # One changelog record per customer per batch (the test tables share a topic name).
    assert len([s for s in sent(processor) if s[0] == CHANGELOG and s[1] == KEY]) == 3


def test_old_layout_loads_to_the_same_state_and_timeline_and_migrates(tmp_path: Path) -> None:
    now_native = native(tmp_path / "new")
    state = stored_state(now_native.records, KEY)
    timeline = stored_timeline(now_native.records, KEY)
    old = legacy_processor(tmp_path / "old", state, timeline)

    loaded, loaded_timeline, from_old_table = old._load(KEY, 0)
    assert loaded is not None and orjson.loads(orjson.dumps(loaded)) == state
    assert loaded_timeline is not None and orjson.loads(loaded_timeline) == timeline
    assert from_old_table

    # The next event: the same outputs as on the native worker, and she is migrated.
    next_event = profile("c1", "de")
    for processor in (now_native, old):
        writes(processor).clear()
        process(processor, event(next_event, 10))
    assert stored_state(old.records, KEY) == stored_state(now_native.records, KEY)
    assert stored_timeline(old.records, KEY) == stored_timeline(now_native.records, KEY)
    assert len(stored_timeline(old.records, KEY)) == 4
    assert {w.key: w.value for w in writes(old)} == {w.key: w.value for w in writes(now_native)}
    value = old.records.get(KEY, 0)
    assert value is not None and value[0] == V1
    # Her old timeline record is deleted (a tombstone on its changelog).
    assert old.timelines.get(KEY, 0) is None
    assert (CHANGELOG, KEY, None) in [s[:3] for s in sent(old)]


def test_an_old_record_without_a_timeline_record_loads(tmp_path: Path) -> None:
    state = stored_state(native(tmp_path / "new").records, KEY)
    processor = customer_processor(tmp_path / "old")
    store_directly(processor.records, KEY, orjson.dumps(state))
    assert processor._load(KEY, 0)[1:] == (None, False)
    process(processor, event(profile("c1", "de"), 1))
    assert [e["type"] for e in stored_timeline(processor.records, KEY)] == ["profile.updated"]
    assert not [s for s in sent(processor) if s[2] is None]  # nothing to delete


def test_timers_of_old_records_are_indexed_and_fire(tmp_path: Path) -> None:
    donor = native(tmp_path / "new", cart_abandon_after_seconds=0.001)
    state = stored_state(donor.records, KEY)
    timeline = stored_timeline(donor.records, KEY)
    old = legacy_processor(tmp_path / "old", state, timeline, cart_abandon_after_seconds=0.001)
    store_directly(old.records, b"c2", orjson.dumps({**state, "customer_id": "c2", "timers": []}))
    assert old.rebuild_due({0}) == 1  # c1's cart timer; c2 has none
    assert old.fire_due(time.time() + 1) == 1
    process(old, marker(KEY, 5))
    assert "cart_reminder" in [orjson.loads(s[2])["type"] for s in sent(old) if "trigger." in s[0]]
    assert old.rebuild_due({0}) == 1  # the ignored check, read from the new record's header


def test_a_corrupt_record_dead_letters_her_events_and_stays(tmp_path: Path) -> None:
    processor = customer_processor(tmp_path)
    corrupt = bytes([V1]) + b"\x00" * 8 + b"not a zstd frame"
    store_directly(processor.records, KEY, corrupt)
    process(processor, event(check_in("c1"), 1), event(check_in("c2"), 2))
    [letter] = [orjson.loads(s[2]) for s in sent(processor) if s[0] == "touchpoint.deadletter"]
    assert "RecordDecodeError" in letter["errors"][0]
    assert processor.records.get(KEY, 0) == corrupt  # left as it was
    assert stored_state(processor.records, b"c2")["customer_id"] == "c2"  # others go on
    assert processor.rebuild_due({0}) == 0  # skipped (logged), no crash


def test_a_record_over_the_limit_falls_back_to_the_old_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = native(tmp_path)
    limit = processor.ctx.policy.max_state_bytes
    real = customer_module.encode_record
    # A compressed record over the limit (high-entropy text in a long timeline).
    monkeypatch.setattr(customer_module, "encode_record", lambda *a: b"\x01" * (limit + 1))
    process(processor, event(profile("c1", "de"), 10))
    value = processor.records.get(KEY, 0)
    assert value is not None and value[0] == ord("{") and len(value) <= limit
    assert decode_record(value).timeline is None
    timeline = orjson.loads(processor.timelines.get(KEY, 0) or b"null")
    assert len(timeline) == 4
    assert processor._load(KEY, 0)[2]  # loads, the timeline from the old table

    monkeypatch.setattr(customer_module, "encode_record", real)
    process(processor, event(profile("c1", "it"), 11))
    assert len(stored_timeline(processor.records, KEY)) == 5
    assert processor.timelines.get(KEY, 0) is None
