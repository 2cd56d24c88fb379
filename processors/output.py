"""What the worker writes to Kafka, in bulk: one librdkafka producer and per-batch table writes.

Why not Faust's ``send_soon`` and ``table[key] = value``: measured on the bench,
every record through Faust costs a ``FutureMessage``, a ``ProducerBuffer`` round
and an awaited aiokafka ``send`` (Python batch building, a future per record),
and a table write adds a changelog record of that kind plus a RocksDB write with
its own persisted-offset write. The worker emits about four records per event
(forwarded event, customer record, timeline, decisions and triggers), so that
path was a large share of its CPU.

Here every record goes through one ``confluent_kafka.Producer``: ``produce()`` is
a C call, and librdkafka batches and sends on its own threads. Faust still owns
the tables (RocksDB per partition, changelog topics, recovery, rebalancing):
:class:`TableWriter` sends a batch's changelog records through the producer and
keeps the batch pending; once the checkpoint (:mod:`processors.checkpoint`) has
committed the batch's input, it writes the batch into Faust's RocksDB store in
one ``WriteBatch`` per partition, with the persisted offset Faust's recovery
starts from.

At-least-once: the checkpoint flushes this producer before it commits offsets,
so an offset is committed only once every output of the events before it is
acknowledged by the broker. A record librdkafka gives up on (after its own
retries, ``delivery.timeout.ms``) makes the flush raise, the commit does not
happen and the worker stops; after a restart the events are processed again and
their outputs, with deterministic ids, are dropped by consumers as duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer
from faust.types import TableT
from rocksdict import ReadOptions, WriteBatch

from processors.domain.timers import DueIndex
from processors.faust_adapter import CHANGELOG_OFFSET_KEY, FaustRocksDBStore

log = logging.getLogger(__name__)

#: How long one blocking flush slice may hold the event loop before it yields
#: (health checks must keep answering while the broker is slow).
FLUSH_SLICE_SECONDS = 0.5

DeliveryCallback = Callable[[KafkaError | None, Message], None]
Headers = list[tuple[str, str | bytes | None]]


class DeliveryFailed(RuntimeError):
    """A record could not be delivered: offsets must not be committed past it."""


class OutputProducer:
    """One librdkafka producer for every record the worker emits."""

    def __init__(self, client_config: dict[str, Any], linger_ms: int) -> None:
        self._producer = Producer(
            {
                **client_config,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": linger_ms,
                # The Java client's partitioner, like the SDK's and aiokafka's: a keyed
                # record lands where the contract says (same key, same partition).
                "partitioner": "murmur2_random",
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
                "batch.num.messages": 10_000,
                "on_delivery": self.check_delivery,
            }
        )
        self._produce = self._producer.produce
        self._failure: str | None = None

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int = -1,
        timestamp_ms: int = 0,
        on_delivery: DeliveryCallback | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record; never awaits (a full queue waits for librdkafka, briefly).

        ``partition`` -1 lets the partitioner choose; ``timestamp_ms`` 0 means now;
        without ``on_delivery`` the producer's own check reports failures.
        """
        while True:
            try:
                # Positional: building keyword arguments per record showed in the profile.
                self._produce(
                    topic, value, key, partition, on_delivery, None, timestamp_ms, headers
                )
                return
            except BufferError:
                # A million records queued: the broker is behind. Serve deliveries until
                # there is room (this is the back-pressure on the agents).
                self._producer.poll(0.05)

    def poll(self) -> None:
        """Serve delivery callbacks; the agents call it once per batch."""
        self._producer.poll(0)

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged; raise if one failed.

        Each slice blocks the event loop, so no agent can queue more meanwhile and
        the flush cannot be outrun under load; between slices (a slow broker) the
        loop runs once so health checks answer.
        """
        while self._producer.flush(FLUSH_SLICE_SECONDS) > 0:
            log.warning(
                "%d records still unacknowledged after %.1fs; waiting for the broker",
                len(self._producer),
                FLUSH_SLICE_SECONDS,
            )
            await asyncio.sleep(0)
        if self._failure is not None:
            raise DeliveryFailed(self._failure)

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is queued (blocking); returns how many records were left undelivered."""
        return int(self._producer.flush(timeout))

    def check_delivery(self, err: KafkaError | None, message: Message) -> None:
        """Note a failed delivery; the next flush raises it."""
        if err is not None:
            self._failure = (
                f"record for {message.topic()}[{message.partition()}] was not delivered: {err}; "
                "offsets are not committed past it, the worker stops and its events are "
                "processed again after restart. Check the broker and the topic's ACLs."
            )
            log.error("%s", self._failure)


def checked(callback: DeliveryCallback, producer: OutputProducer) -> DeliveryCallback:
    """A per-record callback that still reports failures to ``producer``."""

    def on_delivery(err: KafkaError | None, message: Message) -> None:
        producer.check_delivery(err, message)
        if err is None:
            callback(err, message)

    return on_delivery


@dataclass(slots=True)
class Segment:
    """One batch's records of one partition, produced but not yet in RocksDB."""

    #: The last input offset of the batch: written locally once the commit passes it.
    source_offset: int
    records: dict[bytes, bytes | None]
    #: The changelog offset of its last record, known once delivered.
    changelog_offset: int | None = None

    def delivered(self, err: KafkaError | None, message: Message) -> None:
        if err is None:
            self.changelog_offset = message.offset()


class TableWriter:
    """A Faust table's records: changelog via librdkafka, RocksDB after the commit.

    Writes of the batch being built are ``put``; :meth:`seal` produces them to the
    changelog (with the checkpoint's header) and keeps them as a pending segment;
    :meth:`write_committed` writes the segments whose input offsets were committed
    (:mod:`processors.checkpoint` decides when). Reads see pending writes first.
    """

    def __init__(self, table: TableT[bytes, bytes], producer: OutputProducer) -> None:
        self.table = table
        self.producer = producer
        self.changelog_topic = table.changelog_topic.get_topic_name()
        #: partition -> key -> value (None deletes), for the batch being built.
        self._open: dict[int, dict[bytes, bytes | None]] = {}
        #: partition -> sealed segments, oldest first.
        self._segments: dict[int, deque[Segment]] = {}

    @property
    def _store(self) -> FaustRocksDBStore:
        return cast(FaustRocksDBStore, self.table.data)  # a CheckpointedStore

    def get(self, key: bytes, partition: int) -> bytes | None:
        records = self._open.get(partition)
        if records is not None and key in records:
            return records[key]
        for segment in reversed(self._segments.get(partition, ())):
            if key in segment.records:
                return segment.records[key]
        value: bytes | None = self._store.partition_db(partition).get(key)
        return value

    def scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every record of one partition (pending writes included), past the block cache.

        A full scan through the cache (Faust opens each partition's RocksDB with a
        2 GiB one) grew a 1M-customer worker's RSS by 1.7 GiB in the bench.
        """
        pending: dict[bytes, bytes | None] = {}
        for segment in self._segments.get(partition, ()):
            pending.update(segment.records)
        pending.update(self._open.get(partition, {}))
        options = ReadOptions()
        options.fill_cache(False)  # type: ignore[call-arg]  # the stub lacks the flag
        # Opened in raw mode: keys and values are bytes.
        stored = cast(
            Iterator[tuple[bytes, bytes]],
            self._store.partition_db(partition).items(read_opt=options),
        )
        for key, value in stored:
            if key != CHANGELOG_OFFSET_KEY and key not in pending:
                yield key, value
        for key, pending_value in pending.items():
            if pending_value is not None:
                yield key, pending_value

    def put(self, key: bytes, value: bytes | None, partition: int) -> None:
        self._open.setdefault(partition, {})[key] = value

    def seal(self, partition: int, source_offset: int, headers: Headers) -> int:
        """Produce the partition's open writes to the changelog; keep them pending."""
        records = self._open.pop(partition, None)
        if not records:
            return 0
        segment = Segment(source_offset, records)
        send = self.producer.send
        last = len(records) - 1
        for index, (key, value) in enumerate(records.items()):
            send(
                self.changelog_topic,
                key,
                value,
                partition,
                0,
                segment.delivered if index == last else None,
                headers,
            )
        self._segments.setdefault(partition, deque()).append(segment)
        return len(records)

    def write_committed(self, partition: int, committed_offset: int) -> int:
        """Write to RocksDB, in one batch, the segments whose input is committed."""
        segments = self._segments.get(partition)
        if not segments or segments[0].source_offset >= committed_offset:
            return 0
        batch = WriteBatch(raw_mode=True)
        changelog_offset = -1
        written = 0
        while segments and segments[0].source_offset < committed_offset:
            segment = segments.popleft()
            for key, value in segment.records.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            written += len(segment.records)
            if segment.changelog_offset is not None:
                changelog_offset = max(changelog_offset, segment.changelog_offset)
        if changelog_offset >= 0:
            # Faust's recovery starts after this offset; in the same write as the state.
            batch.put(CHANGELOG_OFFSET_KEY, str(changelog_offset).encode())
        self._store.partition_db(partition).write(batch)
        return written

    def discard(self) -> None:
        """Forget every pending write (the partitions were revoked)."""
        self._open = {}
        self._segments = {}

    def pending_partitions(self) -> set[int]:
        return {p for p, segments in self._segments.items() if segments}


def due_indexes(
    records: TableWriter,
    partitions: set[int],
    due_of: Callable[[bytes], float | None],
    kind: str,
) -> tuple[dict[int, DueIndex], int]:
    """Index every record of ``partitions`` by its next due time (``due_of``, which
    raises ValueError on a corrupt record: logged by partition only, since keys are
    customer ids or identifiers, and left out). Returns the indexes and how many
    records have a due time."""
    due = {p: DueIndex() for p in partitions}
    indexed = 0
    for partition, index in due.items():
        for key, value in records.scan(partition):
            try:
                when = due_of(value)
            except ValueError:
                log.error("A %s record on partition %d is corrupt", kind, partition)
                continue
            if when is not None:
                index.update(key, when)
                indexed += 1
    return due, indexed
