"""Forgetting a customer (privacy.erasure_requested): the pure step decides, the agent
writes tombstones and deletes every read-model key she had."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from processors.app import step_context
from processors.customer import CustomerProcessor
from processors.domain.erasure import ERASURE_EVENT, ERASURE_RULE
from processors.domain.model import ERASED, CustomerState, Event
from processors.domain.step import EMPTY_CONTACT, StepContext, step
from processors.rulebook import load_ruleset
from processors.settings import Settings
from processors.tools.erase import erasure_event
from producers.simulator import make_event
from schemas import EventValidator
from schemas.validate import Rejection, validate_record
from tests.unit.processors.doubles import Event as RawEvent
from tests.unit.processors.doubles import (
    Message,
    customer_processor,
    stored_state,
    stored_timeline,
)

CID = "maria"


def context(**overrides: Any) -> StepContext:
    settings = Settings(**overrides)
    return step_context(settings, load_ruleset(Path(settings.rules_dir), settings.rule_delays()))


def events_of_a_known_customer(customer: str = CID) -> list[dict[str, Any]]:
    """Profile, overdraft, coupon, cart (a timer), consent: something in every place."""
    lines = [{"sku": "S1", "qty": 1, "unit_price": 2.5}]
    return [
        make_event(customer, "crm", "profile.updated", {"home_country": "DE", "language": "de"}),
        make_event(
            customer,
            "mobile",
            "offer.accepted",
            {"offer_id": "OD-1", "offer_type": "overdraft", "limit": 300, "currency": "EUR"},
        ),
        make_event(
            customer,
            "tv",
            "coupon.issued",
            {"coupon_id": "CPN-9", "value": 5, "currency": "EUR", "valid_hours": 48},
        ),
        make_event(
            customer, "web", "cart.updated", {"cart_id": "C1", "items": lines, "currency": "EUR"}
        ),
        make_event(
            customer,
            "email",
            "consent.updated",
            {"channel": "sms", "purpose": "marketing", "granted": False},
        ),
    ]


def erasure(customer: str = CID, request_id: str = "DSR-1") -> dict[str, Any]:
    return erasure_event(customer, request_id)


def parsed(records: list[dict[str, Any]]) -> list[Event]:
    now = time.time()
    return [Event.from_record(record, now) for record in records]


# --- the pure step ---------------------------------------------------------------------


def test_an_erasure_forgets_everything_and_lists_every_key_she_had() -> None:
    ctx, now = context(), time.time()
    state, _ = step(None, parsed(events_of_a_known_customer()), ctx, now, [])
    assert state.timers and state.coupons and state.entitlements and state.seen_ids

    request = erasure()
    state, out = step(state, parsed([request]), ctx, now, [{"type": "x"}])

    assert out.forgotten and out.changed and out.state_encoded is None
    assert state.contact in ({}, EMPTY_CONTACT)  # no contact history (its empty form)
    state.contact = {}
    assert state == CustomerState.new(CID)  # no traits, timers, coupons, dedup ring
    assert out.timeline == []
    assert {w.key for w in out.erased_keys} == {
        f"omni:profile:{CID}",
        f"omni:timeline:{CID}",
        f"omni:cart:{CID}",
        f"omni:offers:{CID}",
        f"omni:coupons:{CID}",
        f"omni:entitlement:{CID}:overdraft",
        "omni:coupon:CPN-9",
        "omni:coupon:CPN-9:claim",
    }
    assert all(w.value is None for w in out.erased_keys)
    [decision] = out.decisions
    record = decision.to_record()
    assert validate_record("decision", record) == []
    assert (record["outcome"], record["rule"], record["request_id"]) == (
        ERASED,
        ERASURE_RULE,
        "DSR-1",
    )
    assert record["source_event_id"] == request["event_id"] and record["trigger_id"] is None
    # Nothing personal beyond the id the record is keyed by.
    assert set(record) == {
        "decision_id",
        "customer_id",
        "rule",
        "trigger_type",
        "source_event_id",
        "outcome",
        "reasons",
        "trigger_id",
        "decided_at",
        "ruleset",
        "request_id",
    }
    assert out.triggers == []


def test_an_event_after_the_erasure_starts_a_new_empty_customer() -> None:
    ctx, now = context(), time.time()
    known = events_of_a_known_customer()
    later = make_event(CID, "web", "page.viewed", {"url": "/home"})
    state, out = step(None, parsed([*known, erasure(), later]), ctx, now, [])
    assert not out.forgotten and out.state_encoded is not None
    assert out.erased_keys  # the old customer's keys are still deleted
    assert state.traits.get("home_country") is None and not state.coupons and not state.timers
    assert list(state.last_seen) == ["web"]
    assert [entry["type"] for entry in out.timeline or []] == ["page.viewed"]
    # The dedup ring went too: an event of before the erasure counts again, as new.
    _, again = step(state, parsed([known[0]]), ctx, now, out.timeline)
    assert again.duplicates == 0 and again.changed


def test_the_validator_takes_erasures_from_the_crm_only() -> None:
    validator = EventValidator()
    request = erasure()
    accepted = validator.check("crm", CID.encode(), orjson.dumps(request))
    assert not isinstance(accepted, Rejection)
    refused = validator.check("web", CID.encode(), orjson.dumps({**request, "channel": "web"}))
    assert isinstance(refused, Rejection) and refused.reason == "channel_mismatch"


def test_the_erasure_event_id_is_the_same_for_the_same_request() -> None:
    assert erasure("a", "r1")["event_id"] == erasure("a", "r1")["event_id"]
    assert erasure("a", "r1")["event_id"] != erasure("a", "r2")["event_id"]
    assert erasure("a", "r1")["event_id"] != erasure("b", "r1")["event_id"]


# --- the agent -------------------------------------------------------------------------


def raw(record: dict[str, Any], offset: int) -> RawEvent:
    key = str(record["customer_id"]).encode()
    return RawEvent(Message(key, orjson.dumps(record), 0, offset, timestamp=time.time()))


def process(processor: CustomerProcessor, *events: RawEvent) -> None:
    processor.process(list(events), ack=None)  # type: ignore[arg-type]


def sent(processor: CustomerProcessor) -> list[tuple[Any, ...]]:
    return processor.producer.sent  # type: ignore[attr-defined]


def redis_writes(processor: CustomerProcessor) -> list[Any]:
    return processor.writer.writes  # type: ignore[attr-defined]


def known_customer(tmp_path: Path) -> CustomerProcessor:
    processor = customer_processor(tmp_path, cart_abandon_after_seconds=0.001)
    process(processor, *(raw(r, n) for n, r in enumerate(events_of_a_known_customer())))
    processor.rebuild_due({0, 1})
    assert processor.records.get(CID.encode(), 0) is not None
    assert stored_timeline(processor.records, CID.encode())  # her timeline is in it
    assert CID.encode() in processor.due[0]
    return processor


def test_the_agent_writes_tombstones_clears_her_timers_and_deletes_her_keys(
    tmp_path: Path,
) -> None:
    processor = known_customer(tmp_path)
    before = len(sent(processor))
    redis_writes(processor).clear()

    process(processor, raw(erasure(), 10))

    key = CID.encode()
    assert processor.records.get(key, 0) is None and processor.timelines.get(key, 0) is None
    changelog = [s for s in sent(processor)[before:] if s[0].endswith("-changelog")]
    assert {(s[1], s[2]) for s in changelog} == {(key, None)}  # tombstones, both tables
    assert len(changelog) == 2
    # Her timers (the cart reminder, deferred triggers) are gone from the due index.
    assert key not in processor.due[0]
    assert processor.fire_due(time.time() + 7 * 86400) == 0
    deleted = {w.key for w in redis_writes(processor) if w.value is None}
    assert {"omni:coupon:CPN-9:claim", f"omni:entitlement:{CID}:overdraft"} <= deleted
    assert all(w.value is None for w in redis_writes(processor))  # nothing re-created
    [decision] = [orjson.loads(s[2]) for s in sent(processor)[before:] if s[0] == "decision.log"]
    assert decision["outcome"] == "erased"
    # After the commit the record is gone from RocksDB too, not just hidden.
    for table in (processor.records, processor.timelines):
        table.write_committed(0, 11)
        assert table.table.data.partition_db(0).get(key) is None  # type: ignore[attr-defined]


def test_an_erasure_then_a_new_event_writes_the_new_customer_after_the_deletes(
    tmp_path: Path,
) -> None:
    processor = known_customer(tmp_path)
    redis_writes(processor).clear()
    process(
        processor,
        raw(erasure(), 10),
        raw(make_event(CID, "crm", "profile.updated", {"language": "fr"}), 11),
    )
    state = stored_state(processor.records, CID.encode())
    assert state["traits"] == {"language": "fr", "funnel_stage": "awareness"}
    assert state["coupons"] == {} and state["entitlements"] == {}
    keys = [w.key for w in redis_writes(processor)]
    profile = f"omni:profile:{CID}"
    # Deleted, then written again for the new customer: the writer keeps the last one.
    assert keys.index(profile) < len(keys) - 1 - keys[::-1].index(profile)
    last = [w for w in redis_writes(processor) if w.key == profile][-1]
    assert last.value is not None and orjson.loads(last.value)["language"] == "fr"
    assert "omni:coupon:CPN-9" not in {w.key for w in redis_writes(processor) if w.value}


def test_deletes_survive_a_later_event_that_fails_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = known_customer(tmp_path)
    redis_writes(processor).clear()
    poison = make_event(CID, "web", "page.viewed", {"url": "/boom"})
    real_step = step

    def failing_step(state: Any, events: list[Event], *args: Any) -> Any:
        if any(e.event_id == poison["event_id"] for e in events):
            raise RuntimeError("a pipeline bug")
        return real_step(state, events, *args)

    monkeypatch.setattr("processors.customer.step", failing_step)
    later = make_event(CID, "web", "page.viewed", {"url": "/ok"})
    process(processor, raw(erasure(), 10), raw(poison, 11), raw(later, 12))
    deleted = {w.key for w in redis_writes(processor) if w.value is None}
    assert {"omni:coupon:CPN-9", "omni:coupon:CPN-9:claim"} <= deleted
    assert [s[0] for s in sent(processor)].count("touchpoint.deadletter") == 1


# --- settings ----------------------------------------------------------------------------


def test_deadletter_retention_hours_is_the_retention_of_the_deadletter_topic() -> None:
    settings = Settings(deadletter_retention_hours=2)
    assert settings.topic_configs()[settings.deadletter_topic] == {"retention.ms": "7200000"}


def test_identity_log_retention_hours_is_the_retention_of_identity_log() -> None:
    # identity.log names identifiers (phone numbers, emails): it is kept a bounded time.
    settings = Settings(identity_log_retention_hours=3)
    assert settings.topic_configs()[settings.identity_log_topic] == {"retention.ms": "10800000"}
    assert Settings().topic_configs()[Settings().deadletter_topic]["retention.ms"] == str(
        72 * 3_600_000
    )


def test_a_max_compaction_lag_below_the_min_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValidationError, match="raise the max or lower the min"):
        Settings(changelog_min_compaction_lag_seconds=100, changelog_max_compaction_lag_seconds=99)
    Settings(changelog_min_compaction_lag_seconds=100, changelog_max_compaction_lag_seconds=100)


def test_the_erasure_event_type_is_the_registry_s() -> None:
    from schemas.registry import EVENT_TYPES

    assert EVENT_TYPES[ERASURE_EVENT].channels == ("crm",)
