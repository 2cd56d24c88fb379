"""The SDK keys each event as the validator expects: customer_id, else its first identifier."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from producers.config import ProducerSettings
from producers.sdk import EventRejected, TouchpointProducer, message_key


class FakeKafka:
    """Stands in for confluent_kafka.Producer: remembers what was produced."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes, bytes | None]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        self.produced.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


@pytest.fixture
def producer() -> TouchpointProducer:
    producer = TouchpointProducer(ProducerSettings(kafka_bootstrap="127.0.0.1:9"))
    producer._producer = FakeKafka()  # type: ignore[assignment]
    return producer


def telco(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "e-1",
        "type": "telco.network_attached",
        "occurred_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "channel": "telco",
        "payload": {"country": "FR"},
    }
    doc.update(changes)
    return doc


def produced(producer: TouchpointProducer) -> list[tuple[str, bytes, bytes | None]]:
    return producer._producer.produced  # type: ignore[attr-defined, no-any-return]


def test_an_event_with_customer_id_is_keyed_by_it(producer: TouchpointProducer) -> None:
    event = telco(customer_id="maria", identifiers={"msisdn": "+447700900123"})
    producer.publish(event)
    assert produced(producer) == [("touchpoint.telco", orjson.dumps(event), b"maria")]


def test_an_event_without_customer_id_is_keyed_by_its_first_identifier(
    producer: TouchpointProducer,
) -> None:
    event = telco(identifiers={"device_id": "imei:1", "msisdn": "+447700900123"})
    producer.publish(event)
    producer.publish(orjson.dumps(telco(identifiers={"device_id": "imei:1"})))
    assert [key for _, _, key in produced(producer)] == [
        b"msisdn:+447700900123",
        b"device_id:imei:1",
    ]


def test_an_event_naming_nobody_is_refused_before_sending(producer: TouchpointProducer) -> None:
    with pytest.raises(EventRejected) as refused:
        producer.publish(telco())
    assert refused.value.reason == "unidentified"
    with pytest.raises(EventRejected) as refused:
        producer.publish(telco(identifiers={"msisdn": "07700 900123"}))
    assert refused.value.reason == "schema_violation"
    assert produced(producer) == []


@pytest.mark.parametrize(
    ("event", "key"),
    [
        ({"customer_id": "maria"}, b"maria"),
        ({"customer_id": "maria", "identifiers": {"email": "m@x.co"}}, b"maria"),
        ({"customer_id": ""}, None),
        ({"identifiers": {"card_token": "t", "loyalty_id": "L-1"}}, b"loyalty_id:L-1"),
        ({"identifiers": {"twitter": "@m"}}, None),
        ({"identifiers": "msisdn:+447700900123"}, None),
        ({}, None),
    ],
)
def test_message_key(event: dict[str, Any], key: bytes | None) -> None:
    assert message_key(event) == key
