"""The customer step: one batch of customer events in, state, triggers, decisions and
read-model writes out; and the timer tick.

Per batch: group events by partition and customer, read each customer's record
(state and timeline, :mod:`processors.domain.record_codec`) once, run the pure
``step``, put each changed record once (one changelog record per customer per
batch, pending in
:class:`processors.output.TableWriter` until the checkpoint commits the batch),
queue triggers and decisions on the librdkafka producer (never awaited one by
one), and hand the read-model writes to the Redis writer, which acks the batch
once they land. An event that raises is dead-lettered and leaves its customer's
state as before it; nothing else in the batch is affected.

Timers (deferred triggers, "ignored" checks) live in the customer records. The
tick asks an in-memory due index which customers have a timer due and sends each
an empty marker record on its own partition of the customer-events topic; the
agent fires the timers when it reads the marker, so a firing is input like any
event and is checkpointed with its effects. The index is rebuilt from the table
after every rebalance or restart, so timers survive both.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, cast

import orjson
from confluent_kafka import KafkaError, Message
from faust.types import EventT

from processors.checkpoint import Checkpoint, header_value
from processors.deadletter import PROCESSING_ERROR, deadletter_record
from processors.domain.identity import KIND_HEADER
from processors.domain.model import CustomerState, Event, StepOutputs, Trigger
from processors.domain.read_model import (
    ReadModelWrite,
    project,
    stats_table_key,
    stats_write,
    timeline_write,
)
from processors.domain.record_codec import decode_record, encode_record, record_next_due
from processors.domain.step import StepContext, fire_timers, step
from processors.domain.timers import DueIndex, next_due
from processors.identity import IdentityProcessor, send_forwards, send_identity_log
from processors.metrics import Metrics
from processors.output import OutputProducer, TableWriter, checked, due_indexes
from processors.projection import ReadModelWriter
from processors.settings import Settings

log = logging.getLogger(__name__)


StatCounts = defaultdict[tuple[str, str], defaultdict[str, float]]


def _count(counts: StatCounts, out: StepOutputs) -> None:
    for rule, channel, counter, amount in out.stats:
        counts[(rule, channel)][counter] += amount


def _is_timer_marker(event: EventT) -> bool:
    # Timer markers are the only empty values on the customer-events topic: ingest
    # forwards validated (non-empty) events only.
    return not event.message.value


@dataclass(slots=True)
class CustomerProcessor:
    settings: Settings
    ctx: StepContext
    metrics: Metrics
    producer: OutputProducer
    checkpoint: Checkpoint
    #: The customer records, state and timeline (Faust table ``customers``).
    records: TableWriter
    #: Timelines written before records held them (table ``timelines``): read for a
    #: legacy record, deleted when she is next written; empty in a new deployment.
    timelines: TableWriter
    #: "<rule>|<channel>" -> counters, per partition (S11 offer performance).
    stats: TableWriter
    #: channel -> trigger topic name.
    trigger_topics: dict[str, str]
    customer_events_topic: str
    decision_topic: str
    deadletter_topic: str
    writer: ReadModelWriter
    #: The identity step: records with an ``omni-kind`` header are an identifier's.
    identity: IdentityProcessor
    identity_log_topic: str
    #: partition -> due index of that partition's customers.
    due: dict[int, DueIndex] = field(default_factory=dict)
    #: Called with (partition, last input offset) after each batch (health).
    on_processed: Callable[[int, int], None] | None = None

    def process(self, events: list[EventT], ack: Callable[[], Awaitable[None]]) -> None:
        now = time.time()
        owned = self.checkpoint.owned
        by_partition: dict[int, dict[bytes, list[EventT]]] = defaultdict(lambda: defaultdict(list))
        #: Identifier records (header omni-kind): partition -> key -> [(kind, event)].
        identifiers: dict[int, dict[bytes, list[tuple[str, EventT]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        last_offset: dict[int, int] = {}
        counted: dict[int, int] = defaultdict(int)
        identity_records = 0
        for event in events:
            message = event.message
            partition = message.partition
            if partition not in owned:
                continue  # revoked while this batch was gathered: its new owner redoes it
            # The ingest agent dead-letters keyless messages, so every key is set.
            kind = header_value(message.headers, KIND_HEADER) if message.headers else None
            if kind is None:
                by_partition[partition][message.key or b""].append(event)
            else:
                identifiers[partition][message.key or b""].append((kind.decode(), event))
                identity_records += 1
            last_offset[partition] = max(message.offset, last_offset.get(partition, -1))
            counted[partition] += 1
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
        for partition, keyed in identifiers.items():
            for key, items in keyed.items():
                writes.extend(
                    self.identity.process_key(key, partition, items, now, self._identity_failed)
                )
        self._seal(last_offset, counted)
        # Customer records only: an identified event counts once, when it reaches her.
        self.metrics.processed.inc(len(events) - identity_records)
        self.writer.submit(writes, ack)
        if self.on_processed is not None:
            for partition, offset in last_offset.items():
                self.on_processed(partition, offset)

    def _seal(self, last_offset: dict[int, int], counted: dict[int, int]) -> None:
        """Queue the batch's changelog records (stamped with its input offsets); pending."""
        checkpoint = self.checkpoint
        for partition, offset in last_offset.items():
            headers = checkpoint.header(offset)
            self.records.seal(partition, offset, headers)
            self.timelines.seal(partition, offset, headers)
            self.stats.seal(partition, offset, headers)
            self.identity.records.seal(partition, offset, headers)
        checkpoint.sealed(last_offset, counted)
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
            return self._apply(key, partition, raw_events, now, due, counts)
        except Exception:  # one bad event must not stop the partition: find it
            pass
        # One at a time: the events that fail are dead-lettered and leave the state as
        # it was before them (``_apply`` writes nothing when it raises); the customer's
        # other events are still applied, each on the state the previous one left.
        writes: list[ReadModelWrite] = []
        for event in raw_events:
            try:
                # Kept, not replaced: an erasure's deletes must survive the projections
                # of later events (the writer keeps the newest value of each key).
                writes.extend(self._apply(key, partition, [event], now, due, counts))
            except Exception as exc:
                self._failed(key, event, exc, due, now)
        return writes

    def _apply(
        self,
        key: bytes,
        partition: int,
        raw_events: list[EventT],
        now: float,
        due: DueIndex | None,
        counts: StatCounts,
    ) -> list[ReadModelWrite]:
        """Step the customer through ``raw_events`` (timer markers fire due timers).

        Everything that can fail (decoding, the step, projecting, encoding) runs before
        anything is written or sent, so a failure leaves no trace.
        """
        state, stored_timeline, legacy_timeline = self._load(key, partition)
        timeline = [] if stored_timeline is None else orjson.loads(stored_timeline)
        timeline_changed = False
        outputs: list[StepOutputs] = []
        lags: list[float] = []
        #: Deletes of the read-model keys of a customer erased in this batch.
        erased_keys: list[ReadModelWrite] = []
        #: The customer was erased and nothing came after: delete, do not write.
        forgotten = False
        for is_marker, group in groupby(raw_events, key=_is_timer_marker):
            if not is_marker:
                parsed = [
                    Event.from_record(
                        orjson.loads(cast(bytes, e.message.value)), e.message.timestamp
                    )
                    for e in group
                ]
                state, out = step(state, parsed, self.ctx, now, timeline)
                if out.timeline is not None and out.timeline != timeline:
                    timeline = out.timeline
                    timeline_changed = True
                erased_keys.extend(out.erased_keys)
                if out.changed:
                    forgotten = out.forgotten
            elif state is not None:
                lags.extend(now - t["due_at"] for t in state.timers if t["due_at"] <= now)
                out = fire_timers(state, self.ctx, now)
            else:
                continue  # a marker for a customer with no record: nothing to fire
            outputs.append(out)
        if state is None:
            return []
        if forgotten:
            # Tombstones (None): they delete her record at the commit, in a recovering
            # worker's store, in `omni redis rebuild`'s view and, once the changelog is
            # compacted, on the broker's disks. Her timers (deferred triggers) are gone
            # with the record, so her due-index entry is cleared below.
            writes = erased_keys
            self.records.put(key, None, partition)
            self.timelines.put(key, None, partition)
        else:
            writes = self._projected(
                key,
                partition,
                state,
                now,
                outputs,
                erased_keys,
                timeline,
                timeline_changed,
                stored_timeline,
                legacy_timeline,
            )
        if due is not None:
            due.update(key, next_due(state.timers))
        for lag in lags:
            self.metrics.timer_lag.observe(max(0.0, lag))
        if lags:
            self.metrics.timers_fired.inc(len(lags))
        for out in outputs:
            self._send(key, out)
            _count(counts, out)
        return writes

    def _projected(
        self,
        key: bytes,
        partition: int,
        state: CustomerState,
        now: float,
        outputs: list[StepOutputs],
        erased_keys: list[ReadModelWrite],
        timeline: list[dict[str, Any]],
        timeline_changed: bool,
        stored_timeline: bytes | None,
        legacy_timeline: bool,
    ) -> list[ReadModelWrite]:
        """Put the customer's record (state and timeline); her read-model writes."""
        # Duplicates re-project too: after a crash, replayed events are duplicates and
        # this is what makes the read model converge (whole values, idempotent).
        # An erased customer's keys go first: the new customer's values (later) win.
        writes = [*erased_keys, *project(state, now)]
        encoded_timeline = (
            orjson.dumps(timeline) if timeline_changed else (stored_timeline or b"[]")
        )
        if timeline:
            writes.append(timeline_write(state.customer_id, timeline, encoded_timeline))
        if not any(out.changed for out in outputs):
            return writes
        # The step's own encoding (after the size caps) when the last step made one.
        encoded = outputs[-1].state_encoded or orjson.dumps(state)
        record = encode_record(encoded, encoded_timeline, next_due(state.timers))
        # --- nothing below fails on bad input ---
        if len(record) <= self.ctx.policy.max_state_bytes:
            self.records.put(key, record, partition)
            if legacy_timeline:  # now in her record: the old table's copy goes
                self.timelines.put(key, None, partition)
        else:
            # Compressed state and timeline over the limit (high-entropy text in a long
            # timeline; not seen on real data): the legacy layout, whose state JSON the
            # caps keep within the limit and whose timeline is bounded on its own.
            self.records.put(key, encoded, partition)
            self.timelines.put(key, encoded_timeline, partition)
        return writes

    def _failed(
        self, key: bytes, event: EventT, exc: Exception, due: DueIndex | None, now: float
    ) -> None:
        log.error(
            "Customer step failed on %s[%d]@%d (%s); dead-lettered, the partition goes on",
            event.message.topic,
            event.message.partition,
            event.message.offset,
            type(exc).__name__,
        )
        if _is_timer_marker(event):
            # The timers stay in the record: try again in a minute, do not spin.
            self.metrics.timer_failures.inc()
            if due is not None:
                due.update(key, now + 60.0)
            return
        self._deadletter(event, exc)

    def _identity_failed(self, key: bytes, event: EventT, exc: Exception) -> None:
        log.error(
            "Identity step failed on %s[%d]@%d (%s); dead-lettered, the partition goes on",
            event.message.topic,
            event.message.partition,
            event.message.offset,
            type(exc).__name__,
        )
        if not event.message.value:  # a parking marker: try again in a minute
            due = self.identity.due.get(event.message.partition)
            if due is not None:
                due.update(key, time.time() + 60.0)
            return
        self._deadletter(event, exc)

    def _load(self, key: bytes, partition: int) -> tuple[CustomerState | None, bytes | None, bool]:
        """Her state, her timeline's JSON (None: none) and whether that timeline is a
        legacy one, from the ``timelines`` table. Raises on a corrupt record."""
        stored = self.records.get(key, partition)
        if stored is None:
            return None, None, False
        record = decode_record(stored)
        state = CustomerState.from_dict(orjson.loads(record.state))
        if record.timeline is not None:
            return state, record.timeline, False
        # A record written before records held timelines (or the over-limit fallback).
        legacy = self.timelines.get(key, partition)
        return state, legacy, legacy is not None

    # --- timers ---------------------------------------------------------------------------

    def rebuild_due(self, partitions: set[int]) -> int:
        """Index every customer with timers in ``partitions`` (after an assignment change)."""
        # A record's header holds the next due time: nothing is decompressed here. A
        # corrupt record's timers wait; the step dead-letters her events and says why.
        self.due, indexed = due_indexes(self.records, partitions, record_next_due, "customer")
        self.metrics.timers_pending.set(indexed)
        self.identity.rebuild_due(partitions)
        return indexed

    def fire_due(self, now: float) -> int:
        """Send a timer marker to every owned customer with a timer due by ``now``.

        Timers fire in the customer agent, as input: their effects are then
        checkpointed like any event's (a marker's offset is what commits them), and
        a customer's timers and events are applied in one order.
        """
        sent = 0
        owned = self.checkpoint.owned
        for partition, index in self.due.items():
            if partition not in owned:
                continue
            for key in index.pop_due(now):
                self.producer.send(self.customer_events_topic, key, b"", partition)
                sent += 1
        sent += self.identity.fire_due(now, owned)
        if sent:
            self.producer.poll()
        return sent

    # --- offer performance (S11) ------------------------------------------------------------

    def _add_stats(self, partition: int, counts: StatCounts) -> list[ReadModelWrite]:
        """Add this batch's counts to the partition's totals (table) and project them.

        Totals are whole values per partition, restored from the changelog, and only
        new (non-duplicate) events add to them, so a replay does not count twice.
        """
        writes = []
        for (rule, channel), increments in counts.items():
            table_key = stats_table_key(rule, channel)
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
            writes.append(stats_write(table_key, value, partition))
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
            # The error's text may quote the customer's values: only its class at the
            # default level (the rule and the class say what to fix), the text at debug.
            log.warning(
                "Rule %s failed on an event (treated as no match) with %s; fix the rule's "
                "expression (OMNI_LOG_LEVEL=debug logs the error's text)",
                rule,
                message.split(":", 1)[0],
            )
            log.debug("Rule %s failed: %s", rule, message)
        if out.forwards:
            send_forwards(self.producer, self.customer_events_topic, out.forwards)
        if out.identity_log:
            send_identity_log(
                self.producer, self.identity_log_topic, metrics, key, out.identity_log
            )
        if out.identity_blocked:
            metrics.identity_blocked.inc(out.identity_blocked)
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
        for collection, dropped in out.state_items_dropped.items():
            metrics.state_items_dropped(collection).inc(dropped)

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
                    # The class and a short message only: a stack trace or a long message
                    # could carry payload data into the dead-letter topic.
                    f"the customer step failed on this event ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); the customer's state is as before it and the "
                    "partition goes on. This is a pipeline bug: report it with this record, "
                    "then replay the event with `omni publish`",
                ],
                message.topic,
                message.partition,
                message.offset,
                message.value,
                self.settings.deadletter_raw_max_bytes,
            ),
        )
        self.metrics.deadlettered(PROCESSING_ERROR).inc()
        self.metrics.deadlettered_by_channel("none", PROCESSING_ERROR).inc()
