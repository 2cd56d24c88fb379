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
from mode import Service, ServiceT

from processors.checkpoint import Checkpoint

log = logging.getLogger(__name__)

# Yield to the event loop at least this often while delivering one fetch, so
# health checks and the Redis writer keep running under a large backlog.
DELIVERIES_PER_YIELD = 500


class BulkDeliveryConsumer(faust_aiokafka.Consumer):
    """``faust.transport.drivers.aiokafka.Consumer`` with a bulk fetch loop."""

    #: tp -> commit metadata for the commit in progress (read by the consumer thread).
    commit_metadata: Mapping[TP, str] = {}

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return CheckpointConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _checkpoint(self) -> Checkpoint | None:
        pipeline = getattr(self.app, "pipeline", None)
        return None if pipeline is None else cast(Checkpoint, pipeline.checkpoint)

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        # Every commit path (interval, rebalance, shutdown) comes through here: it is
        # the checkpoint (processors/checkpoint.py): outputs acknowledged, offsets
        # committed, then local state.
        checkpoint = self._checkpoint()
        if checkpoint is None:
            return cast(bool, await super()._commit_offsets(offsets, start_new_transaction))
        self.commit_metadata = await checkpoint.before_commit(offsets)
        assignment = self.assignment()
        try:
            committed: bool = await super()._commit_offsets(offsets, start_new_transaction)
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
        conductor = app.topics
        subscribers = conductor._tp_index  # type: ignore[attr-defined]
        callback_lock = conductor._tp_to_callback_lock  # type: ignore[attr-defined]

        def loop_ready() -> bool:
            return (
                flow_control_active()
                and not callback_lock.locked()
                and producer_buffer.size <= producer_buffer.max_messages
            )

        def room_for(tp: TP) -> bool:
            return not any(channel.queue.full() for channel in subscribers.get(tp, ()))

        return loop_ready, room_for

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        callback = self.callback
        loop_ready, room_for = self._delivery_is_immediate()
        consumer_stopped = cast(Service, self)._stopped.is_set
        fetcher_stopped = cast(Service, fetcher)._stopped.is_set
        read_offsets = self._read_offset
        commit_every = self._commit_every
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
                # Getting the first record suspends (the fetch itself): check after it.
                ready: bool | None = None
                async for tp, message in fetched:
                    if ready is None:
                        ready = loop_ready()
                    offset = message.offset
                    read_offset = read_offsets[tp]
                    if read_offset is not None and offset < read_offset:
                        continue  # already delivered before a seek: drop it
                    if read_offset and offset - read_offset > 1 and acks_enabled_for(tp.topic):
                        await self._add_gap(tp, read_offset + 1, offset)
                        ready = loop_ready()
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                        ready = loop_ready()
                    if ready and room_for(tp):
                        await callback(message)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        ready = loop_ready()
                    read_offsets[tp] = offset
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


class CheckpointConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, committing with the checkpoint's metadata."""

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        consumer = self._ensure_consumer()
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


class BulkDeliveryTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[ConsumerT]] = BulkDeliveryConsumer


def new_transport(app: Any) -> BulkDeliveryTransport:
    return BulkDeliveryTransport(app.conf.broker_consumer, app)
