"""The bulk changelog restore (processors/restore.py) on the real broker.

It must end at the high watermark (also when compaction or a tombstone leaves the
last offsets empty), apply the checkpoint's rule, delete on tombstones, persist the
offset Faust's recovery starts from, and continue from that offset next time.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from processors.checkpoint import CommittedPosition, source_header
from processors.faust_adapter import CHANGELOG_OFFSET_KEY
from processors.restore import RestoreProgress, RestoreTarget, restore_partitions
from processors.settings import Settings
from processors.store import StoreOptions

pytestmark = pytest.mark.integration

WRITER = (3, 1)
#: Input offsets below 100 are committed on partition 0; nothing on partition 1.
COMMITTED = {0: CommittedPosition(100, WRITER, 0), 1: None}


def changelog(settings: Settings) -> str:
    topic = f"restore-{uuid.uuid4().hex[:10]}-changelog"
    admin = AdminClient(settings.kafka_client_config())
    admin.create_topics([NewTopic(topic, 2, 1, config={"cleanup.policy": "compact"})])[
        topic
    ].result(30)
    return topic


def produce(
    settings: Settings, topic: str, records: list[tuple[int, bytes, bytes | None, int]]
) -> None:
    producer = Producer(settings.kafka_client_config())
    for partition, key, value, source in records:
        producer.produce(topic, value, key, partition, headers=source_header(WRITER, source))
    assert producer.flush(30) == 0


def test_restore_reads_to_the_end_and_continues_from_the_persisted_offset(
    settings: Settings, tmp_path: Path
) -> None:
    topic = changelog(settings)
    produce(
        settings,
        topic,
        [
            (0, b"alice", b"a1", 1),
            (0, b"bob", b"b1", 2),
            (0, b"alice", b"a2", 150),  # its input was never committed: skipped
            (0, b"bob", None, 3),  # a committed tombstone, the partition's last record
            (1, b"carol", b"c1", 1),  # nothing committed on partition 1
        ],
    )
    dbs = {p: StoreOptions().open(tmp_path / f"t-{p}.db") for p in (0, 1)}
    progress = RestoreProgress()
    result = restore_partitions(
        settings.kafka_client_config(),
        [RestoreTarget(topic, 0, 0), RestoreTarget(topic, 1, 0)],
        dbs.__getitem__,
        COMMITTED.__getitem__,
        progress,
    )
    assert (result.records, result.skipped) == (5, 2)
    assert (progress.remaining, progress.running, progress.records) == (0, 0, 5)
    assert dbs[0].get(b"alice") == b"a1"
    assert dbs[0].get(b"bob") is None
    assert dbs[0].get(CHANGELOG_OFFSET_KEY) == b"3"
    assert dbs[1].get(b"carol") is None
    assert dbs[1].get(CHANGELOG_OFFSET_KEY) == b"0"

    # Later records only, from the persisted offset on (what a warm restart reads).
    produce(settings, topic, [(0, b"dave", b"d1", 4)])
    again = restore_partitions(
        settings.kafka_client_config(),
        [RestoreTarget(topic, 0, 4), RestoreTarget(topic, 1, 1)],
        dbs.__getitem__,
        COMMITTED.__getitem__,
    )
    assert (again.records, again.skipped) == (1, 0)
    assert dbs[0].get(b"dave") == b"d1"
    assert dbs[0].get(CHANGELOG_OFFSET_KEY) == b"4"
    for db in dbs.values():
        db.close()
