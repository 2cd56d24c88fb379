"""The producer SDK channel backends use to publish touchpoint events.

It validates every event against the contract before sending (the same
validator the worker runs), keys it by customer id with Kafka's murmur2
partitioner (an event without ``customer_id`` by its first identifier,
``<type>:<value>``: :func:`schemas.identity_key`), and uses an idempotent
producer with delivery reports::

    with TouchpointProducer(ProducerSettings.from_env()) as producer:
        producer.publish({"event_id": "...", "type": "offer.accepted", ...})

Settings are :class:`producers.config.ProducerSettings` (``OMNI_*`` variables, or
explicit arguments); in the worker's install the worker's ``Settings()`` works too.

A backend in another language must use the same producer settings: see
``PRODUCER_CONFIG`` and the README's contract section.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from producers.claims import CouponClaims
from producers.config import ProducerSettings, ProducerTarget
from schemas import EventValidator, Rejection, identity_key

# CouponClaims lives in producers.claims; the README names it as producers.sdk.CouponClaims.
__all__ = [
    "PRODUCER_CONFIG",
    "CouponClaims",
    "DeliveryHandler",
    "EventRejected",
    "ProducerSettings",
    "TouchpointProducer",
    "message_key",
]

log = logging.getLogger(__name__)

#: What every producer of touchpoint events must set (librdkafka names).
PRODUCER_CONFIG: dict[str, Any] = {
    # Same partition for a customer id as Java clients and the worker (aiokafka).
    "partitioner": "murmur2_random",
    # No duplicates or reordering from producer retries.
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
}


class EventRejected(ValueError):
    """The event breaks the contract; ``reason`` is the dead-letter code it would get."""

    def __init__(self, rejection: Rejection) -> None:
        self.reason = rejection.reason
        self.errors = rejection.errors
        super().__init__(f"{rejection.reason}: " + "; ".join(rejection.errors))


DeliveryHandler = Callable[[KafkaError | None, Message], None]


class TouchpointProducer:
    def __init__(
        self,
        settings: ProducerTarget | None = None,
        *,
        validator: EventValidator | None = None,
        config: dict[str, Any] | None = None,
        on_delivery: DeliveryHandler | None = None,
    ) -> None:
        self.settings: ProducerTarget = settings or ProducerSettings.from_env()
        self.validator = validator or EventValidator()
        self._producer = Producer(
            {**self.settings.kafka_client_config(), **PRODUCER_CONFIG, **(config or {})}
        )
        self._on_delivery = on_delivery
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed: list[str] = []

    def check(self, event: dict[str, Any] | bytes, channel: str | None = None) -> bytes:
        """Validate without sending; returns the bytes that would be sent."""
        value = event if isinstance(event, bytes) else orjson.dumps(event)
        record = event if isinstance(event, dict) else _peek(value)
        channel = channel or str(record.get("channel", ""))
        key = message_key(record)
        result = self.validator.check(
            channel,
            key,
            value,
            self.settings.max_event_bytes,
            max_future_skew=self.settings.max_future_skew_seconds,
        )
        if isinstance(result, Rejection):
            raise EventRejected(result)
        return value

    def publish(
        self,
        event: dict[str, Any] | bytes,
        channel: str | None = None,
        on_delivery: DeliveryHandler | None = None,
    ) -> None:
        """Validate and send one event to ``touchpoint.<channel>`` (its own channel field).

        Raises :class:`EventRejected` naming the field when the event breaks
        the contract. Delivery is asynchronous: call :meth:`flush` (or close)
        to wait for it; failures are in :attr:`failed`, and ``on_delivery``
        (if given) hears about this one message.
        """
        value = self.check(event, channel)
        record = _peek(value)
        topic = self.settings.touchpoint_topic(channel or record["channel"])
        key = message_key(record)
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    on_delivery=self._delivered
                    if on_delivery is None
                    else _both(self._delivered, on_delivery),
                )
                break
            except BufferError:
                # Local queue full: serve delivery reports to make room, then retry.
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        with self._lock:
            if error is None:
                self.delivered += 1
            else:
                self.failed.append(f"{message.topic()}: {error.str()}")
                log.error("Delivery to %s failed: %s", message.topic(), error.str())
        if self._on_delivery is not None:
            self._on_delivery(error, message)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        remaining = self.flush()
        if remaining:
            raise RuntimeError(
                f"{remaining} events were not delivered within 30 s: check that Kafka is "
                f"reachable at {self.settings.kafka_bootstrap} and publish them again."
            )

    def __enter__(self) -> TouchpointProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def message_key(event: dict[str, Any]) -> bytes | None:
    """The Kafka message key of an event: its ``customer_id`` (UTF-8); for an event
    without one, ``<type>:<value>`` of its first identifier in the order msisdn, email,
    loyalty_id, card_token, device_id (:func:`schemas.identity_key`); None when it has
    neither (the validator then says why: ``unidentified`` or ``schema_violation``)."""
    if "customer_id" in event:
        return str(event["customer_id"]).encode() or None
    identifiers = event.get("identifiers")
    if isinstance(identifiers, dict):
        try:
            return identity_key(identifiers).encode()
        except ValueError:  # no known identifier: the schema check names it
            return None
    return None


def _both(first: DeliveryHandler, second: DeliveryHandler) -> DeliveryHandler:
    def handler(error: KafkaError | None, message: Message) -> None:
        first(error, message)
        second(error, message)

    return handler


def _peek(value: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}
