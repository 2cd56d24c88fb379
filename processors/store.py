"""The tables' RocksDB store: checkpointed recovery, bulk restore, options that hold.

Faust keeps each table partition in its own RocksDB database. Three things differ here:

- recovery applies the checkpoint's rule (:class:`processors.checkpoint.ChangelogWrites`):
  changelog records of uncommitted checkpoints are skipped;
- a newly assigned active partition is first restored in bulk
  (:mod:`processors.restore`), so Faust's record-by-record recovery reads only the tail;
- every open passes the configured options for the default column family too: rocksdict
  reopens an existing database with the options saved in its OPTIONS file, which cannot
  hold a block cache or a bloom filter (a reopened store got an 8 MiB cache).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.types import TP, EventT, Message

from processors.checkpoint import ChangelogWrites
from processors.faust_adapter import (
    FaustRocksDBStore,
    FaustTable,
    assigned_standbys,
    standby_changelog_partitions,
)
from processors.restore import RestoreTarget, restore_partitions
from processors.standby import StandbyHold

if TYPE_CHECKING:
    from processors.checkpoint import Checkpoint

log = logging.getLogger(__name__)


#: One block cache and one memtable budget per process and size, shared by every table
#: partition's database: a worker's RocksDB memory no longer grows with the partitions it
#: holds (Faust gives each database its own cache: 24 of them grew a worker past 3.5 GiB).
_SHARED_CACHES: dict[int, rocksdict.Cache] = {}
_SHARED_MEMTABLES: dict[int, rocksdict.WriteBufferManager] = {}


def shared_cache(size: int) -> rocksdict.Cache:
    cache = _SHARED_CACHES.get(size)
    if cache is None:
        cache = _SHARED_CACHES[size] = rocksdict.Cache(size)
    return cache


def shared_memtables(size: int) -> rocksdict.WriteBufferManager:
    """A memtable budget: past it RocksDB flushes the largest memtables (never stalls)."""
    manager = _SHARED_MEMTABLES.get(size)
    if manager is None:
        manager = _SHARED_MEMTABLES[size] = rocksdict.WriteBufferManager(size, False)
    return manager


class StoreOptions(RocksDBOptions):
    """Faust's RocksDB options with a shared block cache and memtable budget, applied to
    the default column family on every open.

    ``block_cache_size`` is the size of the one cache every store of the process shares;
    ``memtable_budget`` (0: none) bounds all their memtables together.
    """

    def __init__(self, *, memtable_budget: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memtable_budget = memtable_budget

    def as_options(self) -> Any:
        options = super().as_options()
        if not self.use_rocksdict:
            return options
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(shared_cache(self.block_cache_size))
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        if self.memtable_budget > 0:
            options.set_write_buffer_manager(shared_memtables(self.memtable_budget))
        return options

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        if not self.use_rocksdict:
            return super().open(path, read_only=read_only)
        options = self.as_options()
        options.set_db_paths([rocksdict.DBPath(str(path), self.target_file_size_base)])
        access = (
            rocksdict.AccessType.read_write()
            if self.ttl is None
            else rocksdict.AccessType.with_ttl(self.ttl)
        )
        db = rocksdict.Rdict(
            str(path),
            options=options,
            # Without this an existing database's column families are opened with the
            # options loaded from its OPTIONS file: default block cache, no bloom filter.
            column_families={"default": self.as_options()},
            access_type=access,
        )
        db.set_read_options(rocksdict.ReadOptions())
        return db


class CheckpointedStore(FaustRocksDBStore):
    """Faust's RocksDB store whose changelog recovery skips uncommitted records.

    A newly assigned active partition is restored in bulk first
    (:mod:`processors.restore`); Faust's recovery reads what is left.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Changelog records of standby partitions held back (made on first use).
        self._standby_hold: StandbyHold[Message] | None = None
        # From the table's options, as Faust built its own RocksDBOptions.
        self.rocksdb_options = StoreOptions(
            **(self.options or {}), use_rocksdict=self.use_rocksdict
        )

    def _checkpoint(self) -> Checkpoint:
        return cast("Checkpoint", self.app.pipeline.checkpoint)  # type: ignore[attr-defined]

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        checkpoint = self._checkpoint()
        writes = ChangelogWrites(checkpoint.committed_position)
        standby_tps = standby_changelog_partitions(self.app)
        standby: dict[int, list[Message]] = {}
        for event in batch:
            message = event.message
            if message.tp in standby_tps:
                # Written moments ago by the partition's active worker: its checkpoint
                # may not have committed yet (processors/standby.py).
                standby.setdefault(message.partition, []).append(message)
                continue
            writes.add(
                message.partition,
                message.offset,
                cast("bytes | None", message.key),
                cast("bytes | None", message.value),
                message.headers,
            )
        self._admit_standby(standby_tps, standby, writes)
        writes.write(self.partition_db)
        if writes.skipped:
            checkpoint.skipped_on_recovery(writes.skipped)

    def recheck_standby(self) -> None:
        """Check held standby records again without new ones (a timer calls this).

        Held records are otherwise checked only when their partition's next records
        arrive: the last batches the active worker wrote before it went quiet, or was
        killed, would stay out of this RocksDB until a promotion reads them again.
        """
        hold = self._standby_hold
        if hold is None:
            return
        held = hold.holding()
        if held:
            writes = ChangelogWrites(self._checkpoint().committed_position)
            self._admit_standby(
                standby_changelog_partitions(self.app), {p: [] for p in held}, writes
            )
            writes.write(self.partition_db)

    def _admit_standby(
        self,
        standby_tps: Set[TP],
        records: Mapping[int, list[Message]],
        writes: ChangelogWrites,
    ) -> None:
        """Standby partitions: committed records into ``writes``, pending ones held back."""
        hold = self._standby_hold
        if hold is None:
            if not records:
                return
            pipeline = self.app.pipeline  # type: ignore[attr-defined]
            hold = self._standby_hold = StandbyHold(
                pipeline.standby_positions.position,
                pipeline.settings.standby_max_held_records,
                self._standby_overflow,
            )
        topic = self.table.changelog_topic.get_topic_name()
        hold.retain({tp.partition for tp in standby_tps if tp.topic == topic})
        abandoned = 0
        for partition, messages in records.items():
            admitted = hold.admit(partition, messages)
            abandoned += admitted.abandoned
            for message in admitted.apply:
                writes.apply(
                    partition,
                    cast("bytes | None", message.key),
                    cast("bytes | None", message.value),
                )
            if admitted.offset is not None:
                writes.persist(partition, admitted.offset)
        if abandoned:
            self.app.pipeline.metrics.changelog_records_skipped.inc(abandoned)  # type: ignore[attr-defined]

    def _standby_overflow(self, partition: int, held: int) -> None:
        log.warning(
            "Standby %s[%d] holds %d changelog records whose checkpoint has not committed "
            "(OMNI_STANDBY_MAX_HELD_RECORDS): it stops following until the next rebalance; "
            "a promotion recovers them from the changelog",
            self.table.name,
            partition,
            held,
        )

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        topic = self.table.changelog_topic.get_topic_name()
        standbys = assigned_standbys(self.app)
        partitions = sorted(
            tp.partition for tp in newly_assigned if tp.topic == topic and tp not in standbys
        )
        if partitions:
            await self._restore(topic, partitions)

    async def _restore(self, topic: str, partitions: list[int]) -> None:
        checkpoint = self._checkpoint()
        targets = []
        for partition in partitions:
            persisted = self.persisted_offset(TP(topic, partition))
            start = 0 if persisted is None else persisted + 1
            targets.append(RestoreTarget(topic, partition, start))
        # The committed positions first, on this thread: the checkpoint's cache is not
        # shared with the restore's thread.
        committed = {p: checkpoint.committed_position(p) for p in partitions}
        pipeline = self.app.pipeline  # type: ignore[attr-defined]
        log.info("Bulk restore of %s partitions %s starts", topic, partitions)
        result = await asyncio.to_thread(
            restore_partitions,
            pipeline.settings.kafka_client_config(),
            targets,
            self.partition_db,
            committed.__getitem__,
            pipeline.restore_progress,
        )
        if result.records:
            log.info(
                "Restored %d records of %s partitions %s in %.1f s (%.0f records/s)",
                result.records,
                topic,
                partitions,
                result.seconds,
                result.records_per_second,
            )
        if result.skipped:
            checkpoint.skipped_on_recovery(result.skipped)


class CheckpointedTable(FaustTable):
    """A table on :class:`CheckpointedStore` (Faust's ``Table`` app setting)."""

    def new_store(self, url: Any) -> Any:
        if str(url).startswith("rocksdb:"):
            return CheckpointedStore(
                url,
                self.app,
                self,
                table_name=self.name,
                key_type=self.key_type,
                key_serializer=self.key_serializer,
                value_serializer=self.value_serializer,
                value_type=self.value_type,
                loop=self.loop,
                options=self.options,
            )
        return super().new_store(url)
