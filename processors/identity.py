"""The identity step of the keyed agent: identifier records in, resolved events out.

Records on the customer-events topic with the header ``omni-kind`` are an
identifier's (key ``<type>:<value>``), not a customer's: identified events from the
ingest step, link and unlink commands from the customer step, and parking timer
markers. :class:`CustomerProcessor` hands them here per key, in order, in the same
batch as the customers' events: the ``identities`` table's records go through the
same checkpoint (pending until the batch's offsets commit, recovered by the same
rule), so links and parked events are as safe as customer state.

The decisions are :func:`processors.domain.identity.identity_step`'s; this class
reads and writes the record, sends the forwards (to customers, to anonymous
profiles, merge requests) and the ``identity.log`` records, and keeps the parking
timers' due index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.types import EventT

from processors.domain.identity import (
    KIND_HEADER,
    TICK,
    Forward,
    IdentityMessage,
    IdentityPolicy,
    IdentityRecord,
    identity_step,
    next_park_due,
)
from processors.domain.read_model import ReadModelWrite
from processors.domain.timers import DueIndex
from processors.metrics import Metrics
from processors.output import Headers, OutputProducer, TableWriter, due_indexes

log = logging.getLogger(__name__)


def kind_header(kind: str) -> Headers:
    return [(KIND_HEADER, kind.encode())]


def send_forwards(producer: OutputProducer, topic: str, forwards: list[Forward]) -> None:
    """Queue forwards on the customer-events topic, each keyed by its customer or identifier."""
    for forward in forwards:
        producer.send(
            topic,
            forward.key.encode(),
            orjson.dumps(forward.value),
            timestamp_ms=int(forward.produced_at * 1000),
            headers=None if forward.kind is None else kind_header(forward.kind),
        )


def send_identity_log(
    producer: OutputProducer,
    topic: str,
    metrics: Metrics,
    key: bytes,
    entries: list[dict[str, Any]],
) -> None:
    """Queue ``identity.log`` records (links, merges, refusals) and count them."""
    for entry in entries:
        producer.send(topic, key, orjson.dumps(entry))
        metrics.identity_records(entry["type"], entry["reason"] or "none").inc()


@dataclass(slots=True)
class IdentityProcessor:
    policy: IdentityPolicy
    metrics: Metrics
    producer: OutputProducer
    #: Identifier records (Faust table ``identities``).
    records: TableWriter
    customer_events_topic: str
    identity_log_topic: str
    #: partition -> due index of that partition's parked identifiers.
    due: dict[int, DueIndex] = field(default_factory=dict)

    def process_key(
        self,
        key: bytes,
        partition: int,
        items: list[tuple[str, EventT]],
        now: float,
        on_failure: Callable[[bytes, EventT, Exception], None],
    ) -> list[ReadModelWrite]:
        try:
            return self._apply(key, partition, items, now)
        except Exception:  # find the message that fails; the others still apply
            pass
        writes: list[ReadModelWrite] = []
        for item in items:
            try:
                writes.extend(self._apply(key, partition, [item], now))
            except Exception as exc:
                on_failure(key, item[1], exc)
        return writes

    def _apply(
        self, key: bytes, partition: int, items: list[tuple[str, EventT]], now: float
    ) -> list[ReadModelWrite]:
        """Everything that can fail runs before anything is written or sent."""
        stored = self.records.get(key, partition)
        record = None if stored is None else IdentityRecord.from_json(stored)
        messages = [_message(kind, event) for kind, event in items]
        record, out = identity_step(key.decode(), record, messages, self.policy, now)
        encoded = None if record is None else record.to_json()
        # --- nothing below fails on bad input ---
        if out.changed or out.deleted:
            self.records.put(key, encoded, partition)
        due = self.due.get(partition)
        if due is not None:
            due.update(key, next_park_due(record))
        send_forwards(self.producer, self.customer_events_topic, out.forwards)
        send_identity_log(self.producer, self.identity_log_topic, self.metrics, key, out.log)
        metrics = self.metrics
        if out.parked:
            metrics.identity_events("parked").inc(out.parked)
        if out.resolved:
            metrics.identity_events("resolved").inc(out.resolved)
        if out.to_anonymous:
            metrics.identity_events("anonymous").inc(out.to_anonymous)
        return out.writes

    # --- parking timers ---------------------------------------------------------------

    def rebuild_due(self, partitions: set[int]) -> int:
        self.due, indexed = due_indexes(self.records, partitions, _park_due, "identity")
        return indexed

    def fire_due(self, now: float, owned: frozenset[int]) -> int:
        """A marker for every identifier whose parking is due: its events go on as input."""
        sent = 0
        for partition, index in self.due.items():
            if partition not in owned:
                continue
            for key in index.pop_due(now):
                self.producer.send(
                    self.customer_events_topic, key, b"", partition, headers=kind_header(TICK)
                )
                sent += 1
        return sent


def _park_due(value: bytes) -> float | None:
    try:
        return next_park_due(IdentityRecord.from_json(value))
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise ValueError("not an identity record") from exc


def _message(kind: str, event: EventT) -> IdentityMessage:
    message = event.message
    value: Any = message.value
    parsed = orjson.loads(value) if value else None
    return IdentityMessage(kind, parsed, message.timestamp, len(value or b""))
