"""Adaptive batches over a Faust stream.

Faust's ``stream.take(n, within)`` waits up to ``within`` for a batch to fill.
Here a batch is whatever is already queued (up to ``max_events``): under load
batches grow by themselves, and a lone event is processed at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from faust.streams import Stream
from faust.types import EventT, StreamT

from processors.faust_adapter import consumer_generation, message_generation, stream_queue


def without_acks(stream: StreamT[Any]) -> StreamT[Any]:
    """The same stream, but events are acked by us once their effects are durable."""
    return cast(Stream[Any], stream).noack()


async def adaptive_batches(stream: StreamT[Any], max_events: int) -> AsyncIterator[list[EventT]]:
    """Yield lists of events; the caller acks them (the stream must be ``noack()``)."""
    queue = stream_queue(stream)
    app = stream.app
    batch: list[EventT] = []
    async for event in stream.events():
        batch.append(event)
        if len(batch) >= max_events or queue.empty():
            generation = consumer_generation(app)
            if message_generation(batch[0].message) != generation:
                # Gathered across a rebalance: the partitions were sought back and deliver
                # the older events again, in order; processing them now would reorder.
                batch = [e for e in batch if message_generation(e.message) == generation]
            if batch:
                yield batch
            batch = []
