"""The ingest step, per message: a valid event is forwarded unchanged to the
customer-events topic with its key and producer time; anything else is dead-lettered
with its reason and source, and the next message is handled as if nothing happened."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from processors.domain.model import format_time
from processors.ingest import Ingest
from processors.metrics import Metrics
from processors.settings import Settings
from producers.simulator import make_event
from schemas import EventValidator

CUSTOMER_EVENTS = "omni.customer-events"
DEADLETTER = "touchpoint.deadletter"


@dataclass
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    offset: int
    partition: int = 3
    timestamp: float = 1_700_000_000.125


@dataclass
class Event:
    message: Message


@dataclass
class Producer:
    """Records ``OutputProducer.send`` calls: (topic, key, value, keyword arguments)."""

    sent: list[tuple[str, bytes | None, bytes | None, dict[str, Any]]] = field(default_factory=list)

    def send(self, topic: str, key: bytes | None, value: bytes | None, **kwargs: Any) -> None:
        self.sent.append((topic, key, value, kwargs))

    def to(self, topic: str) -> list[tuple[str, bytes | None, bytes | None, dict[str, Any]]]:
        return [s for s in self.sent if s[0] == topic]

    def deadletters(self) -> list[dict[str, Any]]:
        return [orjson.loads(s[2] or b"") for s in self.to(DEADLETTER)]


def ingest(settings: Settings | None = None, validator: Any = None) -> Ingest:
    return Ingest(
        settings or Settings(),
        validator or EventValidator(),
        Metrics(CollectorRegistry()),
        Producer(),  # type: ignore[arg-type]
        CUSTOMER_EVENTS,
        DEADLETTER,
    )


def web_event(customer: str, offset: int, url: str = "/home", **fields: Any) -> Event:
    record = {**make_event(customer, "web", "page.viewed", {"url": url}), **fields}
    return Event(Message("touchpoint.web", customer.encode(), orjson.dumps(record), offset))


def producer_of(step: Ingest) -> Producer:
    return step.producer  # type: ignore[return-value]


def test_a_valid_event_is_forwarded_unchanged_with_its_key_and_producer_time() -> None:
    step = ingest()
    event = web_event("c1", 7)
    step.process([event])  # type: ignore[list-item]
    [(topic, key, value, kwargs)] = producer_of(step).sent
    assert (topic, key, value) == (CUSTOMER_EVENTS, b"c1", event.message.value)
    assert kwargs == {"timestamp_ms": 1_700_000_000_125, "headers": None}
    assert step.metrics.ingested("web", "page.viewed")._value.get() == 1


def test_a_bad_event_is_dead_lettered_with_its_reason_and_the_next_one_goes_on() -> None:
    step = ingest()
    bad = Event(Message("touchpoint.web", b"c2", b"[1, 2]", 8))
    step.process([web_event("c1", 7), bad, web_event("c3", 9)])  # type: ignore[list-item]
    producer = producer_of(step)
    assert [s[1] for s in producer.to(CUSTOMER_EVENTS)] == [b"c1", b"c3"]
    [letter] = producer.deadletters()
    assert letter["reason"] == "not_an_object"
    assert letter["source"] == {"topic": "touchpoint.web", "partition": 3, "offset": 8}
    assert letter["raw"] == "[1, 2]"
    assert producer.to(DEADLETTER)[0][1] == b"c2"
    assert step.metrics.deadlettered("not_an_object")._value.get() == 1
    assert step.metrics.deadlettered_by_channel("web", "not_an_object")._value.get() == 1


def test_a_message_on_a_topic_that_is_not_a_touchpoint_topic_is_a_channel_mismatch() -> None:
    step = ingest()
    event = web_event("c1", 1)
    event.message.topic = "touchpoint.fax"
    step.process([event])  # type: ignore[list-item]
    [letter] = producer_of(step).deadletters()
    assert letter["reason"] == "channel_mismatch" and "touchpoint.fax" in letter["errors"][0]
    assert producer_of(step).to(CUSTOMER_EVENTS) == []


def test_a_validator_crash_is_a_processing_error_for_that_message_only() -> None:
    real = EventValidator()

    class Flaky:
        def check(
            self, channel: str, key: bytes | None, value: bytes | None, *a: Any, **k: Any
        ) -> Any:
            if key == b"boom":
                raise RuntimeError("validator bug")
            return real.check(channel, key, value, *a, **k)

    step = ingest(validator=Flaky())
    step.process([web_event("boom", 1), web_event("c2", 2)])  # type: ignore[list-item]
    [letter] = producer_of(step).deadletters()
    assert letter["reason"] == "processing_error" and "RuntimeError" in letter["errors"][0]
    assert [s[1] for s in producer_of(step).to(CUSTOMER_EVENTS)] == [b"c2"]


def test_a_huge_key_is_dead_lettered_under_its_hash() -> None:
    step = ingest()
    event = web_event("c1", 1)
    event.message.key = b"k" * 5000
    step.process([event])  # type: ignore[list-item]
    [(_, key, _, _)] = producer_of(step).to(DEADLETTER)
    assert key is not None and key.startswith(b"sha256:") and len(key) < 100
    assert producer_of(step).deadletters()[0]["reason"] == "key_too_large"


# --- the settings ingest reads (named by tests/unit/processors/test_settings_behaviour.py) ---


def test_max_event_bytes_is_the_largest_value_forwarded() -> None:
    event = web_event("c1", 1, url="/" + "x" * 2000)
    size = len(event.message.value or b"")
    for limit, forwarded in ((size, True), (size - 1, False)):
        step = ingest(Settings(max_event_bytes=limit))
        step.process([event])  # type: ignore[list-item]
        assert bool(producer_of(step).to(CUSTOMER_EVENTS)) is forwarded, limit
        if not forwarded:
            assert producer_of(step).deadletters()[0]["reason"] == "too_large"


def test_deadletter_raw_max_bytes_cuts_the_raw_value_of_a_dead_letter() -> None:
    bad = Event(Message("touchpoint.web", b"c1", b"[" + b"1," * 500 + b"1]", 1))
    for limit in (8 * 1024, 10):
        step = ingest(Settings(deadletter_raw_max_bytes=limit))
        step.process([bad])  # type: ignore[list-item]
        [letter] = producer_of(step).deadletters()
        assert letter["raw"] == (bad.message.value or b"")[:limit].decode()


@pytest.mark.parametrize(("skew", "forwarded"), [(300.0, False), (3600.0, True)])
def test_max_future_skew_seconds_decides_which_future_events_are_refused(
    skew: float, forwarded: bool
) -> None:
    step = ingest(Settings(max_future_skew_seconds=skew))
    step.process([web_event("c1", 1, occurred_at=format_time(time.time() + 1200))])  # type: ignore[list-item]
    assert bool(producer_of(step).to(CUSTOMER_EVENTS)) is forwarded
    if not forwarded:
        assert producer_of(step).deadletters()[0]["reason"] == "future_event"
