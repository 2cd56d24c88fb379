"""Dead letters can always be produced: a huge key is hashed, a record is bounded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from processors.deadletter import (
    MAX_RECORD_BYTES,
    deadletter_key,
    deadletter_record,
)
from processors.ingest import Ingest
from processors.metrics import Metrics
from processors.settings import Settings
from schemas import EventValidator, validate_record

SETTINGS = Settings()


def test_keys_up_to_1_kib_are_kept_and_larger_ones_hashed() -> None:
    assert deadletter_key(None) is None
    assert deadletter_key(b"alice") == b"alice"
    assert deadletter_key(b"k" * 1024) == b"k" * 1024
    huge = b"k" * 1_000_000
    assert deadletter_key(huge) == b"sha256:" + hashlib.sha256(huge).hexdigest().encode()


def test_a_record_never_exceeds_the_limit_and_stays_valid() -> None:
    cases: list[tuple[list[str], bytes, int]] = [
        (["value: x — y"], b"\x01" * 2_000_000, 2_000_000),  # escaped six-fold by JSON
        ([f"payload.f{n}: " + "\x02" * 8000 + " — fix" for n in range(500)], b"{}", 8192),
        (["value: x — y"] * 3, "é".encode() * 600_000, 10**9),
    ]
    for errors, raw, raw_max in cases:
        encoded = deadletter_record(
            "schema_violation", errors, "touchpoint.web", 1, 2, raw, raw_max
        )
        assert len(encoded) <= MAX_RECORD_BYTES
        record = orjson.loads(encoded)
        assert validate_record("deadletter", record) == []
    record = orjson.loads(
        deadletter_record("schema_violation", ["a: b — c"] * 70, "touchpoint.web", 1, 2, b"", 10)
    )
    assert len(record["errors"]) == 64 and record["errors"][-1].startswith("value: 7 more errors")


@dataclass
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 3
    offset: int = 41
    timestamp: float = 1_764_000_000.0


@dataclass
class Event:
    message: Message


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, **_: Any) -> None:
        self.sent.append((topic, key, value))


def ingest(producer: Producer) -> Ingest:
    return Ingest(
        settings=SETTINGS,
        validator=EventValidator(),
        metrics=Metrics(CollectorRegistry()),
        producer=producer,  # type: ignore[arg-type]
        customer_events_topic="omni.customer-events",
        deadletter_topic="touchpoint.deadletter",
    )


def test_a_million_byte_key_is_dead_lettered_under_its_hash() -> None:
    """Issue 9: the dead letter reused the key and librdkafka refused it."""
    producer = Producer()
    key = b"x" * 1_000_000
    value = orjson.dumps(
        {
            "event_id": "e1",
            "type": "page.viewed",
            "occurred_at": "2026-01-15T09:30:00Z",
            "channel": "web",
            "customer_id": "alice",
            "payload": {"url": "https://shop.example"},
        }
    )
    ingest(producer).process([Event(Message(SETTINGS.touchpoint_topic("web"), key, value))])  # type: ignore[list-item]
    [(topic, sent_key, record)] = producer.sent
    assert topic == "touchpoint.deadletter"
    assert sent_key == b"sha256:" + hashlib.sha256(key).hexdigest().encode()
    letter = orjson.loads(record or b"")
    assert letter["reason"] == "key_too_large" and validate_record("deadletter", letter) == []
    assert len(record or b"") <= MAX_RECORD_BYTES


def test_a_future_event_is_dead_lettered_with_the_setting() -> None:
    producer = Producer()
    value = orjson.dumps(
        {
            "event_id": "e2",
            "type": "consent.updated",
            "occurred_at": "2099-01-15T09:30:00Z",
            "channel": "web",
            "customer_id": "alice",
            "payload": {"channel": "sms", "purpose": "marketing", "granted": True},
        }
    )
    ingest(producer).process([Event(Message(SETTINGS.touchpoint_topic("web"), b"alice", value))])  # type: ignore[list-item]
    [(topic, key, record)] = producer.sent
    assert (topic, key) == ("touchpoint.deadletter", b"alice")
    assert orjson.loads(record or b"")["reason"] == "future_event"
