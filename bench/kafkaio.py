"""confluent-kafka helpers shared by the hand-written loops and the latency probe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from processors.settings import Settings


def loop_producer(settings: Settings) -> Producer:
    """Output producer of the hand-written loops: the worker's acks and linger.

    The worker (aiokafka via Faust) uses acks=all, linger = OMNI_PRODUCER_LINGER_MS,
    no compression and no idempotence; so do we, so only the code differs.
    """
    return Producer(
        {
            **settings.kafka_client_config(),
            "acks": "all",
            "linger.ms": settings.producer_linger_ms,
            "partitioner": "murmur2_random",
        }
    )


def loop_consumer(
    settings: Settings,
    group: str,
    on_assign: Callable[[Consumer, list[Any]], None] | None = None,
    topics: list[str] | None = None,
) -> Consumer:
    """A consumer of the touchpoint topics (or ``topics``) from the beginning, manual commits."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    subscribed = topics if topics is not None else list(settings.touchpoint_topics)
    if on_assign is None:
        consumer.subscribe(subscribed)
    else:
        consumer.subscribe(subscribed, on_assign=on_assign)
    return consumer


def next_batch(consumer: Consumer, max_events: int, timeout: float) -> list[Message]:
    """Whatever is already fetched, up to ``max_events``; waits up to ``timeout`` for one.

    ``consume(n, timeout)`` blocks until it has ``n`` messages or the timeout
    passes, which would add up to ``timeout`` of latency at low rates. Like the
    worker's adaptive batches we block for the first message only.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    batch = [first, *consumer.consume(max_events - 1, timeout=0)]
    for message in batch:
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(error)
    return [m for m in batch if m.error() is None]


def send(producer: Producer, topic: str, value: bytes, key: bytes | None) -> None:
    """produce(), serving delivery reports when the local queue is full."""
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.05)
