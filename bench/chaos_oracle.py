"""The chaos run's oracle, and the comparisons that score the worker against it.

**The oracle** runs the pure :func:`processors.domain.step.step` in-process over the
valid events, each customer's events in the order the worker's customer agent
got them, one event per call with ``now = occurred_at + NOW_OFFSET``, and keeps
what the worker keeps around it (:mod:`processors.customer`): the timeline beside
the record, the offer counters per rule, channel and partition, and, at the end,
:func:`processors.domain.step.fire_timers` for any timer due by then. That order
is the first copy of each event id on ``omni.customer-events``: Kafka orders a
customer's events only within one topic partition, and the ingest agent's
interleaving of the 13 touchpoint topics is the one legitimate freedom the worker
has (:func:`ingest_order_violations` checks that it kept each source partition's
order). Everything after that hop must be exactly what ``step`` says.

**Time is made irrelevant** by the run's settings, not by the comparison: the
maximum event age is a day (nothing goes stale), quiet hours are off (nothing is
deferred), every rule in the mix expires an hour or more after its event (nothing
expires before it is processed), and the events' ``occurred_at`` is their send
time, so the worker's ``now`` is ``occurred_at`` plus its lag. The run checks that
bound (:data:`TIME_BOUND_SECONDS` against the largest ``decided_at - occurred_at``).

**Left out of the comparison** because they are the worker's processing time:

* state: ``seen_days`` (the day each id entered the dedup ring);
* triggers: ``created_at``; decisions: ``decided_at``;
* Redis: key TTLs (``PXAT`` = the entitlement's expiry, an event-time value anyway).

Fields that use ``now`` only through windows of a day or more (entitlements
pruned at expiry, contact history pruned after 7 days + slack, offers forgotten a
day after expiry, entitlement keys projected while unexpired) cannot change within
a run, so they are compared.

Timers: the bench mix has no rule with ``after:``/``at:`` (carts, coupons,
appointments), so no timer fires on the worker's clock during the run; the only
timers are the "ignored" checks of marketing offers, due at their expiry (1 h to
7 d after the event), after the run. Timer rules are left out on purpose: when a
timer fires relative to the customer's next event depends on the worker's clock
and its backlog (a reminder due while the worker drains a backlog is cancelled by
an event it would have preceded live), so neither their triggers nor the caps
they consume are a function of the events alone.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors.domain.identity import (
    IdentityMessage,
    IdentityPolicy,
    IdentityRecord,
    identifier_view,
    identity_step,
)
from processors.domain.model import CustomerState, Event
from processors.domain.read_model import (
    ReadModelWrite,
    project,
    stats_key,
    timeline_write,
)
from processors.domain.step import StepContext, fire_timers, step

#: The oracle's ``now`` is the event's ``occurred_at`` plus this (a nominal lag).
NOW_OFFSET = 1.0
#: Decisions are a function of the events alone while every event is processed
#: within this many seconds of its occurred_at (the shortest rule expiry in the mix:
#: long_distance_plan_offer, 1 h). The run reports the largest lag it saw.
TIME_BOUND_SECONDS = 3600.0

#: Processing-time fields, left out of every comparison (see the module doc).
TIME_DEPENDENT_STATE_FIELDS: tuple[str, ...] = ("seen_days",)
TIME_DEPENDENT_TRIGGER_FIELDS: tuple[str, ...] = ("created_at",)
TIME_DEPENDENT_DECISION_FIELDS: tuple[str, ...] = ("decided_at",)


@dataclass(frozen=True, slots=True)
class Forwarded:
    """One record of ``omni.customer-events``: where it sits and what it holds."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class Oracle:
    #: trigger_id -> the trigger record without its time-dependent fields.
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: decision_id -> the decision record without its time-dependent fields.
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: customer id -> the customer record as stored (JSON types).
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    timelines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: (rule, channel, partition) -> counter -> total (the ``stats`` table, S11).
    stats: dict[tuple[str, str, int], dict[str, float]] = field(default_factory=dict)
    #: customer id -> partition of omni.customer-events.
    partitions: dict[str, int] = field(default_factory=dict)
    events: int = 0
    #: Timers due by the end of the run (fired by the oracle at the end; 0 expected).
    timers_due: int = 0


def without(record: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    drop = set(names)
    return {k: v for k, v in record.items() if k not in drop}


def customer_order(
    forwarded: Iterable[Forwarded], valid_ids: Mapping[str, str]
) -> tuple[dict[str, list[Forwarded]], Counter[str]]:
    """Each customer's valid events in processing order: the first copy of each id.

    ``valid_ids`` maps the generator's valid event ids to their customer. Returns the
    order per customer and counts of what else was forwarded: ``copies`` (later
    copies of an id: producer duplicates and at-least-once replays), ``foreign``
    (records that are not a valid event of the run: poison that got through).
    """
    seen: set[str] = set()
    order: dict[str, list[Forwarded]] = defaultdict(list)
    other: Counter[str] = Counter()
    for record in forwarded:
        try:
            event = orjson.loads(record.value)
            event_id = event["event_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            other["foreign"] += 1
            continue
        customer = valid_ids.get(event_id) if isinstance(event_id, str) else None
        if customer is None or event.get("customer_id") != customer:
            other["foreign"] += 1
            continue
        if event_id in seen:
            other["copies"] += 1
            continue
        seen.add(event_id)
        order[customer].append(record)
    return dict(order), other


def ingest_order_violations(
    order: Mapping[str, Sequence[Forwarded]], source_rank: Mapping[str, tuple[str, int]]
) -> list[str]:
    """Event ids that overtook an earlier event of the same customer and source topic.

    ``source_rank``: event id -> (source topic, produce index). Kafka keeps one
    topic partition's order, and the ingest agent must too.
    """
    violations: list[str] = []
    for records in order.values():
        last: dict[str, int] = {}
        for record in records:
            event_id = orjson.loads(record.value)["event_id"]
            topic, rank = source_rank[event_id]
            if rank < last.get(topic, -1):
                violations.append(event_id)
            last[topic] = max(rank, last.get(topic, -1))
    return violations


def run_oracle(
    order: Mapping[str, Sequence[Forwarded]],
    ctx: StepContext,
    end: float,
    now_offset: float = NOW_OFFSET,
) -> Oracle:
    """``step`` over each customer's events in ``order``; timers due by ``end`` fired last."""
    oracle = Oracle()
    for customer, records in order.items():
        state: CustomerState | None = None
        timeline: list[dict[str, Any]] = []
        partition = records[0].partition
        oracle.partitions[customer] = partition
        for record in records:
            event = Event.from_record(orjson.loads(record.value), 0.0)
            state, out = step(state, [event], ctx, event.occurred_at + now_offset, timeline)
            if out.timeline is not None:
                timeline = out.timeline
            _collect(oracle, out, partition)
            oracle.events += 1
        if state is None:
            continue
        due = [t for t in state.timers if t["due_at"] <= end]
        if due:
            oracle.timers_due += len(due)
            _collect(oracle, fire_timers(state, ctx, end), partition)
        oracle.states[customer] = orjson.loads(orjson.dumps(state))
        oracle.timelines[customer] = timeline
    return oracle


def _collect(oracle: Oracle, out: Any, partition: int) -> None:
    for trigger in out.triggers:
        record = trigger.to_record()
        oracle.triggers[trigger.trigger_id] = without(record, TIME_DEPENDENT_TRIGGER_FIELDS)
    for decision in out.decisions:
        record = decision.to_record()
        oracle.decisions[decision.decision_id] = without(record, TIME_DEPENDENT_DECISION_FIELDS)
    for rule, channel, counter, amount in out.stats:
        totals = oracle.stats.setdefault((rule, channel, partition), {})
        totals[counter] = totals.get(counter, 0.0) + amount


@dataclass(frozen=True, slots=True)
class IdentityInput:
    """A record of ``omni.customer-events`` for an identifier (header ``omni-kind``)."""

    partition: int
    offset: int
    key: bytes
    kind: str
    value: bytes


#: Record fields that hold processing time (the parking deadline), left out.
TIME_DEPENDENT_IDENTITY_FIELDS: tuple[str, ...] = ("park_until",)


def run_identity_oracle(
    inputs: Iterable[IdentityInput], policy: IdentityPolicy, now: float
) -> dict[str, dict[str, Any]]:
    """``identity_step`` over each identifier's records in topic order, the first copy of
    each (an at-least-once replay repeats a record byte for byte); parking ticks are left
    out (the run's parking outlasts it: a tick finds nothing due). Returns each
    identifier's final record (JSON types), without its time-dependent fields."""
    seen: set[tuple[bytes, str, bytes]] = set()
    by_key: dict[bytes, list[IdentityMessage]] = defaultdict(list)
    for record in sorted(inputs, key=lambda r: (r.partition, r.offset)):
        marker = (record.key, record.kind, record.value)
        if not record.value or marker in seen:
            continue
        seen.add(marker)
        by_key[record.key].append(
            IdentityMessage(record.kind, orjson.loads(record.value), 0.0, len(record.value))
        )
    records: dict[str, dict[str, Any]] = {}
    for key, messages in by_key.items():
        final, _ = identity_step(key.decode(), None, messages, policy, now)
        if final is not None:
            records[key.decode()] = without(
                orjson.loads(final.to_json()), TIME_DEPENDENT_IDENTITY_FIELDS
            )
    return records


def identity_read_model(records: Mapping[str, Mapping[str, Any]]) -> list[ReadModelWrite]:
    """The identifier keys these records project (identity.identifier_view)."""
    writes = []
    for key, record in records.items():
        view = identifier_view(key, IdentityRecord(**record))
        if view is not None:
            writes.append(view)
    return writes


# --- scores ------------------------------------------------------------------------------


@dataclass
class TriggerScore:
    expected: int
    records: int
    distinct: int
    #: Expected trigger ids never received.
    lost: list[str]
    #: Received trigger ids the oracle does not expect (a re-offer after lost state...).
    unexpected: list[str]
    #: Records beyond the first of each trigger id (at-least-once copies).
    duplicates_raw: int
    #: After dedup by trigger_id, offers still sent twice: more than one trigger id for
    #: one (rule, customer, source event), or copies of one id that differ.
    duplicates_after_dedup: int
    #: Expected ids received with other content (``created_at`` aside).
    content_differs: list[str]


def score_triggers(
    expected: Mapping[str, Mapping[str, Any]], received: Sequence[Mapping[str, Any]]
) -> TriggerScore:
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in received:
        copies[str(record["trigger_id"])].append(without(record, TIME_DEPENDENT_TRIGGER_FIELDS))
    offers: Counter[tuple[str, str, str]] = Counter(
        (str(first["rule"]), str(first["customer_id"]), str(first["source_event_id"]))
        for first in (group[0] for group in copies.values())
    )
    conflicting = sum(1 for group in copies.values() if any(c != group[0] for c in group[1:]))
    return TriggerScore(
        expected=len(expected),
        records=len(received),
        distinct=len(copies),
        lost=sorted(set(expected) - set(copies)),
        unexpected=sorted(set(copies) - set(expected)),
        duplicates_raw=len(received) - len(copies),
        duplicates_after_dedup=sum(n - 1 for n in offers.values()) + conflicting,
        content_differs=sorted(
            tid
            for tid, group in copies.items()
            if tid in expected and any(c != expected[tid] for c in group)
        ),
    )


@dataclass
class DecisionScore:
    expected: int
    records: int
    distinct: int
    lost: list[str]
    unexpected: list[str]
    #: Expected decision ids with a copy whose outcome, reasons or fields differ.
    differing: list[str]


def score_decisions(
    expected: Mapping[str, Mapping[str, Any]], received: Sequence[Mapping[str, Any]]
) -> DecisionScore:
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in received:
        copies[str(record["decision_id"])].append(without(record, TIME_DEPENDENT_DECISION_FIELDS))
    return DecisionScore(
        expected=len(expected),
        records=len(received),
        distinct=len(copies),
        lost=sorted(set(expected) - set(copies)),
        unexpected=sorted(set(copies) - set(expected)),
        differing=sorted(
            did
            for did, group in copies.items()
            if did in expected and any(c != expected[did] for c in group)
        ),
    )


def state_diff(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    ignore: Sequence[str] = TIME_DEPENDENT_STATE_FIELDS,
) -> list[str]:
    """Top-level fields of a customer record that differ (``ignore`` aside)."""
    names = (set(expected) | set(actual)) - set(ignore)
    return sorted(n for n in names if expected.get(n) != actual.get(n))


@dataclass
class StateScore:
    customers: int
    #: customer id -> the fields that differ from the oracle.
    differing: dict[str, list[str]]
    #: Customers the oracle has and the worker's table lacks.
    missing: list[str]
    #: Records in the worker's table the oracle has no customer for (poison that got in).
    extra: list[str]

    @property
    def wrong(self) -> int:
        return len(self.differing) + len(self.missing)


def score_states(
    expected: Mapping[str, Mapping[str, Any]],
    actual: Mapping[str, Mapping[str, Any]],
    ignore: Sequence[str] = TIME_DEPENDENT_STATE_FIELDS,
) -> StateScore:
    differing: dict[str, list[str]] = {}
    for customer, state in expected.items():
        stored = actual.get(customer)
        if stored is not None:
            fields = state_diff(state, stored, ignore)
            if fields:
                differing[customer] = fields
    return StateScore(
        customers=len(expected),
        differing=differing,
        missing=sorted(set(expected) - set(actual)),
        extra=sorted(set(actual) - set(expected)),
    )


# --- the read model ----------------------------------------------------------------------------


@dataclass
class ReadModelExpectation:
    #: key -> parsed JSON value, or None when the key must not exist.
    strings: dict[str, Any] = field(default_factory=dict)
    #: hash key -> field -> parsed JSON value.
    hashes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def keys(self) -> set[str]:
        return {k for k, v in self.strings.items() if v is not None} | set(self.hashes)


def expected_read_model(
    states: Mapping[str, Mapping[str, Any]],
    timelines: Mapping[str, Sequence[dict[str, Any]]],
    stats: Mapping[tuple[str, str, int], Mapping[str, float]],
    now: float,
    identities: Mapping[str, Mapping[str, Any]] | None = None,
) -> ReadModelExpectation:
    """What Redis must hold for these records: ``project()`` of each state as of ``now``,
    the timelines, and the offer counters (one hash field per channel and partition)."""
    expectation = ReadModelExpectation()

    def add(write: ReadModelWrite) -> None:
        value = None if write.value is None else orjson.loads(write.value)
        if write.field is not None:
            expectation.hashes.setdefault(write.key, {})[write.field] = value
        else:
            expectation.strings[write.key] = value

    for customer, stored in states.items():
        for write in project(CustomerState.from_dict(dict(stored)), now):
            add(write)
        timeline = timelines.get(customer)
        if timeline:
            add(timeline_write(customer, list(timeline)))
    for (rule, channel, partition), totals in stats.items():
        add(ReadModelWrite(stats_key(rule), orjson.dumps(totals), field=f"{channel}|p{partition}"))
    for write in identity_read_model(identities or {}):
        add(write)
    return expectation


@dataclass
class ReadModelScore:
    keys: int
    #: Keys whose value (or hash field) differs from the expected one.
    differing: list[str]
    #: Expected keys (or hash fields) that Redis lacks.
    missing: list[str]
    #: Keys Redis has that no expected state projects (and keys that must not exist).
    extra: list[str]

    @property
    def wrong(self) -> int:
        return len(self.differing) + len(self.missing) + len(self.extra)


def score_read_model(
    expectation: ReadModelExpectation,
    strings: Mapping[str, bytes | None],
    hashes: Mapping[str, Mapping[str, bytes]],
    present: Iterable[str],
) -> ReadModelScore:
    """``strings``/``hashes``: what Redis returned for the expected keys; ``present``:
    every key Redis has under the run's prefix (to find extra ones)."""
    differing: list[str] = []
    missing: list[str] = []
    extra: list[str] = []
    for key, value in expectation.strings.items():
        got = strings.get(key)
        if value is None:
            if got is not None:
                extra.append(key)
        elif got is None:
            missing.append(key)
        elif orjson.loads(got) != value:
            differing.append(key)
    for key, fields in expectation.hashes.items():
        stored = hashes.get(key) or {}
        for name, value in fields.items():
            got = stored.get(name)
            if got is None:
                missing.append(f"{key} {name}")
            elif orjson.loads(got) != value:
                differing.append(f"{key} {name}")
        for name in set(stored) - set(fields):
            extra.append(f"{key} {name}")
    expected_keys = expectation.keys()
    # Claim keys are the channels' (SET NX by the till), never projected.
    extra.extend(k for k in present if k not in expected_keys and not k.endswith(":claim"))
    return ReadModelScore(
        keys=len(expected_keys),
        differing=sorted(differing),
        missing=sorted(missing),
        extra=sorted(set(extra)),
    )


# --- poison -----------------------------------------------------------------------------------

#: (topic, partition, offset) of a produced record.
Source = tuple[str, int, int]


@dataclass
class PoisonScore:
    #: kind -> records sent (delivered by the broker).
    sent: dict[str, int]
    #: kind -> records dead-lettered with a reason.
    deadlettered: dict[str, int]
    #: kind -> reason -> count.
    reasons: dict[str, dict[str, int]]
    #: Valid events (or their duplicates) dead-lettered: reason -> count.
    valid_deadlettered: dict[str, int]
    #: Dead letters whose source is no record of the run.
    unknown_deadletters: int

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_deadlettered(self) -> int:
        return sum(self.deadlettered.values())

    @property
    def share(self) -> float:
        return self.total_deadlettered / self.total_sent if self.total_sent else 1.0


def score_poison(
    sources: Mapping[Source, str],
    deadletters: Sequence[Mapping[str, Any]],
    aliases: Mapping[Source, Source] | None = None,
) -> PoisonScore:
    """``sources``: every delivered record's (topic, partition, offset) -> its kind
    (``valid``, ``duplicate`` or a poison kind). ``aliases``: the ``omni.customer-events``
    copy of a record -> the record (a dead letter of the customer stage names the copy).
    A poison record counts once, however many dead letters name it (a replay
    dead-letters it again)."""
    aliases = aliases or {}
    sent: Counter[str] = Counter(k for k in sources.values() if k not in ("valid", "duplicate"))
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    counted: set[Source] = set()
    valid: Counter[str] = Counter()
    unknown = 0
    for letter in deadletters:
        source = letter.get("source") or {}
        try:
            where: Source = (str(source["topic"]), int(source["partition"]), int(source["offset"]))
        except (KeyError, TypeError, ValueError):
            unknown += 1
            continue
        where = aliases.get(where, where)
        kind = sources.get(where)
        reason = str(letter.get("reason") or "")
        if kind is None:
            unknown += 1
        elif kind in ("valid", "duplicate"):
            if where not in counted:
                valid[reason] += 1
                counted.add(where)
        elif where not in counted and reason:
            counted.add(where)
            reasons[kind][reason] += 1
    return PoisonScore(
        sent=dict(sent),
        deadlettered={k: sum(reasons[k].values()) for k in sent},
        reasons={k: dict(v) for k, v in reasons.items()},
        valid_deadlettered=dict(valid),
        unknown_deadletters=unknown,
    )


# --- figures -----------------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50, p95 and max (nearest rank) and the count; None when there are no values."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"n": len(ordered), "p50": rank(0.50), "p95": rank(0.95), "max": ordered[-1]}
