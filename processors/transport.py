"""Faust's Kafka transport with a fetch loop that hands messages over in bulk.

Faust's fetch loop (``Consumer._drain_messages``) delivers every message through
``wait_first(callback(message), suspend_flow.wait())``: two tasks and at least
one trip through the event loop per message. The agent wakes up after each
one, so its queue never holds more than one event, every "batch" is a single
event, and the whole per-batch design (one Redis pipeline, one state write per
customer) degrades to per-event work. Measured on the 2-core bench machine:
mean batch 1.0 and about 750 events/s for the worker.

This loop does the same bookkeeping (read offsets, gaps, ``commit_every``,
stopping) but awaits the conductor's callback directly whenever it is certain
not to block: flow control is active, the producer buffer is below its limit,
the callback lock is free and none of the partition's stream queues is full.
Otherwise (rebalancing, back-pressure) it falls back to Faust's path, which
lets a rebalance interrupt a blocked delivery. The agents then find a whole
fetch waiting in their queue and take it as one batch.

Faust's bookkeeping of delivered and acked offsets had holes, each of which let
a commit pass an event that was never processed, or process one out of order
(measured: SIGKILL and rebalance runs lost triggers; ``bench.chaos``):

* ``getmany`` drops the rest of a fetch when flow stops, the generation moves or
  a partition is paused; the next fetch starts after the dropped records, and
  the fetch loop recorded the hole as a gap (acked);
* a delivery in flight across a rebalance recorded its (old) offset as the read
  position *after* the new assignment's seek, so the re-fetched events below it
  were dropped as "already delivered";
* an event fetched before a rebalance could be acked (and processed) after it;
* Faust resumes partitions before it seeks them to their committed offsets: in
  between, records from wherever the client's position was were delivered (a
  restarted worker forwarded an event before the one produced before it);
* ``_new_offset`` commits past one unacked offset at the head of a partition
  (its check is ``min(acked) - committed > 1``);
* the recovery resumes flow control (which empties every stream queue) after its
  seek has returned and the fetch loop has delivered: those events were dropped
  with their offsets recorded as delivered, a commit stall (kept now:
  :class:`processors.faust_adapter.StreamFlowControl`).

Here every record of an acked topic must be the next one: when it is not, the
partition is sought back and fetched again (:meth:`BulkDeliveryConsumer.check_position`;
only a second miss at the same position is taken as offsets the broker does not
have). A fetch is abandoned once a rebalance starts, acks of an old generation
are ignored, and nothing is committed past an offset that was neither acked nor
skipped by the broker: whatever else goes wrong becomes a visible stall
(``/livez``, ``OmniPartitionStalled``), not a loss.

It also flushes the worker's own producer (:mod:`processors.output`, which
carries every record the agents emit) before any offset commit, so a commit
never runs ahead of the outputs of the events it covers.

Written against faust-streaming 0.15.3 (pinned); ``tests/integration`` run
through it on every test.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from time import monotonic
from typing import Any, ClassVar, cast

from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ConsumerT, Message
from mode import ServiceT

from processors.checkpoint import Checkpoint
from processors.faust_adapter import (
    FaustConsumer,
    FaustConsumerThread,
    consumer_generation,
    delivery_would_block_checks,
    message_generation,
    service_stopped_check,
)

log = logging.getLogger(__name__)

# Yield to the event loop at least this often while delivering one fetch, so
# health checks and the Redis writer keep running under a large backlog.
DELIVERIES_PER_YIELD = 500

#: :meth:`BulkDeliveryConsumer.check_position` verdicts (any other value: seek there).
DELIVER = -1
DROP = -2


class CheckpointConsumerThread(FaustConsumerThread):
    """Faust's aiokafka consumer thread, committing with the checkpoint's metadata."""

    async def commit_to_broker(self, offsets: Mapping[TP, int]) -> bool:
        consumer = self.kafka_consumer()
        assignment = self.assignment()
        metadata = cast(BulkDeliveryConsumer, self.consumer).commit_metadata
        committable = {
            TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, metadata.get(tp, ""))
            for tp, offset in offsets.items()
            if tp in assignment
        }
        self.tp_last_committed_at.update({tp: monotonic() for tp in offsets if tp in assignment})
        try:
            await consumer.commit(committable)
        except CommitFailedError as exc:
            # The group rebalanced: not committed; the events are redone by their owner.
            log.warning("Commit refused by the group (%s); the events are processed again", exc)
            return False
        except Exception as exc:
            log.exception("Commit failed: %r", exc)
            await self.crash(exc)
            return False
        return True


class BulkDeliveryConsumer(FaustConsumer):
    """``faust.transport.drivers.aiokafka.Consumer`` with a bulk fetch loop."""

    consumer_thread = CheckpointConsumerThread

    #: tp -> commit metadata for the commit in progress (read by the consumer thread).
    commit_metadata: Mapping[TP, str] = {}
    #: Bumped when a rebalance starts and when it assigns: a fetch (or a delivery in
    #: flight) from before the bump belongs to an old assignment.
    rebalances: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Partitions whose read offset is a seek position (the next offset to deliver,
        #: None: 0) rather than the last offset delivered.
        self._sought: set[TP] = set()
        #: Sought partitions already sought again once because the fetch did not start
        #: at the position: a second miss means the broker has no such offsets.
        self._resought: set[TP] = set()
        #: Assigned partitions not yet sought to their committed offsets: Faust resumes
        #: them before it seeks, and the client's position can be anywhere meanwhile.
        self._unpositioned: set[TP] = set()
        #: Of those, the ones whose records were dropped meanwhile: sought again after.
        self._dropped_unpositioned: set[TP] = set()
        #: tp -> the first offset delivered since a seek, for partitions with no commit.
        self._run_start: dict[TP, int] = {}
        #: tp -> the committed offset last reported as a hole (log once per hole).
        self._holes: dict[TP, int] = {}

    async def perform_seek(self) -> None:
        await super().perform_seek()
        self._unpositioned.clear()
        self._sought.clear()
        self._sought.update(self.read_offsets)
        self._resought.clear()
        self._run_start.clear()
        # Records fetched while the client's seek ran left some partitions fetching
        # nothing more (measured: a restarted worker's partition stalled for good);
        # seeking them again afterwards, from here, resumes them.
        dropped, self._dropped_unpositioned = self._dropped_unpositioned, set()
        for tp in dropped & self.assignment():
            try:
                await self.seek(tp, self.read_offsets.get(tp) or 0)
            except Exception as exc:  # e.g. revoked meanwhile; check_position still rewinds
                log.warning(
                    "%s[%d]: seeking again after the assignment failed (%r); the partition is "
                    "sought back when its next record is fetched",
                    tp.topic,
                    tp.partition,
                    exc,
                )

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self._sought.add(partition)

    def check_position(self, tp: TP, offset: int) -> int | None:
        """Whether a fetched record of an acked topic is the next one to deliver.

        Returns ``DELIVER``, ``DROP`` (delivered before), or the offset to seek back
        to: records before this one were fetched but never delivered (Faust's
        ``getmany`` drops the rest of a fetch when flow stops, the generation moves
        or a partition is paused), so they are fetched again rather than skipped,
        and nothing is committed past them or processed out of order.
        """
        if tp in self._unpositioned:
            self._dropped_unpositioned.add(tp)
            return DROP  # fetched again once sought
        read_offset = self.read_offsets.get(tp)
        if tp in self._sought:
            position = read_offset or 0
            if offset < position:
                return DROP
            if offset > position:
                if tp not in self._resought:
                    self._resought.add(tp)
                    return position
                if read_offset is not None:  # with no commit, no head to account for
                    self._skipped_by_broker(tp, position, offset)
            self._sought.discard(tp)
            self._resought.discard(tp)
            if read_offset is None:
                self._run_start[tp] = offset
            return DELIVER
        if read_offset is None:
            return DELIVER
        if offset <= read_offset:
            return DROP
        if offset > read_offset + 1:
            return read_offset + 1
        return DELIVER

    def _skipped_by_broker(self, tp: TP, start: int, end: int) -> None:
        """Offsets ``start`` to ``end - 1`` will never be delivered (transaction markers,
        deleted by retention): they count as acked. (Faust's ``_add_gap`` cannot record
        a gap at the committed offset itself.)"""
        gaps = self.gaps[tp]
        gaps.addi(start, end)
        gaps.merge_overlaps()

    def ack(self, message: Message) -> bool:
        if message_generation(message) != consumer_generation(self.app):
            # Fetched before a rebalance: its partition was sought back to the committed
            # offset and delivers it again; acking this copy could commit the new one
            # before it is processed.
            return False
        return cast(bool, super().ack(message))

    def committable_offset(self, tp: TP) -> int | None:
        # Faust commits past an unacked offset at the head (min(acked) - committed == 1).
        committed = self.committed_offsets[tp]
        if committed is None:  # nothing committed yet: the run starts where delivery did
            committed = self._run_start.get(tp)
        acked = self.acked_offsets[tp]
        if committed is not None and acked:
            gaps = self.gaps[tp]
            head = min(min(acked), gaps.begin()) if gaps else min(acked)
            if head > committed:
                if self._holes.get(tp) != committed:
                    self._holes[tp] = committed
                    log.warning(
                        "%s[%d]: offset %d was delivered but never acknowledged; offsets are "
                        "not committed past it (the partition's events are processed again "
                        "after a restart or rebalance)",
                        tp.topic,
                        tp.partition,
                        committed,
                    )
                return None
        return super().committable_offset(tp)

    def _checkpoint(self) -> Checkpoint | None:
        pipeline = getattr(self.app, "pipeline", None)
        return None if pipeline is None else cast(Checkpoint, pipeline.checkpoint)

    async def commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        # Every commit path (interval, rebalance, shutdown) comes through here: it is
        # the checkpoint (processors/checkpoint.py): outputs acknowledged, offsets
        # committed, then local state.
        checkpoint = self._checkpoint()
        if checkpoint is None:
            return await super().commit_offsets(offsets, start_new_transaction)
        self.commit_metadata = await checkpoint.before_commit(offsets)
        assignment = self.assignment()
        try:
            committed = await super().commit_offsets(offsets, start_new_transaction)
        finally:
            self.commit_metadata = {}
        if committed:
            checkpoint.after_commit({tp: o for tp, o in offsets.items() if tp in assignment})
        return committed

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Complete the pending checkpoint (commit what is acknowledged), discard the rest.

        Called before Faust's own revocation (the partitions are still ours); every
        partition is revoked at a rebalance (aiokafka's eager protocol). What is not
        committed now is redone by the partitions' next owner.
        """
        self.rebalances += 1
        checkpoint = self._checkpoint()
        if checkpoint is not None and not self.app.should_stop:
            try:
                await self.maybe_wait_for_commit_to_finish()
                await self.commit()
            except Exception:  # the group moved on: nothing more can be committed
                log.warning("Commit on revocation failed; its events are redone", exc_info=True)
            checkpoint.discard()
            pipeline = self.app.pipeline  # type: ignore[attr-defined]
            pipeline.writer.discard_pending()
            # Offsets below the old position are processed again: not a stall.
            pipeline.progress.forget(revoked)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self.rebalances += 1
        self._unpositioned = set(assigned)
        checkpoint = self._checkpoint()
        if checkpoint is not None:
            checkpoint.on_assigned(
                (tp.partition for tp in assigned if tp.topic == checkpoint.source_topic),
                generation_id,
            )
        await super().on_partitions_assigned(assigned, generation_id)

    def _delivery_is_immediate(self) -> tuple[Callable[[], bool], Callable[[TP], bool]]:
        """Checks that the conductor's callback will not suspend: per fetch, and per ``tp``.

        The per-fetch part (flow control, callback lock, Faust's producer buffer,
        which our agents no longer use) can only change while the loop runs other
        tasks, so it is checked again after every point where this loop yields.
        """
        app = self.app
        flow_control_active = app.flow_control.is_active
        producer_buffer = app.producer.buffer
        callback_lock_free, room_for = delivery_would_block_checks(app)

        def loop_ready() -> bool:
            return (
                flow_control_active()
                and callback_lock_free()
                and producer_buffer.size <= producer_buffer.max_messages
            )

        return loop_ready, room_for

    async def drain_messages(self, fetcher: ServiceT) -> None:
        callback = self.callback
        loop_ready, room_for = self._delivery_is_immediate()
        consumer_stopped = self.stopped_check()
        fetcher_stopped = service_stopped_check(fetcher)
        read_offsets = self.read_offsets
        check_position = self.check_position
        commit_every = self.commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        diag = self.diag
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                diag.set_flag(CONSUMER_FETCHING)
                fetched = cast(AsyncIterator[tuple[TP, Message]], self.getmany(timeout=1.0))
                # getmany can return at once for a long time: let others run.
                await asyncio.sleep(0)
                if consumer_stopped() or fetcher_stopped():
                    break
                delivered = 0
                # A rebalance can run whenever this loop awaits; the rest of the fetch
                # (and the read offset of a delivery that spanned it) is then stale.
                rebalance: int | None = None
                rewound: set[TP] = set()
                # Getting the first record suspends (the fetch itself): check after it.
                ready = False
                async for tp, message in fetched:
                    if rebalance is None:  # the fetch has just returned
                        rebalance = self.rebalances
                        ready = loop_ready()
                    elif self.rebalances != rebalance:
                        break
                    if acks_enabled_for(tp.topic):
                        if tp in rewound:
                            continue  # fetched again from the rewind position
                        verdict = check_position(tp, message.offset)
                        if verdict == DROP:
                            continue
                        if verdict != DELIVER:
                            rewound.add(tp)
                            log.info(
                                "%s[%d]: fetched offset %d where %d was expected (offsets "
                                "fetched but not delivered): fetching again from %d",
                                tp.topic,
                                tp.partition,
                                message.offset,
                                verdict,
                                verdict,
                            )
                            await self.seek(tp, cast(int, verdict))
                            if self.rebalances != rebalance:
                                break
                            ready = loop_ready()
                            continue
                    if commit_every is not None and self.acks_since_commit >= commit_every:
                        self.acks_since_commit = 0
                        await self.commit()
                        if self.rebalances != rebalance:
                            break
                        ready = loop_ready()
                    if ready and room_for(tp):
                        await callback(message)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        ready = loop_ready()
                    if self.rebalances != rebalance:
                        # Delivered into the new assignment, if at all: Faust's streams skip
                        # events of an old generation, and the new seek stands.
                        break
                    read_offsets[tp] = message.offset
                    delivered += 1
                    if delivered % DELIVERIES_PER_YIELD == 0:
                        await asyncio.sleep(0)
                        ready = loop_ready()
                diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Kafka consumer stopped while the worker shuts down")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            diag.unset_flag(CONSUMER_FETCHING)


class BulkDeliveryTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[ConsumerT]] = BulkDeliveryConsumer


def new_transport(app: Any) -> BulkDeliveryTransport:
    return BulkDeliveryTransport(app.conf.broker_consumer, app)
