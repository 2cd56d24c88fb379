"""The consumer's offset bookkeeping: nothing is committed past an event that was not
processed, and nothing acked from before a rebalance counts after it.

They also pin the Faust behaviour it corrects (through the names of
:mod:`processors.faust_adapter`, whose own tests pin the names): if an upgrade changes
it, these fail first.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from faust.transport.consumer import ThreadDelegateConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from mode import Service

from processors.app import OmniApp
from processors.transport import DELIVER, DROP, BulkDeliveryConsumer
from tests.unit.processors.doubles import unconnected_app

EVENTS = TP("omni.customer-events", 1)


@pytest.fixture()
def app() -> Iterator[OmniApp]:
    with unconnected_app() as app:  # the consumer is built, never started
        yield app


@pytest.fixture()
def consumer(app: OmniApp) -> BulkDeliveryConsumer:
    consumer = app.consumer
    assert isinstance(consumer, BulkDeliveryConsumer)
    return consumer


def bookkeeping(
    consumer: BulkDeliveryConsumer, committed: int | None, acked: list[int]
) -> BulkDeliveryConsumer:
    consumer.committed_offsets[EVENTS] = committed
    consumer.acked_offsets[EVENTS][:] = acked
    consumer._acked_index[EVENTS] = set(acked)
    return consumer


def message(offset: int, generation: int | None) -> Message:
    return Message(
        EVENTS.topic,
        EVENTS.partition,
        offset,
        0.0,
        0,
        None,
        b"cx-1",
        b"{}",
        None,
        tp=EVENTS,
        generation_id=generation,
    )


class TestNewOffset:
    def test_faust_alone_commits_past_an_unacked_head_offset(
        self, consumer: BulkDeliveryConsumer
    ) -> None:
        # The bug the override exists for: offset 10 was never acked, Faust commits 13.
        bookkeeping(consumer, committed=10, acked=[11, 12])
        assert faust_aiokafka.Consumer._new_offset(consumer, EVENTS) == 13

    def test_an_unacked_head_offset_holds_the_commit(self, consumer: BulkDeliveryConsumer) -> None:
        bookkeeping(consumer, committed=10, acked=[11, 12])
        assert consumer.committable_offset(EVENTS) is None
        assert consumer.acked_offsets[EVENTS] == [11, 12]  # kept for when 10 is acked

    def test_the_commit_moves_once_the_head_is_acked(self, consumer: BulkDeliveryConsumer) -> None:
        bookkeeping(consumer, committed=10, acked=[11, 12, 10, 14])
        assert consumer.committable_offset(EVENTS) == 13
        assert consumer.acked_offsets[EVENTS] == [14]

    def test_offsets_the_broker_skipped_at_the_head_count_as_acked(
        self, consumer: BulkDeliveryConsumer
    ) -> None:
        bookkeeping(consumer, committed=10, acked=[12, 13])
        consumer._skipped_by_broker(EVENTS, 10, 12)  # e.g. transaction markers
        assert consumer.committable_offset(EVENTS) == 14

    def test_without_a_committed_offset_the_run_starts_at_the_first_delivery(
        self, consumer: BulkDeliveryConsumer
    ) -> None:
        sought_at(consumer, None)
        assert consumer.check_position(EVENTS, 3) == 0  # the first record must be offset 0
        # Again at 3: the log starts there (retention); no gap to account for.
        assert consumer.check_position(EVENTS, 3) == DELIVER
        assert not consumer.gaps[EVENTS]
        bookkeeping(consumer, committed=None, acked=[4, 5])
        assert consumer.committable_offset(EVENTS) is None  # 3 was delivered, never acked
        consumer.acked_offsets[EVENTS].append(3)
        assert consumer.committable_offset(EVENTS) == 6


def sought_at(consumer: BulkDeliveryConsumer, position: int | None) -> BulkDeliveryConsumer:
    """As after a seek to ``position`` (None: no committed offset)."""
    consumer.read_offsets[EVENTS] = position
    consumer._sought.add(EVENTS)
    return consumer


class TestCheckPosition:
    def test_records_in_order_are_delivered(self, consumer: BulkDeliveryConsumer) -> None:
        sought_at(consumer, 10)
        assert consumer.check_position(EVENTS, 10) == DELIVER
        consumer.read_offsets[EVENTS] = 10
        assert consumer.check_position(EVENTS, 11) == DELIVER

    def test_nothing_is_delivered_between_assignment_and_seek(
        self, consumer: BulkDeliveryConsumer
    ) -> None:
        # Faust resumes partitions before it seeks them: the client's position is stale.
        consumer._unpositioned.add(EVENTS)
        assert consumer.check_position(EVENTS, 380) == DROP
        consumer._unpositioned.clear()  # as perform_seek does
        sought_at(consumer, 40)
        assert consumer.check_position(EVENTS, 380) == 40

    def test_records_before_the_position_are_dropped(self, consumer: BulkDeliveryConsumer) -> None:
        sought_at(consumer, 10)
        assert consumer.check_position(EVENTS, 9) == DROP
        consumer._sought.clear()
        consumer.read_offsets[EVENTS] = 10  # delivered
        assert consumer.check_position(EVENTS, 10) == DROP

    def test_a_hole_after_a_delivery_is_fetched_again(self, consumer: BulkDeliveryConsumer) -> None:
        consumer.read_offsets[EVENTS] = 10
        assert consumer.check_position(EVENTS, 14) == 11
        assert not consumer.gaps[EVENTS]  # nothing counts as done

    def test_a_fetch_that_starts_past_the_seek_is_fetched_again_once(
        self, consumer: BulkDeliveryConsumer
    ) -> None:
        sought_at(consumer, 10)
        assert consumer.check_position(EVENTS, 12) == 10
        # Again past it: the broker has no offsets 10 and 11 (e.g. transaction markers).
        assert consumer.check_position(EVENTS, 12) == DELIVER
        bookkeeping(consumer, committed=10, acked=[12])
        assert consumer.committable_offset(EVENTS) == 13


class TestAck:
    @pytest.fixture(autouse=True)
    def acking(self, app: OmniApp) -> None:
        app.topics.acking_topics.add(EVENTS.topic)
        app.consumer_generation_id = 7

    def test_an_event_of_the_current_generation_is_acked(
        self, consumer: BulkDeliveryConsumer
    ) -> None:
        assert consumer.ack(message(5, generation=7))
        assert consumer.acked_offsets[EVENTS] == [5]

    def test_an_event_fetched_before_a_rebalance_is_not(
        self, consumer: BulkDeliveryConsumer
    ) -> None:
        # Its partition was sought back: the copy delivered again must be processed first.
        assert not consumer.ack(message(5, generation=6))
        assert consumer.acked_offsets[EVENTS] == []
        assert consumer.ack(message(5, generation=7))
        assert consumer.acked_offsets[EVENTS] == [5]


class TestFetchLoop:
    """The bulk fetch loop itself, fed scripted fetches (no broker): what it delivers and
    where it seeks."""

    @pytest.fixture()
    def script(
        self, app: OmniApp, consumer: BulkDeliveryConsumer, monkeypatch: pytest.MonkeyPatch
    ) -> Callable[..., tuple[list[int], list[int]]]:
        app.topics.acking_topics.add(EVENTS.topic)

        def run(
            fetches: list[list[int]], rebalance_at: int | None = None
        ) -> tuple[list[int], list[int]]:
            delivered: list[int] = []
            sought: list[int] = []
            pending = list(fetches)
            fetcher = Service()

            async def getmany(timeout: float) -> AsyncIterator[tuple[TP, Message]]:
                if not pending:
                    await fetcher.stop()
                    return
                for offset in pending.pop(0):
                    yield EVENTS, message(offset, generation=None)

            async def deliver(record: Message) -> None:
                delivered.append(record.offset)
                if record.offset == rebalance_at:
                    consumer.rebalances += 1  # as on_partitions_revoked does

            async def seek_client(tp: TP, offset: int) -> None:  # the client's seek
                sought.append(offset)

            monkeypatch.setattr(consumer, "getmany", getmany)
            monkeypatch.setattr(consumer, "callback", deliver)
            monkeypatch.setattr(consumer, "_seek", seek_client)
            asyncio.get_event_loop().run_until_complete(consumer.drain_messages(fetcher))
            return delivered, sought

        return run

    def test_records_in_order_are_delivered_in_order(
        self, consumer: BulkDeliveryConsumer, script: Any
    ) -> None:
        sought_at(consumer, 10)
        assert script([[10, 11], [12]]) == ([10, 11, 12], [])
        assert consumer.read_offsets[EVENTS] == 12

    def test_a_fetch_with_a_hole_is_fetched_again_from_the_hole(
        self, consumer: BulkDeliveryConsumer, script: Any
    ) -> None:
        sought_at(consumer, 10)
        # 12 and 13 were fetched but dropped (flow stopped): the next fetch starts at 14.
        delivered, sought = script([[10, 11], [14, 15], [12, 13, 14, 15]])
        assert delivered == [10, 11, 12, 13, 14, 15]
        assert sought == [12]

    def test_records_already_delivered_are_not_delivered_again(
        self, consumer: BulkDeliveryConsumer, script: Any
    ) -> None:
        sought_at(consumer, 10)
        assert script([[10, 11], [10, 11, 12]]) == ([10, 11, 12], [])

    def test_a_rebalance_abandons_the_rest_of_the_fetch(
        self, consumer: BulkDeliveryConsumer, script: Any
    ) -> None:
        sought_at(consumer, 10)
        delivered, _ = script([[10, 11, 12]], rebalance_at=11)
        assert delivered == [10, 11]
        # 11's delivery spanned the rebalance: the new assignment's position stands.
        assert consumer.read_offsets[EVENTS] == 10


class Subscriber:
    """A stream's channel as the conductor sees it: records of its topic go to ``queue``."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue


class TestFlowResume:
    """Faust's recovery seeks the partitions to their committed offsets in a task of its
    own, then, once it is woken up, resumes flow control. The fetch loop runs in between
    and delivers records into the streams' queues, recording their read offsets. Faust's
    ``flow_control.resume()`` empties every stream queue: those events were never
    processed nor acked, nothing fetched them again, and the partition's commit stalled at
    the first of them ("offset N was delivered but never acknowledged")."""

    @pytest.fixture()
    def stream_queue(self, app: OmniApp) -> Any:
        app.topics.acking_topics.add(EVENTS.topic)
        queue = app.FlowControlQueue(maxsize=100, clear_on_resume=True)  # as a channel's
        app.topics._tp_index[EVENTS].add(Subscriber(queue))
        app.flow_control.resume()  # recovery resumed flow to read the changelogs
        return queue

    def deliver(
        self, consumer: BulkDeliveryConsumer, queue: Any, offsets: list[int], monkeypatch: Any
    ) -> None:
        """The fetch loop delivers ``offsets`` (one fetch) as the conductor does: queued."""
        pending = [offsets]
        fetcher = Service()

        async def getmany(timeout: float) -> AsyncIterator[tuple[TP, Message]]:
            if not pending:
                await fetcher.stop()
                return
            for offset in pending.pop(0):
                yield EVENTS, message(offset, generation=None)

        async def conductor(record: Message) -> None:
            queue.put_nowait(record)

        monkeypatch.setattr(consumer, "getmany", getmany)
        monkeypatch.setattr(consumer, "callback", conductor)
        asyncio.get_event_loop().run_until_complete(consumer.drain_messages(fetcher))

    def test_events_delivered_after_the_seek_survive_recovery_resuming_flow(
        self, app: OmniApp, consumer: BulkDeliveryConsumer, stream_queue: Any, monkeypatch: Any
    ) -> None:
        sought_at(consumer, 10)  # the recovery's seek task has returned
        self.deliver(consumer, stream_queue, [10, 11], monkeypatch)
        assert consumer.read_offsets[EVENTS] == 11  # delivered: never fetched again
        app.flow_control.resume()  # the recovery, woken up after its seek
        queued = [stream_queue.get_nowait().offset for _ in range(stream_queue.qsize())]
        assert queued == [10, 11]  # still to be processed (and acked), in order

    def test_a_revocation_still_empties_the_stream_queues(
        self, app: OmniApp, consumer: BulkDeliveryConsumer, stream_queue: Any, monkeypatch: Any
    ) -> None:
        sought_at(consumer, 10)
        self.deliver(consumer, stream_queue, [10, 11], monkeypatch)
        app.flow_control.suspend()
        app.flow_control.clear()  # as Faust's revocation does: the new owner redoes them
        assert stream_queue.empty()

    def test_other_queues_are_still_emptied_on_resume(
        self, app: OmniApp, stream_queue: Any
    ) -> None:
        changelog = app.tables.changelog_queue
        other = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
        changelog.put_nowait("changelog record")
        other.put_nowait("buffered")
        app.flow_control.resume()
        assert changelog.empty() and other.empty()


class FakeConsumerThread:
    """A consumer thread's loop in a real thread; ``seek`` notes the thread it runs on."""

    def __init__(self) -> None:
        self.thread_loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.thread_loop.run_forever, daemon=True)
        self.seeks: list[tuple[TP, int, int]] = []

    def seek(self, partition: TP, offset: int) -> None:
        self.seeks.append((partition, offset, threading.get_ident()))


class TestSeek:
    def test_faust_seeks_the_aiokafka_consumer_from_the_calling_thread(self) -> None:
        # What the override exists for: aiokafka's consumer lives on the consumer thread
        # and is not thread-safe (its fetcher's buffered records: KeyError, worker crash).
        source = inspect.getsource(ThreadDelegateConsumer._seek)
        assert "self._thread.seek(" in source and "call_thread" not in source

    def test_a_seek_runs_on_the_consumer_thread_without_yielding(
        self, app: OmniApp, consumer: BulkDeliveryConsumer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        fake = FakeConsumerThread()
        fake.thread.start()
        monkeypatch.setattr(consumer, "_thread", fake)
        others: list[str] = []

        async def seek() -> list[str]:
            app.loop.call_soon(others.append, "another task ran")
            await consumer.seek(EVENTS, 42)
            return list(others)

        try:
            # No other task runs between asking for the seek and its effect.
            assert app.loop.run_until_complete(seek()) == []
        finally:
            fake.thread_loop.call_soon_threadsafe(fake.thread_loop.stop)
            fake.thread.join(5)
            fake.thread_loop.close()
        assert fake.seeks == [(EVENTS, 42, fake.thread.ident)]
        # Faust's and our bookkeeping of the seek are unchanged.
        assert consumer.read_offsets[EVENTS] == 42
        assert consumer.check_position(EVENTS, 42) == DELIVER
