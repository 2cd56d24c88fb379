"""Recovery never runs ahead of committed input, on the real broker.

A changelog record whose input was never committed (what a worker killed between
its flush and its commit leaves behind) must not come back: not when a worker
rebuilds its state from the changelog, and not in ``omni redis rebuild``.
"""

from __future__ import annotations

import re
import shutil
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from processors.checkpoint import SOURCE_HEADER, header_value, parse_source
from processors.domain.record_codec import decode_record, encode_record
from processors.settings import Settings
from processors.tools.rebuild import changelog_topic, read_changelog
from producers.sdk import TouchpointProducer
from producers.simulator import make_event
from tests.integration.harness import TopicReader, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def changelog_record(settings: Settings, key: bytes) -> tuple[int, bytes, bytes]:
    """(partition, value, omni-src header) of the newest changelog record of ``key``."""
    topic = changelog_topic(settings)
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"peek-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    found: tuple[int, bytes, bytes] | None = None
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        remaining = set(partitions)
        while remaining:
            message = consumer.poll(10)
            assert message is not None, f"no progress reading {topic}"
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(message.partition())
                continue
            if message.key() == key:
                source = header_value(message.headers())
                assert source is not None, "a changelog record without its omni-src header"
                found = (message.partition(), message.value(), source)
    finally:
        consumer.close()
    assert found is not None, f"no changelog record for {key!r}"
    return found


def test_records_of_uncommitted_checkpoints_are_skipped(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = f"recover-{uuid.uuid4().hex[:8]}"
    with TouchpointProducer(settings) as producer:
        producer.publish(make_event(cid, "crm", "profile.updated", {"home_country": "DE"}))
    wait_for(
        lambda: re.search(r"^omni_events_processed_total [1-9]", worker.metrics(), re.M),
        30,
        "the profile to be processed",
    )
    # Committed: the worker commits every second once the read model has the batch.

    def committed() -> bool:
        pattern = r"^omni_consumer_committed_lag_messages\{([^}]*)\} (\S+)$"
        lags = [
            lag
            for labels, lag in re.findall(pattern, worker.metrics(), re.M)
            if "customer-events" in labels
        ]
        return bool(lags) and all(float(lag) == 0 for lag in lags)

    wait_for(committed, 30, "the profile's offset to be committed")
    partition, value, source = changelog_record(settings, cid.encode())
    parsed = parse_source(source)
    assert parsed is not None
    writer, offset = parsed
    worker.kill()

    # What a worker killed after its flush and before its commit leaves: a newer record
    # of the same key, for input the group never committed.
    record = decode_record(value)
    forged = orjson.loads(record.state)
    forged["traits"]["home_country"] = "XX"
    uncommitted = f"{writer[0]}.{writer[1]}:{offset + 1_000_000}".encode()
    producer = Producer(settings.kafka_client_config())
    producer.produce(
        changelog_topic(settings),
        encode_record(orjson.dumps(forged), record.timeline or b"[]", None),
        cid.encode(),
        partition,
        headers=[(SOURCE_HEADER, uncommitted)],
    )
    assert producer.flush(10) == 0

    latest = read_changelog(settings, changelog_topic(settings), 10)
    assert [v for (_, key), v in latest.items() if key == cid.encode()] == [value]
    shutil.rmtree(settings.data_dir)  # a new machine: state comes from the changelog only
    worker.start()
    assert re.search(r"^omni_changelog_records_skipped_total [1-9]", worker.metrics(), re.M), (
        "recovery applied a record of an uncommitted checkpoint"
    )
    # The start-up's bulk restore read the changelog (processors/restore.py), not Faust.
    assert re.search(r"Restored \d+ records of \S+customers-changelog", worker.log_tail(400)), (
        worker.log_tail(40)
    )
    # The restored state still says DE: attaching in DE is home, no roaming offer; FR is.
    home = make_event(cid, "telco", "telco.network_attached", {"country": "DE"})
    abroad = make_event(cid, "telco", "telco.network_attached", {"country": "FR"})
    with TouchpointProducer(settings) as producer_sdk:
        producer_sdk.publish(home)
        producer_sdk.publish(abroad)
    sms = readers[settings.trigger_topic("sms")]
    [offer] = sms.wait_for(lambda t: t["customer_id"] == cid)
    assert offer["source_event_id"] == abroad["event_id"]
    assert "home DE" in offer["reason"]
