"""Rewrite the Redis read model from the state changelogs (`omni redis rebuild`).

The changelog topics hold every customer's newest record (state and timeline,
:mod:`processors.domain.record_codec`; a legacy record's timeline is on the
``timelines`` changelog) and every
partition's offer counters and every identifier's record (they are compacted), so
the read model, ``omni:stats:*``
included, can always be derived again from them, without the worker. Records
of checkpoints whose input was never committed are skipped, by the rule the
worker's recovery applies (:func:`processors.checkpoint.record_is_committed`).
"""

from __future__ import annotations

import time
import uuid

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from processors.checkpoint import CommittedOffsets, header_value, record_is_committed
from processors.domain.identity import IdentityRecord, identifier_view
from processors.domain.model import CustomerState
from processors.domain.read_model import ReadModelWrite, project, stats_write, timeline_write
from processors.domain.record_codec import decode_record
from processors.projection import queue_writes
from processors.settings import Settings

PIPELINE_SIZE = 1000


def changelog_topic(settings: Settings, table: str = "customers") -> str:
    # Faust names a table's changelog "<app id>-<table>-changelog".
    return f"{settings.app_id}-{table}-changelog"


def rebuild_read_model(settings: Settings, timeout: float = 10.0) -> tuple[int, int]:
    """Returns (customers, keys and hash fields written)."""
    latest = read_changelog(settings, changelog_topic(settings), timeout)
    timelines = read_changelog(
        settings, changelog_topic(settings, "timelines"), timeout, required=False
    )
    stats = read_changelog(settings, changelog_topic(settings, "stats"), timeout, required=False)
    identities = read_changelog(
        settings, changelog_topic(settings, "identities"), timeout, required=False
    )
    client = settings.redis_client()
    now = time.time()
    keys = customers = 0
    pipe = client.pipeline(transaction=False)

    def queue(writes: list[ReadModelWrite]) -> None:
        nonlocal keys
        queue_writes(pipe, writes)
        keys += len(writes)
        if len(pipe) >= PIPELINE_SIZE:
            pipe.execute()

    for (partition, key), value in latest.items():
        if value is None:
            continue
        record = decode_record(value)
        state = CustomerState.from_dict(orjson.loads(record.state))
        customers += 1
        writes = project(state, now)
        timeline = record.timeline
        if timeline is None:  # a legacy record: co-partitioned, same key, same partition
            timeline = timelines.get((partition, key))
        if timeline and timeline != b"[]":
            writes.append(timeline_write(state.customer_id, orjson.loads(timeline)))
        queue(writes)
    queue(
        [
            stats_write(key, totals, partition)
            for (partition, key), totals in stats.items()
            if totals is not None
        ]
    )
    # Identifier links: omni:identifier:<type>:<value> as each identifier's record says.
    for (_, key), value in identities.items():
        if value is None:
            continue
        view = identifier_view(key.decode(), IdentityRecord.from_json(value))
        if view is not None:
            queue([view])
    pipe.execute()
    return customers, keys


def read_changelog(
    settings: Settings, topic: str, timeout: float, required: bool = True
) -> dict[tuple[int, bytes], bytes | None]:
    """The newest value per (partition, key) of a (compacted) changelog topic; None =
    deleted. (A table's key is unique within its partition; the stats table has the
    same key in every partition.)"""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"omni-rebuild-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    latest: dict[tuple[int, bytes], bytes | None] = {}
    positions = CommittedOffsets(
        settings.kafka_client_config(), settings.app_id, settings.customer_events_topic
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if metadata.error is not None:
            if not required:
                return {}
            raise RuntimeError(
                f"No changelog topic {topic}: has the worker (OMNI_APP_ID={settings.app_id}) "
                "ever run against this cluster?"
            )
        partitions = [TopicPartition(topic, p, 0) for p in metadata.partitions]
        committed = positions.fetch(metadata.partitions, timeout)
        consumer.assign(partitions)
        remaining = {tp.partition for tp in partitions}
        while remaining:
            message = consumer.poll(timeout)
            if message is None:
                raise TimeoutError(f"No progress reading {topic} for {timeout}s; is Kafka up?")
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition() or 0)
                continue
            if record_is_committed(
                header_value(message.headers()), committed.get(message.partition() or 0)
            ):
                # None = tombstone (deleted)
                latest[(message.partition() or 0, message.key() or b"")] = message.value()
    finally:
        consumer.close()
        positions.close()
    return latest
