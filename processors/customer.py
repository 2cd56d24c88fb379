"""The customer step: one batch of customer events in, state, triggers, decisions and
read-model writes out; and the timer tick.

Per batch: group events by partition and customer, read each customer's state
and timeline once, run the pure ``step``, write each changed record once (one
RocksDB write batch per partition and one changelog record per customer per
batch, :class:`processors.output.TableWriter`), queue triggers and decisions on
the librdkafka producer (never awaited one by one), and hand the read-model
writes to the Redis writer, which acks the batch once they land.

Timers (deferred triggers, "ignored" checks) live in the customer records. The
tick asks an in-memory due index which customers have a timer due and fires
them inside their own partition (Faust tables are written per partition), with
the same write-once-then-send discipline. The index is rebuilt from the table
whenever the assignment changes, so timers survive restarts and rebalances.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from confluent_kafka import KafkaError, Message
from faust.types import EventT

from processors.deadletter import PROCESSING_ERROR, deadletter_record
from processors.domain.model import CustomerState, Event, StepOutputs, Trigger
from processors.domain.read_model import ReadModelWrite, project, stats_key, timeline_write
from processors.domain.step import StepContext, fire_timers, step
from processors.domain.timers import DueIndex, next_due
from processors.metrics import Metrics
from processors.output import OutputProducer, TableWriter, checked
from processors.projection import ReadModelWriter
from processors.settings import Settings

log = logging.getLogger(__name__)

#: The state record serializes its (always present) timer list like this when empty.
_NO_TIMERS = b'"timers":[]'


StatCounts = defaultdict[tuple[str, str], defaultdict[str, float]]


def _count(counts: StatCounts, out: StepOutputs) -> None:
    for rule, channel, counter, amount in out.stats:
        counts[(rule, channel)][counter] += amount


async def _nothing_to_ack() -> None:
    return None


@dataclass(slots=True)
class CustomerProcessor:
    settings: Settings
    ctx: StepContext
    metrics: Metrics
    producer: OutputProducer
    #: The customer records (Faust table ``customers``).
    records: TableWriter
    timelines: TableWriter
    #: "<rule>|<channel>" -> counters, per partition (S11 offer performance).
    stats: TableWriter
    #: channel -> trigger topic name.
    trigger_topics: dict[str, str]
    decision_topic: str
    deadletter_topic: str
    writer: ReadModelWriter
    #: partition -> due index of that partition's customers.
    due: dict[int, DueIndex] = field(default_factory=dict)

    def process(self, events: list[EventT], ack: Callable[[], Awaitable[None]]) -> None:
        now = time.time()
        by_partition: dict[int, dict[bytes, list[EventT]]] = defaultdict(lambda: defaultdict(list))
        for event in events:
            # The ingest agent dead-letters keyless messages, so every key is set.
            by_partition[event.message.partition][event.message.key or b""].append(event)
        writes: list[ReadModelWrite] = []
        for partition, customers in by_partition.items():
            due = self.due.get(partition)
            counts: StatCounts = defaultdict(lambda: defaultdict(float))
            for key, customer_events in customers.items():
                writes.extend(
                    self._process_customer(key, partition, customer_events, now, due, counts)
                )
            if counts:
                writes.extend(self._add_stats(partition, counts))
        self._write_tables()
        self.metrics.processed.inc(len(events))
        self.writer.submit(writes, ack)

    def _write_tables(self) -> None:
        """The batch's state, one write per customer, then serve delivery callbacks."""
        self.records.flush()
        self.timelines.flush()
        self.stats.flush()
        self.producer.poll()

    def _process_customer(
        self,
        key: bytes,
        partition: int,
        raw_events: list[EventT],
        now: float,
        due: DueIndex | None,
        counts: StatCounts,
    ) -> list[ReadModelWrite]:
        try:
            parsed = [
                Event.from_record(orjson.loads(e.message.value or b""), e.message.timestamp)
                for e in raw_events
            ]
            state = self._load(key, partition)
            stored_timeline = self.timelines.get(key, partition)
            timeline = [] if stored_timeline is None else orjson.loads(stored_timeline)
            state, out = step(state, parsed, self.ctx, now, timeline)
        except Exception as exc:  # a bug for one customer must not stop the partition
            log.exception("Customer step failed for a batch of %d events", len(raw_events))
            for event in raw_events:
                self._deadletter(event, exc)
            return []
        # Unchanged, the stored bytes are the timeline's encoding (orjson is deterministic).
        encoded_timeline = stored_timeline
        if out.changed:
            self.records.put(key, orjson.dumps(state), partition)
            if out.timeline is not None and out.timeline != timeline:
                encoded_timeline = orjson.dumps(out.timeline)
                self.timelines.put(key, encoded_timeline, partition)
            if due is not None:
                due.update(key, next_due(state.timers))
        self._send(key, out)
        _count(counts, out)
        # Duplicates re-project too: after a crash, replayed events are duplicates
        # and this is what makes the read model converge (whole values, idempotent).
        writes = project(state, now)
        if out.timeline:
            writes.append(timeline_write(state.customer_id, out.timeline, encoded_timeline))
        return writes

    def _load(self, key: bytes, partition: int) -> CustomerState | None:
        stored = self.records.get(key, partition)
        return None if stored is None else CustomerState.from_dict(orjson.loads(stored))

    # --- timers ---------------------------------------------------------------------------

    def rebuild_due(self, partitions: set[int]) -> int:
        """Index every customer with timers in ``partitions`` (after an assignment change)."""
        self.due = {p: DueIndex() for p in partitions}
        indexed = 0
        for partition, index in self.due.items():
            for key, value in self.records.scan(partition):
                if _NO_TIMERS in value:
                    continue
                when = next_due(orjson.loads(value).get("timers") or [])
                if when is not None:
                    index.update(key, when)
                    indexed += 1
        self.metrics.timers_pending.set(indexed)
        return indexed

    def fire_due(self, now: float) -> int:
        """Fire every timer due by ``now`` on this worker's partitions; returns how many."""
        fired = 0
        writes: list[ReadModelWrite] = []
        for partition, index in self.due.items():
            keys = index.pop_due(now)
            if not keys:
                continue
            counts: StatCounts = defaultdict(lambda: defaultdict(float))
            for key in keys:
                fired += self._fire_customer(key, partition, index, now, writes, counts)
            if counts:
                writes.extend(self._add_stats(partition, counts))
        self._write_tables()
        if writes:
            self.writer.submit(writes, _nothing_to_ack)
        return fired

    def _fire_customer(
        self,
        key: bytes,
        partition: int,
        index: DueIndex,
        now: float,
        writes: list[ReadModelWrite],
        counts: StatCounts,
    ) -> int:
        try:
            state = self._load(key, partition)
            if state is None:
                return 0
            lags = [now - t["due_at"] for t in state.timers if t["due_at"] <= now]
            out = fire_timers(state, self.ctx, now)
        except Exception:
            log.exception("Firing timers failed for one customer; they stay scheduled")
            index.update(key, now + 60.0)  # try again in a minute, do not spin
            return 0
        if out.changed:
            # Timers and their effects are written together: a fired timer cannot fire again.
            self.records.put(key, orjson.dumps(state), partition)
            writes.extend(project(state, now))
        index.update(key, next_due(state.timers))
        for lag in lags:
            self.metrics.timer_lag.observe(max(0.0, lag))
        self.metrics.timers_fired.inc(len(lags))
        self._send(key, out)
        _count(counts, out)
        return len(lags)

    # --- offer performance (S11) ------------------------------------------------------------

    def _add_stats(self, partition: int, counts: StatCounts) -> list[ReadModelWrite]:
        """Add this batch's counts to the partition's totals (table) and project them.

        Totals are whole values per partition, restored from the changelog, and only
        new (non-duplicate) events add to them, so a replay does not count twice.
        """
        writes = []
        for (rule, channel), increments in counts.items():
            table_key = f"{rule}|{channel}".encode()
            stored = self.stats.get(table_key, partition)
            totals: dict[str, float] = {} if stored is None else orjson.loads(stored)
            for counter, amount in increments.items():
                totals[counter] = totals.get(counter, 0.0) + amount
                if counter == "accepted_value":
                    self.metrics.offer_accepted_value(rule, channel).inc(amount)
                else:
                    self.metrics.offer_outcomes(rule, channel, counter).inc(amount)
            value = orjson.dumps(totals)
            self.stats.put(table_key, value, partition)
            writes.append(ReadModelWrite(stats_key(rule), value, field=f"{channel}|p{partition}"))
        return writes

    # --- outputs --------------------------------------------------------------------------

    def _send(self, key: bytes, out: StepOutputs) -> None:
        metrics = self.metrics
        send = self.producer.send
        for trigger in out.triggers:
            send(
                self.trigger_topics[trigger.channel],
                key,
                orjson.dumps(trigger.to_record()),
                on_delivery=checked(self._latency_callback(trigger), self.producer),
            )
            metrics.triggers(trigger.type, trigger.channel).inc()
        for decision in out.decisions:
            send(self.decision_topic, key, orjson.dumps(decision.to_record()))
            metrics.decisions(decision.rule, decision.outcome).inc()
            if decision.reasons:
                metrics.suppressed(decision.trigger_type, decision.reasons[0]).inc()
        for rule, message in out.rule_errors:
            metrics.rule_errors(rule).inc()
            log.warning("Rule %s failed on an event (treated as no match): %s", rule, message)
        if out.duplicates:
            metrics.duplicates.inc(out.duplicates)
        if out.dedup_early_evictions:
            metrics.dedup_early_evictions.inc(out.dedup_early_evictions)
        if out.timers_refused:
            metrics.timers_refused.inc(out.timers_refused)
        if out.timers_cancelled:
            metrics.timers_cancelled.inc(out.timers_cancelled)
        if out.timers_dropped:
            metrics.timers_dropped.inc(out.timers_dropped)

    def _latency_callback(self, trigger: Trigger) -> Callable[[KafkaError | None, Message], None]:
        histogram = self.metrics.trigger_latency(trigger.type)
        produced_at = trigger.source_produced_at

        def delivered(_err: KafkaError | None, _message: Message) -> None:
            histogram.observe(time.time() - produced_at)

        return delivered

    def _deadletter(self, event: EventT, exc: Exception) -> None:
        message = event.message
        self.producer.send(
            self.deadletter_topic,
            message.key,
            deadletter_record(
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
