"""What a failing reliability test prints about one customer: its input, its state
changelog (with each record's checkpoint header) and the committed offsets."""

from __future__ import annotations

import uuid

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from processors.checkpoint import SOURCE_HEADER, header_value
from processors.settings import Settings
from tests.integration.harness import committed_positions


def _read(settings: Settings, topic: str, key: bytes) -> list[str]:
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"forensics-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    lines: list[str] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = list(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        at_end: set[int] = set()
        idle = 0
        while len(at_end) < len(partitions) and idle < 50:
            message = consumer.poll(0.2)
            if message is None:
                idle += 1
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                continue
            if message.key() != key:
                continue
            value = message.value() or b""
            src = header_value(message.headers(), SOURCE_HEADER)
            try:
                body = orjson.loads(value) if value else None
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict) and "seen_ids" in body:
                what = (
                    f"state seen={len(body['seen_ids'])} last={body.get('last_country')} "
                    f"cooldowns={sorted(body.get('cooldowns', {}))}"
                )
            elif isinstance(body, dict):
                what = (
                    f"{body.get('type') or body.get('reason')} "
                    f"{body.get('event_id') or body.get('errors')}"
                )
            else:
                what = "timer marker" if not value else f"{len(value)} bytes"
            lines.append(
                f"  [{message.partition()}]@{message.offset()} "
                f"{'src=' + src.decode() if src else ''} {what}"
            )
    finally:
        consumer.close()
    return lines


def committed(settings: Settings, topic: str) -> list[str]:
    return [
        f"  [{tp.partition}] {tp.offset} of {high} {tp.metadata!r}"
        for tp, high in committed_positions(settings, topic)
    ]


def trace_customer(settings: Settings, customer_id: str) -> str:
    key = customer_id.encode()
    changelog = f"{settings.app_id}-customers-changelog"
    telco = next(t for t in settings.touchpoint_topics if t.endswith(".telco"))
    return "\n".join(
        [
            f"customer {customer_id} on {telco}:",
            *_read(settings, telco, key),
            f"committed on {telco}:",
            *committed(settings, telco),
            f"on {settings.deadletter_topic}:",
            *_read(settings, settings.deadletter_topic, key),
            f"customer {customer_id} on {settings.customer_events_topic}:",
            *_read(settings, settings.customer_events_topic, key),
            f"on {changelog}:",
            *_read(settings, changelog, key),
            f"committed on {settings.customer_events_topic}:",
            *committed(settings, settings.customer_events_topic),
        ]
    )
