"""Read the newest dead letters, for `omni deadletters`."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from processors.settings import Settings


def read_recent(
    settings: Settings,
    per_partition: int,
    *,
    channel: str | None = None,
    reason: str | None = None,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """The last ``per_partition`` dead letters of each partition, filtered, oldest first.

    Reads with an unnamed, non-committing consumer, so it never disturbs the worker.
    """
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"omni-deadletters-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    topic = settings.deadletter_topic
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(
                f"Cannot read {topic}: {metadata.error.str()}. Is the stack up (`make up`)?"
            )
        assignment = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            if high > low:
                assignment.append(TopicPartition(topic, partition, max(low, high - per_partition)))
        if not assignment:
            return []
        consumer.assign(assignment)
        remaining = {tp.partition for tp in assignment}
        records: list[dict[str, Any]] = []
        source_topic = settings.touchpoint_topic(channel) if channel else None
        while remaining:
            message = consumer.poll(timeout)
            if message is None:
                break
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition() or 0)
                continue
            record = orjson.loads(message.value() or b"{}")
            if reason is not None and record.get("reason") != reason:
                continue
            if source_topic is not None and record.get("source", {}).get("topic") != source_topic:
                continue
            records.append(record)
        return sorted(records, key=lambda r: r["received_at"])
    finally:
        consumer.close()
