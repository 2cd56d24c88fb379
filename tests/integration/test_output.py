"""The worker's librdkafka producer on the real broker: partitioning, flush, failures."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError

from processors.output import DeliveryFailed, OutputProducer
from processors.settings import Settings

pytestmark = pytest.mark.integration


def read_all(settings: Settings, topic: str, expected: int) -> list[tuple[bytes, int, int]]:
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: list[tuple[bytes, int, int]] = []
    try:
        for _ in range(200):
            for message in consumer.consume(500, timeout=0.1):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(f"reading {topic}: {error.str()}")
                if error is None:
                    _, timestamp_ms = message.timestamp()
                    seen.append((message.key() or b"", message.partition() or 0, timestamp_ms))
            if len(seen) >= expected:
                break
    finally:
        consumer.close()
    return seen


def test_keyed_records_land_where_the_contract_partitioner_puts_them(settings: Settings) -> None:
    producer = OutputProducer(settings.kafka_client_config(), linger_ms=5)
    topic = settings.decision_topic
    keys = [f"cust-{i}".encode() for i in range(200)]
    delivered: list[int] = []
    for index, key in enumerate(keys):
        producer.send(
            topic,
            key,
            b"{}",
            timestamp_ms=1_700_000_000_000 + index,
            on_delivery=lambda err, msg: delivered.append(msg.offset()) if err is None else None,
        )
    asyncio.run(producer.flush())

    assert len(delivered) == len(keys)  # per-record callbacks ran (the flush serves them)
    seen = read_all(settings, topic, len(keys))
    assert sorted(key for key, _, _ in seen) == sorted(keys)
    for key, partition, timestamp_ms in seen:
        # The Java client's murmur2, as the SDK and Faust's tables partition.
        assert partition == (murmur2(key) & 0x7FFFFFFF) % settings.partitions, key
        # The forwarded event keeps its producer's time: latency counts from it.
        assert timestamp_ms == 1_700_000_000_000 + keys.index(key)


def test_flush_raises_when_a_record_cannot_be_delivered(settings: Settings) -> None:
    # The broker does not create topics on demand: this record can never be delivered.
    producer = OutputProducer(
        {**settings.kafka_client_config(), "message.timeout.ms": 1500}, linger_ms=0
    )
    missing = f"{settings.topic_namespace}no-such-topic-{uuid.uuid4().hex[:6]}"
    producer.send(missing, b"k", b"v")

    with pytest.raises(DeliveryFailed) as failure:
        asyncio.run(producer.flush())

    message = str(failure.value)
    assert missing in message
    assert "not committed" in message and "Check the broker" in message
