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
from typing import Any, ClassVar, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ConsumerT, Message
from mode import Service, ServiceT

log = logging.getLogger(__name__)

# Yield to the event loop at least this often while delivering one fetch, so
# health checks and the Redis writer keep running under a large backlog.
DELIVERIES_PER_YIELD = 500


class BulkDeliveryConsumer(faust_aiokafka.Consumer):
    """``faust.transport.drivers.aiokafka.Consumer`` with a bulk fetch loop."""

    async def _commit_offsets(
        self, offsets: Mapping[TP, int], start_new_transaction: bool = True
    ) -> bool:
        # Every commit path (interval, rebalance, shutdown) comes through here.
        pipeline = getattr(self.app, "pipeline", None)
        if pipeline is not None:
            await pipeline.producer.flush()
        committed: bool = await super()._commit_offsets(offsets, start_new_transaction)
        return committed

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


class BulkDeliveryTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[ConsumerT]] = BulkDeliveryConsumer


def new_transport(app: Any) -> BulkDeliveryTransport:
    return BulkDeliveryTransport(app.conf.broker_consumer, app)
