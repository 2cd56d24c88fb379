"""The one place the worker touches faust-streaming's and aiokafka's internals.

Faust has no public hook for what the worker needs: bulk delivery from the fetch loop,
offset commits ordered with the checkpoint, changelog recovery that skips uncommitted
records, its own RocksDB writes. The classes here give each private hook or attribute
a public name, and the functions read the internal attributes we rely on; the rest of
the worker uses only those. :data:`INTERNALS` lists every name with why it is needed,
``tests/unit/processors/test_faust_adapter.py`` pins each one (existence and
signature) and checks that no other module of ``processors`` names one, so an upgrade
breaks the tests, not production.

The exact versions these were written against are pinned in ``pyproject.toml`` and
checked when an app is built (:func:`check_versions`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final, cast

import faust
from faust.stores import rocksdb as faust_rocksdb
from faust.tables import Table
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT, Message, StreamT
from mode import Service, ServiceT
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer
    from faust.tables.manager import TableManager
    from faust.types.stores import StoreT
    from faust.types.transports import TransportT
    from rocksdict import Rdict

#: Seconds a seek may wait for the consumer thread's loop (it takes microseconds there).
SEEK_TIMEOUT = 10.0

#: Distribution -> the exact version the names below were checked against.
PINNED: Final[Mapping[str, str]] = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


@dataclass(frozen=True, slots=True)
class Internal:
    """One private or undocumented name we rely on."""

    owner: str
    name: str
    why: str


_CONSUMER = "faust.transport.drivers.aiokafka.Consumer"
_THREAD = "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread"
_STORE = "faust.stores.rocksdb.Store"

INTERNALS: Final[tuple[Internal, ...]] = (
    # Hooks we override (Faust calls them by these names).
    Internal(_CONSUMER, "_drain_messages", "the fetch loop, replaced by bulk delivery"),
    Internal(_CONSUMER, "_commit_offsets", "every commit passes the checkpoint first"),
    Internal(_CONSUMER, "_new_offset", "its head check commits past one unacked offset"),
    Internal(_CONSUMER, "_new_consumer_thread", "the thread that commits with metadata"),
    Internal(_CONSUMER, "_seek", "Faust seeks aiokafka from the wrong thread"),
    Internal(_THREAD, "_commit", "commits carry the checkpoint's metadata"),
    Internal("faust.tables.Table", "_new_store_by_url", "tables on the checkpointed store"),
    Internal("faust.App", "_new_transport", "the transport with the bulk consumer"),
    # Bookkeeping we read or correct.
    Internal(_CONSUMER, "_read_offset", "last offset delivered per partition"),
    Internal(_CONSUMER, "_committed_offset", "committed offsets: health, commit head"),
    Internal(_CONSUMER, "_acked", "acked offsets: the commit head"),
    Internal(_CONSUMER, "_gap", "offsets taken as acked: broker-skipped ones"),
    Internal(_CONSUMER, "_commit_every", "commit after n acks, as Faust's own loop"),
    Internal(_CONSUMER, "_n_acked", "acks since the last commit"),
    Internal(_CONSUMER, "_stopped", "the fetch loop ends when consumer or fetcher stop"),
    Internal(_THREAD, "_ensure_consumer", "the aiokafka consumer to commit through"),
    Internal(_CONSUMER, "_thread", "the consumer thread that owns the aiokafka consumer"),
    Internal(_THREAD, "thread_loop", "the loop aiokafka's consumer runs on"),
    Internal("faust.transport.conductor.Conductor", "_tp_index", "a partition's streams"),
    Internal(
        "faust.transport.conductor.Conductor",
        "_tp_to_callback_lock",
        "a delivery cannot block while this lock is free",
    ),
    Internal(_STORE, "_db_for_partition", "our own batched RocksDB writes and scans"),
    Internal(_STORE, "offset_key", "the key Faust keeps the changelog offset under"),
    # Undocumented attributes without an underscore.
    Internal("faust.Stream", "channel.queue", "a batch is what is queued already"),
    Internal("faust.App", "consumer_generation_id", "events from before a rebalance"),
    Internal("faust.types.Message", "generation_id", "events from before a rebalance"),
    Internal("faust.tables.manager.TableManager", "recovery", "readiness, recovery gauge"),
    Internal(
        "faust.tables.recovery.Recovery",
        "standby_tps",
        "standby changelog partitions: their records wait for their checkpoint's commit",
    ),
    Internal("faust.sensors.Monitor", "stream_inbound_time", "Faust's slow-stream warning"),
    Internal(
        "mode.utils.queues.FlowControlEvent",
        "_queues",
        "resume() empties them: the streams' delivered events are left out",
    ),
)


class IncompatibleFaust(RuntimeError):
    """An installed faust-streaming or aiokafka is not the version the worker pins."""


def check_versions(installed: Callable[[str], str] = metadata.version) -> None:
    """Refuse to run on versions whose internals nobody checked."""
    wrong = []
    for distribution, pinned in PINNED.items():
        try:
            found = installed(distribution)
        except metadata.PackageNotFoundError:
            found = "none"
        if found != pinned:
            wrong.append(f"{distribution} {found} (pinned: {pinned})")
    if wrong:
        raise IncompatibleFaust(
            f"installed {', '.join(wrong)}: the worker relies on internals of exactly the "
            "pinned versions (processors/faust_adapter.py). Install the project's pins "
            "(`make bootstrap`, or `pip install -e .`). To upgrade, change the pins in "
            "pyproject.toml and faust_adapter.PINNED together and make "
            "tests/unit/processors/test_faust_adapter.py pass."
        )


# --- the consumer -------------------------------------------------------------------------


class FaustConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread; override :meth:`commit_to_broker`."""

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        return await self.commit_to_broker(offsets)

    async def commit_to_broker(self, offsets: Mapping[TP, int]) -> bool:
        return cast(bool, await super()._commit(offsets))

    def kafka_consumer(self) -> AIOKafkaConsumer:
        return self._ensure_consumer()


class FaustConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer: its private hooks and bookkeeping under public names.

    Subclasses override :meth:`drain_messages`, :meth:`commit_offsets` and
    :meth:`committable_offset`, and set :attr:`consumer_thread`.
    """

    consumer_thread: type[FaustConsumerThread] = FaustConsumerThread

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        await self.drain_messages(fetcher)

    async def drain_messages(self, fetcher: ServiceT) -> None:
        """Deliver fetched messages until the consumer or ``fetcher`` stops."""
        await super()._drain_messages(fetcher)

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        return await self.commit_offsets(offsets, start_new_transaction)

    async def commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        """Commit ``offsets`` (every commit path of Faust's comes here)."""
        return cast(bool, await super()._commit_offsets(offsets, start_new_transaction))

    def _new_offset(self, tp: TP) -> int | None:
        return self.committable_offset(tp)

    def committable_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp`` now, None: nothing new."""
        return cast("int | None", super()._new_offset(tp))

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return self.consumer_thread(self, loop=self.loop, beacon=self.beacon)

    async def _seek(self, partition: TP, offset: int) -> None:
        # Faust's _seek calls aiokafka's seek() from this (the event loop's) thread, but
        # the aiokafka consumer lives on the consumer thread's loop and is not thread-safe:
        # its fetcher deletes the partition's buffered records while the consumer thread
        # may be between reading and deleting them in fetched_records(). A restarted
        # worker's Fetcher crashed on that (KeyError in aiokafka's fetcher, exit code 1)
        # when a second seek after an assignment met its first fetch. So the seek runs on
        # the consumer thread's loop, between two of its steps, and this thread waits for
        # it without yielding: as before, no other task runs between asking for a seek
        # and its effect (BulkDeliveryConsumer.check_position relies on that; a seek that
        # yielded here lost events in tests/integration/test_checkpoint.py).
        thread = cast(faust_aiokafka.AIOKafkaConsumerThread, self._thread)

        async def seek() -> None:
            thread.seek(partition, offset)

        asyncio.run_coroutine_threadsafe(seek(), thread.thread_loop).result(SEEK_TIMEOUT)

    # Bookkeeping (mutable: the bulk fetch loop keeps it as Faust's loop would).

    @property
    def read_offsets(self) -> dict[TP, int | None]:
        """tp -> the last offset delivered (or the position a seek set)."""
        return cast("dict[TP, int | None]", self._read_offset)

    @property
    def committed_offsets(self) -> dict[TP, int | None]:
        """tp -> the committed offset (read at assignment, updated by every commit)."""
        return cast("dict[TP, int | None]", self._committed_offset)

    @property
    def acked_offsets(self) -> Mapping[TP, list[int]]:
        """tp -> offsets acked and not yet committed."""
        return cast("Mapping[TP, list[int]]", self._acked)

    @property
    def gaps(self) -> Mapping[TP, Any]:
        """tp -> ``intervaltree.IntervalTree`` of offsets that count as acked."""
        return cast("Mapping[TP, Any]", self._gap)

    @property
    def commit_every(self) -> int | None:
        """Commit after this many acks (``broker_commit_every``)."""
        return cast("int | None", self._commit_every)

    @property
    def acks_since_commit(self) -> int:
        return cast(int, self._n_acked)

    @acks_since_commit.setter
    def acks_since_commit(self, value: int) -> None:
        self._n_acked = value

    def stopped_check(self) -> Callable[[], bool]:
        """A cheap check of whether this consumer is stopping."""
        return service_stopped_check(self)


def service_stopped_check(service: ServiceT) -> Callable[[], bool]:
    return cast(Service, service)._stopped.is_set


def delivery_would_block_checks(
    app: AppT,
) -> tuple[Callable[[], bool], Callable[[TP], bool]]:
    """Whether the conductor's callback can run without suspending: per fetch, per ``tp``.

    The conductor delivers under a lock and into each subscribed stream's queue; Faust's
    own loop races every delivery against ``suspend_flow`` because either can block.
    """
    conductor = app.topics
    subscribers = conductor._tp_index  # type: ignore[attr-defined]
    callback_lock = conductor._tp_to_callback_lock  # type: ignore[attr-defined]

    def lock_free() -> bool:
        return not cast(asyncio.Lock, callback_lock).locked()

    def room_for(tp: TP) -> bool:
        return not any(channel.queue.full() for channel in subscribers.get(tp, ()))

    return lock_free, room_for


# --- events and streams -------------------------------------------------------------------


def stream_queue(stream: StreamT[Any]) -> asyncio.Queue[Any]:
    """The queue a stream's events wait in (empty: the batch is complete)."""
    return cast("asyncio.Queue[Any]", stream.channel.queue)  # type: ignore[attr-defined]


def consumer_generation(app: AppT) -> int:
    """The consumer group generation the app's partitions belong to now."""
    return cast(int, app.consumer_generation_id)


def message_generation(message: Message) -> int | None:
    """The group generation ``message`` was fetched in."""
    return cast("int | None", message.generation_id)


def note_stream_inbound(monitor: Any, tp: TP, at: float) -> None:
    """What Faust's slow-stream warning reads: when ``tp`` last had an event."""
    monitor.stream_inbound_time[tp] = at


# --- tables -------------------------------------------------------------------------------


def recovery_completed(app: AppT) -> bool:
    return cast("TableManager", app.tables).recovery.completed.is_set()


def assigned_standbys(app: AppT) -> set[TP]:
    """The changelog partitions this worker holds as standby replicas now."""
    return set(app.assignor.assigned_standbys())


def recovery_remaining(app: AppT) -> int:
    """Changelog records left to recover for the active tables."""
    return cast(int, cast("TableManager", app.tables).recovery.active_remaining_total())


def standby_changelog_partitions(app: AppT) -> Set[TP]:
    """The changelog partitions Faust feeds this worker as standbys (not active)."""
    return cast("Set[TP]", cast("TableManager", app.tables).recovery.standby_tps)


#: The key Faust keeps a partition's changelog offset under, beside the table's keys.
CHANGELOG_OFFSET_KEY: Final[bytes] = faust_rocksdb.Store.offset_key


class FaustRocksDBStore(faust_rocksdb.Store):
    """Faust's RocksDB store with the partition databases under a public name."""

    def partition_db(self, partition: int) -> Rdict:
        """The RocksDB database holding ``partition``'s keys."""
        return self._db_for_partition(partition)


class FaustTable(Table):
    """Faust's table; override :meth:`new_store` to choose the store."""

    def _new_store_by_url(self, url: Any) -> StoreT:
        return self.new_store(url)

    def new_store(self, url: Any) -> StoreT:
        return super()._new_store_by_url(url)


class StreamFlowControl(FlowControlEvent):
    """``app.flow_control`` whose :meth:`resume` keeps the events already delivered into
    the streams of acked topics.

    Faust's ``resume()`` empties every stream queue, whether flow was suspended or not,
    and its recovery calls it after the task that seeks the partitions to their committed
    offsets has returned, so the fetch loop runs in between: the records it delivered
    there (read offsets recorded, nothing wrong with them) were thrown away, never
    processed nor acked, and the partition's commit stalled at the first of them until
    the next rebalance (README "Reliability"). A revocation still empties the queues
    (``flow_control.clear()``), and the changelog queue is still emptied on resume.
    """

    def __init__(self, kept: Callable[[], Set[Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: The queues to leave alone on resume, asked for at each resume.
        self.kept_queues = kept

    def resume(self) -> None:
        queues = self._queues
        kept = [queue for queue in self.kept_queues() if queue in queues]
        queues.difference_update(kept)
        try:
            super().resume()
        finally:
            queues.update(kept)


def delivered_stream_queues(app: AppT) -> Set[Any]:
    """The queues the conductor delivers records of acked topics into (not changelogs)."""
    conductor = app.topics
    subscribers = conductor._tp_index  # type: ignore[attr-defined]
    changelogs = cast("TableManager", app.tables).changelog_queue
    return {
        channel.queue
        for tp, channels in subscribers.items()
        if conductor.acks_enabled_for(tp.topic)
        for channel in channels
        if channel.queue is not changelogs
    }


class FaustApp(faust.App):
    """Faust's app; override :meth:`new_transport` to choose the transport.

    Its ``flow_control`` is a :class:`StreamFlowControl`.
    """

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return StreamFlowControl(lambda: delivered_stream_queues(self), loop=self.loop)

    def _new_transport(self) -> TransportT:
        return self.new_transport()

    def new_transport(self) -> TransportT:
        return super()._new_transport()
