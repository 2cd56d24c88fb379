"""The customer step: one batch of customer events in, state, triggers, decisions and
read-model writes out.

Per batch: group events by partition and customer, read each customer's state
once, run the pure ``step``, write each changed state once (one changelog
record per customer per batch), queue triggers and decisions with
``send_soon`` (delivered in producer batches, never awaited one by one), and hand
the read-model writes to the Redis writer, which acks the batch once they land.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from faust.types import EventT, TableT, TopicT

from processors.batching import partition_context
from processors.deadletter import PROCESSING_ERROR, deadletter_record
from processors.domain.model import CustomerState, Event, StepOutputs, Trigger
from processors.domain.policy import Policy
from processors.domain.read_model import ReadModelWrite, project
from processors.domain.step import step
from processors.metrics import Metrics
from processors.projection import ReadModelWriter
from processors.settings import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CustomerProcessor:
    settings: Settings
    policy: Policy
    metrics: Metrics
    table: TableT[bytes, bytes]
    trigger_topics: dict[str, TopicT]
    decisions: TopicT
    deadletters: TopicT
    writer: ReadModelWriter

    def process(self, events: list[EventT], ack: Callable[[], Awaitable[None]]) -> None:
        now = time.time()
        by_partition: dict[int, dict[bytes, list[EventT]]] = defaultdict(lambda: defaultdict(list))
        for event in events:
            # The ingest agent dead-letters keyless messages, so every key is set.
            by_partition[event.message.partition][event.message.key or b""].append(event)
        writes: list[ReadModelWrite] = []
        for customers in by_partition.values():
            for key, customer_events in customers.items():
                with partition_context(customer_events[-1]):
                    writes.extend(self._process_customer(key, customer_events, now))
        self.metrics.processed.inc(len(events))
        self.writer.submit(writes, ack)

    def _process_customer(
        self, key: bytes, raw_events: list[EventT], now: float
    ) -> list[ReadModelWrite]:
        try:
            parsed = [
                Event.from_record(orjson.loads(e.message.value or b""), e.message.timestamp)
                for e in raw_events
            ]
            stored = self.table.get(key)
            state = None if stored is None else CustomerState.from_dict(orjson.loads(stored))
            state, out = step(state, parsed, self.policy, now)
        except Exception as exc:  # a bug for one customer must not stop the partition
            log.exception("Customer step failed for a batch of %d events", len(raw_events))
            for event in raw_events:
                self._deadletter(event, exc)
            return []
        if out.changed:
            self.table[key] = orjson.dumps(state)
        self._send(key, out)
        # Duplicates re-project too: after a crash, replayed events are duplicates
        # and this is what makes the read model converge (whole values, idempotent).
        return project(state, now)

    def _send(self, key: bytes, out: StepOutputs) -> None:
        metrics = self.metrics
        for trigger in out.triggers:
            self.trigger_topics[trigger.channel].send_soon(
                key=key,
                value=orjson.dumps(trigger.to_record()),
                callback=self._latency_callback(trigger),
            )
            metrics.triggers(trigger.type, trigger.channel).inc()
        for decision in out.decisions:
            self.decisions.send_soon(key=key, value=orjson.dumps(decision.to_record()))
            if decision.reasons:
                metrics.suppressed(decision.trigger_type, decision.reasons[0]).inc()
        if out.duplicates:
            metrics.duplicates.inc(out.duplicates)
        if out.dedup_early_evictions:
            metrics.dedup_early_evictions.inc(out.dedup_early_evictions)

    def _latency_callback(self, trigger: Trigger) -> Callable[[Any], None]:
        histogram = self.metrics.trigger_latency(trigger.type)
        produced_at = trigger.source_produced_at

        def delivered(_: Any) -> None:
            histogram.observe(time.time() - produced_at)

        return delivered

    def _deadletter(self, event: EventT, exc: Exception) -> None:
        message = event.message
        self.deadletters.send_soon(
            key=message.key,
            value=deadletter_record(
                PROCESSING_ERROR,
                [
                    f"the customer step failed on this event ({type(exc).__name__}: {exc}); "
                    "this is a pipeline bug: report it with this record, then replay it "
                    "with `omni publish`",
                    *traceback.format_exception_only(exc),
                ],
                message.topic,
                message.partition,
                message.offset,
                message.value,
                self.settings.deadletter_raw_max_bytes,
            ),
        )
        self.metrics.deadlettered(PROCESSING_ERROR).inc()
