"""One checkpoint: the order in which a batch's effects become durable.

Per commit (Faust's commit interval, a rebalance, shutdown), in this order:

1. every output and changelog record of the processed batches is acknowledged by
   the broker (the producer is flushed and each delivery checked);
2. the input offsets are committed, with metadata naming the consumer-group
   generation that made them (:func:`commit_metadata`);
3. only then the batches whose offsets were committed are written to the local
   RocksDB store, with Faust's persisted changelog offset in the same write.

Until step 3 every read (later batches, the timer index) sees the pending
writes (:class:`processors.output.TableWriter` keeps them per batch). So a
SIGKILL at any instant leaves local state at or behind the committed input:
the input is processed again and its outputs, with deterministic ids, are
recognisable duplicates. This is the order Quix Streams documents for its
checkpoints; Kafka transactions are not an option with Faust's aiokafka consumer.

Recovery must not run ahead of committed input either. Every changelog record
carries a header ``omni-src: <generation>:<source offset>`` (the input offset
of the batch that made it; timers fire from input records too, see
:mod:`processors.customer`), and every commit carries
``omni1:<generation>:<start>`` where ``start`` is the committed offset when
that generation took the partition. :func:`record_is_committed` is the rule
recovery (:mod:`processors.store`, in bulk and record by record) and
``omni redis rebuild`` apply: a record of an uncommitted batch, or one written
late by a worker whose generation has moved on (resumed after SIGSTOP), is skipped.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, TopicPartition
from faust.types import TP
from rocksdict import WriteBatch

from processors.faust_adapter import CHANGELOG_OFFSET_KEY

if TYPE_CHECKING:
    from processors.output import Headers, OutputProducer, TableWriter

log = logging.getLogger(__name__)

#: Changelog record header naming the batch that made the record.
SOURCE_HEADER = "omni-src"
#: Prefix of our commit metadata (versioned, so a later format can be told apart).
METADATA_PREFIX = "omni1"


#: Who wrote a record or a commit: (consumer-group generation, process incarnation).
Writer = tuple[int, int]


@dataclass(frozen=True, slots=True)
class CommittedPosition:
    """What the group committed for one input partition."""

    #: The next input offset to read; everything before it is done.
    offset: int
    #: Who made the last commit (None: a commit without our metadata).
    writer: Writer | None = None
    #: The committed offset when that writer took the partition.
    start: int | None = None


def _writer(text: str) -> Writer:
    generation, _, incarnation = text.partition(".")
    return int(generation), int(incarnation or 0)


def source_header(writer: Writer, source_offset: int) -> Headers:
    return [(SOURCE_HEADER, f"{writer[0]}.{writer[1]}:{source_offset}".encode())]


def commit_metadata(writer: Writer, start: int) -> str:
    # The trailing NUL ends the string for readers that take it as a C string:
    # confluent-kafka's TopicPartition.metadata reads past the end of the
    # metadata without it (bytes of other memory came back, and failed to decode).
    return f"{METADATA_PREFIX}:{writer[0]}.{writer[1]}:{start}\0"


def parse_commit_metadata(offset: int, metadata: str | None) -> CommittedPosition:
    parts = (metadata or "").partition("\0")[0].split(":")
    if len(parts) == 3 and parts[0] == METADATA_PREFIX:
        try:
            return CommittedPosition(offset, _writer(parts[1]), int(parts[2]))
        except ValueError:
            pass
    return CommittedPosition(offset)


def parse_source(value: bytes) -> tuple[Writer, int] | None:
    writer, sep, offset = value.decode("ascii", "replace").partition(":")
    if not sep:
        return None
    try:
        return _writer(writer), int(offset)
    except ValueError:
        return None


def record_is_committed(source: bytes | None, committed: CommittedPosition | None) -> bool:
    """Whether a changelog record belongs to a committed checkpoint.

    ``source`` is the record's ``omni-src`` header (None: written before this
    scheme existed, taken as committed). A record by writer w for input offset s
    is committed when
    - w made the last commit and s is below the committed offset, or
    - w is older and s is below the offset the last committer started from (what
      an older writer wrote at or past it was never committed: its successor
      redid that input);
    never when w is newer than the last commit, or nothing was ever committed.
    Writers are ordered by generation, then by process start (a static member
    restarted after SIGKILL rejoins in the same generation).
    """
    if source is None:
        return True
    parsed = parse_source(source)
    if parsed is None or committed is None:
        return False
    writer, offset = parsed
    if committed.writer is None or committed.start is None:
        return offset < committed.offset
    if writer == committed.writer:
        return offset < committed.offset
    if writer < committed.writer:
        return offset < committed.start
    return False


class RecordState(enum.Enum):
    """Where a changelog record stands, for a standby that follows the changelog live."""

    #: Its checkpoint committed: apply it.
    COMMITTED = "committed"
    #: Its checkpoint may still commit (its writer has not committed past it yet): hold it.
    PENDING = "pending"
    #: Its checkpoint never will (its input was redone by a later writer, or the record
    #: cannot be read): drop it.
    ABANDONED = "abandoned"


def classify_record(source: bytes | None, committed: CommittedPosition | None) -> RecordState:
    """:func:`record_is_committed` for a partition that another worker is still writing.

    An active worker recovers after taking a partition: whatever is not committed then
    is never committed (the new writer redoes that input). A standby reads records as
    they are written, so "not committed" splits in two: PENDING when its writer, or a
    writer newer than the last commit, may still commit past it; ABANDONED when a newer
    writer has committed from a start at or below its input (the existing rule's "older
    writer" case). Positions only move forward, so COMMITTED is final, and a PENDING
    record becomes COMMITTED or ABANDONED once the position moves past it. (An ABANDONED
    record of a writer two generations back may read as COMMITTED under a later
    committer: the rule keeps one start offset; the redo's record, later in the
    changelog, overwrites it.) COMMITTED is exactly when :func:`record_is_committed`
    holds.
    """
    if source is None:
        return RecordState.COMMITTED
    parsed = parse_source(source)
    if parsed is None:
        return RecordState.ABANDONED
    if committed is None:
        return RecordState.PENDING
    writer, offset = parsed
    if committed.writer is None or committed.start is None:
        return RecordState.COMMITTED if offset < committed.offset else RecordState.PENDING
    if writer == committed.writer:
        return RecordState.COMMITTED if offset < committed.offset else RecordState.PENDING
    if writer < committed.writer:
        return RecordState.COMMITTED if offset < committed.start else RecordState.ABANDONED
    return RecordState.PENDING


def header_value(headers: Any, name: str = SOURCE_HEADER) -> bytes | None:
    """One header's value from aiokafka's or confluent-kafka's header list."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key == name:
            return bytes(value) if value is not None else None
    return None


class CommittedOffsets:
    """Reads committed offsets and their metadata with a librdkafka client.

    It never joins the group (no ``subscribe``): an OffsetFetch only.
    """

    def __init__(self, client_config: dict[str, Any], group_id: str, topic: str) -> None:
        self._config = {**client_config, "group.id": group_id, "enable.auto.commit": False}
        self._topic = topic
        self._consumer: Consumer | None = None

    def fetch(
        self, partitions: Iterable[int], timeout: float = 10.0
    ) -> dict[int, CommittedPosition | None]:
        wanted = [TopicPartition(self._topic, p) for p in partitions]
        if not wanted:
            return {}
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        result: dict[int, CommittedPosition | None] = {}
        for tp in self._consumer.committed(wanted, timeout=timeout):
            if tp.error is not None:
                raise RuntimeError(
                    f"cannot read the committed offset of {self._topic}[{tp.partition}]: "
                    f"{tp.error}; check the broker and the group's ACLs"
                )
            result[tp.partition] = None if tp.offset < 0 else self._position(tp)
        return result

    @staticmethod
    def _position(tp: TopicPartition) -> CommittedPosition:
        try:
            metadata = tp.metadata
        except UnicodeDecodeError:
            # Metadata without our terminator (see commit_metadata): the offset alone.
            log.warning("Unreadable commit metadata on %s[%d]", tp.topic, tp.partition)
            return CommittedPosition(tp.offset)
        return parse_commit_metadata(tp.offset, metadata)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class Checkpoint:
    """The worker's one checkpoint: stamps records, orders commit and local writes."""

    def __init__(
        self,
        producer: OutputProducer,
        tables: Sequence[TableWriter],
        source_topic: str,
        committed_offsets: CommittedOffsets,
        max_pending_events: int,
        on_committed: Callable[[TP, int], None] | None = None,
        on_skipped: Callable[[int], None] | None = None,
    ) -> None:
        self.producer = producer
        self.tables = tuple(tables)
        self.source_topic = source_topic
        self._committed_offsets = committed_offsets
        self.max_pending_events = max_pending_events
        self._on_committed = on_committed
        self._on_skipped = on_skipped
        #: Bumped at every revocation: acks of batches discarded then are void.
        self.epoch = 0
        #: (group generation, incarnation): a static member restarted after SIGKILL
        #: rejoins in the same generation, so the process's start time tells them apart.
        self.generation = -1
        self.incarnation = time.time_ns() // 1_000_000
        #: Input partitions this worker owns now; batches of others are dropped.
        self.owned: frozenset[int] = frozenset()
        #: partition -> committed position as this generation found it (None: none yet).
        self._found: dict[int, CommittedPosition | None] = {}
        #: Events processed but not yet written locally (waiting for a commit).
        self.pending_events = 0
        self._pending_by_partition: dict[int, list[tuple[int, int]]] = {}
        self._room = asyncio.Event()
        self._room.set()

    # --- rebalancing ---------------------------------------------------------------

    def on_assigned(self, partitions: Iterable[int], generation: int) -> None:
        self.generation = generation
        self.owned = frozenset(partitions)
        self._found = {}

    def discard(self) -> None:
        """Forget every pending batch: its input was not committed and is redone."""
        self.epoch += 1
        self.owned = frozenset()
        for table in self.tables:
            table.discard()
        self._pending_by_partition = {}
        self.pending_events = 0
        self._room.set()

    def skipped_on_recovery(self, count: int) -> None:
        log.info("Recovery skipped %d changelog records of uncommitted checkpoints", count)
        if self._on_skipped is not None:
            self._on_skipped(count)

    def committed_position(self, partition: int) -> CommittedPosition | None:
        """The committed position of an input partition as this generation found it."""
        if partition not in self._found:
            self._found.update(self._committed_offsets.fetch([partition]))
        return self._found[partition]

    # --- per batch -------------------------------------------------------------------

    @property
    def writer(self) -> Writer:
        return (self.generation, self.incarnation)

    def header(self, source_offset: int) -> Headers:
        return source_header(self.writer, source_offset)

    def sealed(self, source_offsets: Mapping[int, int], events: Mapping[int, int]) -> None:
        """A batch's records are queued: ``source_offsets`` partition -> its last input offset."""
        for partition, offset in source_offsets.items():
            count = events.get(partition, 0)
            self._pending_by_partition.setdefault(partition, []).append((offset, count))
            self.pending_events += count
        if self.pending_events >= self.max_pending_events:
            self._room.clear()

    async def room(self) -> None:
        """Back-pressure: wait while too many processed events wait for a commit."""
        if not self._room.is_set():
            log.warning(
                "%d processed events wait for a commit (OMNI_MAX_PENDING_EVENTS=%d): "
                "consumption pauses until the read model catches up",
                self.pending_events,
                self.max_pending_events,
            )
            await self._room.wait()

    # --- commit ----------------------------------------------------------------------

    async def before_commit(self, offsets: Mapping[TP, int]) -> dict[TP, str]:
        """Step 1: outputs acknowledged. Returns each partition's commit metadata."""
        await self.producer.flush()
        metadata: dict[TP, str] = {}
        for tp in offsets:
            if tp.topic != self.source_topic:
                continue
            found = self.committed_position(tp.partition)
            metadata[tp] = commit_metadata(self.writer, 0 if found is None else found.offset)
        return metadata

    def after_commit(self, offsets: Mapping[TP, int]) -> None:
        """Step 3: local state of the committed batches."""
        for tp, offset in offsets.items():
            if self._on_committed is not None:
                self._on_committed(tp, offset)
            if tp.topic != self.source_topic or tp.partition not in self.owned:
                continue
            for table in self.tables:
                table.write_committed(tp.partition, offset)
            pending = self._pending_by_partition.get(tp.partition, [])
            while pending and pending[0][0] < offset:
                self.pending_events -= pending.pop(0)[1]
        if self.pending_events < self.max_pending_events:
            self._room.set()


# --- recovery ------------------------------------------------------------------------


class ChangelogWrites:
    """Changelog records as RocksDB writes, by the checkpoint's rule: one ``WriteBatch``
    per partition with the records of committed checkpoints and the persisted offset.

    Records of one changelog topic (a table's); partition p's records belong to input
    partition p, whose committed position ``committed(p)`` gives.
    """

    def __init__(self, committed: Callable[[int], CommittedPosition | None]) -> None:
        self._committed = committed
        self._batches: dict[int, WriteBatch] = {}
        self._last_offsets: dict[int, int] = {}
        self.records = 0
        self.skipped = 0

    def add(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None, headers: Any
    ) -> None:
        self.records += 1
        self._last_offsets[partition] = max(offset, self._last_offsets.get(partition, -1))
        if not record_is_committed(header_value(headers), self._committed(partition)):
            self.skipped += 1
            return
        self.apply(partition, key, value)

    def apply(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Write a record already known to be committed (None deletes)."""
        write = self._batch(partition)
        if value is None:
            write.delete(key or b"")
        else:
            write.put(key or b"", value)

    def persist(self, partition: int, offset: int) -> None:
        """Persist ``offset`` for ``partition`` (a standby's stays before its held records)."""
        self._last_offsets[partition] = offset

    def _batch(self, partition: int) -> WriteBatch:
        write = self._batches.get(partition)
        if write is None:
            write = self._batches[partition] = WriteBatch(raw_mode=True)
        return write

    def write(self, db_for: Callable[[int], Any]) -> None:
        """One write per partition: the records and, in the same write, the persisted offset."""
        for partition, offset in self._last_offsets.items():
            # Past the skipped records too: they stay uncommitted for good (their input is
            # redone by this or a later generation, which writes the keys again).
            self._batch(partition).put(CHANGELOG_OFFSET_KEY, str(offset).encode())
        for partition, write in self._batches.items():
            db_for(partition).write(write)
        self._batches = {}
        self._last_offsets = {}
