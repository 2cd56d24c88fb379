"""The chaos run's input: the bench's real event mix, producer duplicates and poison.

Deterministic for a seed and a start time: the valid events are exactly
:func:`bench.workload.generate`'s mix (each customer's home profile first, then
network attaches, calls, ATM withdrawals, profile and consent changes, accepted
overdrafts), with ``occurred_at`` set to the record's planned send time
(``start + index / rate``), so the worker's wall clock and the event times agree
the way they do in production.

Mixed in, at random positions:

* **duplicates** (``duplicate_share`` of the valid events): an earlier valid record
  sent again, byte for byte, as an at-least-once producer does after a retry. They
  are not poison: the worker must treat them as no-ops (its dedup ring).
* **poison** (``poison_share`` of all records), of the kinds in :data:`POISON_KINDS`.
  Every one must end on ``touchpoint.deadletter`` with a reason. Some look like a real
  customer's event (a far-future consent for a customer who exists), so a poison
  record that gets through shows up as that customer's wrong state, not only as a
  missing dead letter.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.workload import LANGUAGES, MIX, TIMEZONES, Builder, atm_withdrawal, home_country
from processors.domain.model import format_time

VALID = "valid"
DUPLICATE = "duplicate"

#: Poison kinds; each must be dead-lettered with a reason. The comments say which
#: reason the contract gives today, for the reader: the run accepts any reason (the
#: report shows which one each kind got).
POISON_KINDS: tuple[str, ...] = (
    "not_json",  # truncated JSON: not_json
    "not_an_object",  # a JSON array holding an event: not_an_object
    "unknown_type",  # type "telco.teleported": unknown_type
    "schema_violation",  # an ATM withdrawal with a negative amount and no atm_id
    "channel_mismatch",  # an ATM withdrawal (channel atm) published on touchpoint.web
    "key_mismatch",  # key = another customer's id
    "missing_key",  # no key at all
    "huge_key",  # a 1,000,000-byte key on a valid-looking event: key_too_large
    "too_large",  # a profile over the 64 KiB event limit
    "future_coupon",  # coupon.issued at 9999-12-31T00:00:00Z, valid_hours 8760: future_event
    "future_consent",  # consent.updated dated 2099 for a real customer: future_event
    "ancient_coupon",  # coupon.issued dated 1900: date_out_of_range
)
#: Kinds the contract accepts today, so not poison by default (``--poison-kinds`` adds
#: them): a customer id containing ':' (Redis keys are ':'-separated; the contract only
#: bounds ids' length).
OPTIONAL_POISON_KINDS: tuple[str, ...] = ("colon_id",)
#: Heavy kinds are capped: ``kind -> poison records per capped one``. A 1 MB key
#: costs the broker a megabyte each; a handful shows the failure as well as hundreds.
HEAVY_EVERY = {"huge_key": 1000, "too_large": 100}

HUGE_KEY_BYTES = 1_000_000
TOO_LARGE_BYTES = 70 * 1024


@dataclass(frozen=True, slots=True)
class Record:
    """One message to produce, in produce order."""

    index: int
    #: The topic suffix: the record goes to ``touchpoint.<channel>``.
    channel: str
    key: bytes | None
    value: bytes | None
    #: ``valid``, ``duplicate`` or a poison kind.
    kind: str
    #: The event id (a poison record's ``px-<kind>-<n>``, also where its value is no JSON).
    event_id: str | None = None
    #: The customer of a valid event or duplicate.
    customer: str | None = None


@dataclass
class ChaosWorkload:
    records: list[Record]
    customers: list[str]
    start: float
    rate: float
    seed: int
    kinds: Counter[str] = field(default_factory=Counter)
    #: Valid event types (the bench's mix), for the report.
    mix: Counter[str] = field(default_factory=Counter)

    @property
    def valid(self) -> list[Record]:
        return [r for r in self.records if r.kind == VALID]

    @property
    def poison(self) -> list[Record]:
        return [r for r in self.records if r.kind not in (VALID, DUPLICATE)]

    def send_at(self, index: int) -> float:
        return self.start + index / self.rate


def poison_count(valid_events: int, share: float) -> int:
    """Poison records so that they are ``share`` of all records (rounded up)."""
    if share <= 0:
        return 0
    return math.ceil(valid_events * share / (1.0 - share))


def poison_kinds_for(count: int, kinds: tuple[str, ...], rng: random.Random) -> list[str]:
    """``count`` kinds, round robin with heavy kinds capped, shuffled; every kind at least once."""
    if count < len(kinds):
        raise ValueError(
            f"{count} poison records cannot cover the {len(kinds)} poison kinds; "
            "raise --events or --poison-share"
        )
    caps = {k: max(1, count // every) for k, every in HEAVY_EVERY.items() if k in kinds}
    picked = list(kinds)
    used = Counter(picked)
    while len(picked) < count:
        progressed = False
        for kind in kinds:
            if len(picked) >= count:
                break
            if kind in caps and used[kind] >= caps[kind]:
                continue
            picked.append(kind)
            used[kind] += 1
            progressed = True
        if not progressed:  # only capped kinds asked for: lift the caps
            caps = {}
    rng.shuffle(picked)
    return picked


def _event(
    event_id: str,
    type_: str,
    channel: str,
    customer: str,
    occurred_at: str,
    payload: dict[str, Any],
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": type_,
        "occurred_at": occurred_at,
        "channel": channel,
        "customer_id": customer,
        "payload": payload,
    }


def _valid_record(
    rng: random.Random,
    event_id: str,
    type_: str,
    channel: str,
    customer: str,
    occurred_at: str,
    payload: dict[str, Any],
    identifiers: dict[str, str] | None = None,
    identified: bool = False,
) -> bytes:
    event = _event(event_id, type_, channel, customer, occurred_at, payload)
    if identifiers:
        event["identifiers"] = identifiers
    if identified:  # the channel knows the phone, not the customer
        del event["customer_id"]
    # Optional envelope fields, as some channels send them (as bench.workload does).
    if channel in ("mobile", "telco") and rng.random() < 0.5:
        event["device"] = {"id": f"dev-{customer}", "kind": "phone"}
    if rng.random() < 0.2:
        event["journey_stage"] = rng.choice(
            ("awareness", "consideration", "purchase", "service", "loyalty")
        )
    return orjson.dumps(event)


@dataclass(frozen=True, slots=True)
class PoisonContext:
    """What a poison builder gets: the record's ids and the valid customers it abuses."""

    rng: random.Random
    event_id: str
    #: A valid customer the record pretends to belong to.
    customer: str
    #: Another valid customer (the wrong key of ``key_mismatch``).
    other: str
    #: The planned send time, RFC 3339.
    at: str

    def event(self, type_: str, channel: str, payload: dict[str, Any], **over: Any) -> bytes:
        values = _event(self.event_id, type_, channel, self.customer, self.at, payload)
        values.update(over)
        return orjson.dumps(values)

    def atm(self, **changes: Any) -> dict[str, Any]:
        payload = atm_withdrawal(self.rng, home_of(self.customer))[1]
        payload.update(changes)
        return payload


#: (channel of the topic, key, value) of one poison record.
Poison = tuple[str, bytes | None, bytes]


def _p_not_json(c: PoisonContext) -> Poison:
    whole = c.event("branch.visit", "branch", {"branch_id": "B-1"})
    return "branch", c.customer.encode(), whole[: len(whole) // 2]  # cut mid-value


def _p_not_an_object(c: PoisonContext) -> Poison:
    event = orjson.loads(c.event("branch.visit", "branch", {"branch_id": "B-1"}))
    return "branch", c.customer.encode(), orjson.dumps([event])


def _p_unknown_type(c: PoisonContext) -> Poison:
    return "telco", c.customer.encode(), c.event("telco.teleported", "telco", {"to": "MARS"})


def _p_schema_violation(c: PoisonContext) -> Poison:
    payload = c.atm(amount=-50)
    del payload["atm_id"]
    return "atm", c.customer.encode(), c.event("atm.withdrawal", "atm", payload)


def _p_channel_mismatch(c: PoisonContext) -> Poison:
    return "web", c.customer.encode(), c.event("atm.withdrawal", "atm", c.atm())


def _p_key_mismatch(c: PoisonContext) -> Poison:
    return "atm", c.other.encode(), c.event("atm.withdrawal", "atm", c.atm())


def _p_missing_key(c: PoisonContext) -> Poison:
    return "atm", None, c.event("atm.withdrawal", "atm", c.atm())


def _p_huge_key(c: PoisonContext) -> Poison:
    # Compressible on purpose: the point is the key's length, not the broker's bandwidth.
    return "atm", b"k" * HUGE_KEY_BYTES, c.event("atm.withdrawal", "atm", c.atm())


def _p_too_large(c: PoisonContext) -> Poison:
    requests = ["a quiet room, please " * 20] * (TOO_LARGE_BYTES // 420 + 1)
    return "hotel", c.customer.encode(), c.event("profile.updated", "hotel", {"requests": requests})


def _p_future_coupon(c: PoisonContext) -> Poison:
    payload = {"coupon_id": f"CP-{c.event_id}", "value": 10, "currency": "EUR", "valid_hours": 8760}
    value = c.event("coupon.issued", "tv", payload, occurred_at="9999-12-31T00:00:00Z")
    return "tv", c.customer.encode(), value


def _p_future_consent(c: PoisonContext) -> Poison:
    payload = {"channel": "sms", "purpose": "marketing", "granted": c.rng.random() < 0.5}
    value = c.event("consent.updated", "mobile", payload, occurred_at="2099-06-01T12:00:00Z")
    return "mobile", c.customer.encode(), value


def _p_ancient_coupon(c: PoisonContext) -> Poison:
    payload = {"coupon_id": f"CP-{c.event_id}", "value": 5, "currency": "EUR", "valid_hours": 24}
    value = c.event("coupon.issued", "sms", payload, occurred_at="1900-01-01T00:00:00Z")
    return "sms", c.customer.encode(), value


def _p_colon_id(c: PoisonContext) -> Poison:
    # 'x:overdraft' makes omni:entitlement:<id>:overdraft ambiguous, and a coupon id
    # 'X:claim' would be another coupon's claim key: ids must be ':'-free in the keys.
    colon = f"{c.customer}:overdraft"
    value = c.event("profile.updated", "crm", {"language": "en-GB"}, customer_id=colon)
    return "crm", colon.encode(), value


POISON_BUILDERS: dict[str, Callable[[PoisonContext], Poison]] = {
    "not_json": _p_not_json,
    "not_an_object": _p_not_an_object,
    "unknown_type": _p_unknown_type,
    "schema_violation": _p_schema_violation,
    "channel_mismatch": _p_channel_mismatch,
    "key_mismatch": _p_key_mismatch,
    "missing_key": _p_missing_key,
    "huge_key": _p_huge_key,
    "too_large": _p_too_large,
    "future_coupon": _p_future_coupon,
    "future_consent": _p_future_consent,
    "ancient_coupon": _p_ancient_coupon,
    "colon_id": _p_colon_id,
}
assert tuple(POISON_BUILDERS) == POISON_KINDS + OPTIONAL_POISON_KINDS


def chaos_customer_id(index: int) -> str:
    return f"cx-{index:06d}"


def chaos_msisdn(index: int) -> str:
    """The customer's phone number (E.164), linked by her home profile."""
    return f"+4470{index:08d}"


#: Share of the telco events after the home profiles sent with only the MSISDN
#: (identified events: resolved by the identity step, parked until the link is known).
IDENTIFIED_TELCO_SHARE = 0.5


def home_of(customer: str) -> str:
    return home_country(int(customer.rsplit("-", 1)[1]))


def generate(
    events: int,
    customers: int,
    seed: int,
    start: float,
    rate: float,
    poison_share: float = 0.05,
    duplicate_share: float = 0.005,
    kinds: tuple[str, ...] = POISON_KINDS,
) -> ChaosWorkload:
    """``events`` valid events of ``customers`` customers, plus duplicates and poison.

    Record ``i`` is planned for ``start + i / rate``; a valid event's ``occurred_at``
    is that time. Same arguments, same bytes.
    """
    if customers < 1 or events < customers:
        raise ValueError("need at least one customer and one event (a home profile) per customer")
    unknown = set(kinds) - set(POISON_BUILDERS)
    if unknown:
        known = ", ".join(POISON_BUILDERS)
        raise ValueError(f"unknown poison kinds {sorted(unknown)}; known: {known}")
    rng = random.Random(seed)
    ids = [chaos_customer_id(i) for i in range(customers)]
    # What each valid slot holds: (type, channel, customer index, payload).
    plan: list[tuple[str, str, int, dict[str, Any]]] = []
    for index in range(customers):
        home = home_country(index)
        payload = {"home_country": home, "language": LANGUAGES[home], "timezone": TIMEZONES[home]}
        plan.append(("profile.updated", "telco", index, payload))
    names = [name for name, _, _ in MIX]
    weights = [weight for _, weight, _ in MIX]
    builders: list[Builder] = [builder for _, _, builder in MIX]
    for pick in rng.choices(range(len(MIX)), weights=weights, k=events - customers):
        index = rng.randrange(customers)
        channel, payload = builders[pick](rng, home_country(index))
        plan.append((names[pick], channel, index, payload))
    duplicates = int(events * duplicate_share)
    poisons = poison_count(events, poison_share) if kinds else 0
    poison_plan = poison_kinds_for(poisons, kinds, rng) if poisons else []
    total = events + duplicates + len(poison_plan)
    # Slots after the home profiles, so the bench's "profile first" holds in produce order.
    extra_slots = sorted(rng.sample(range(customers, total), duplicates + len(poison_plan)))
    extra_kind = [DUPLICATE] * duplicates + poison_plan
    rng.shuffle(extra_kind)
    extra = dict(zip(extra_slots, extra_kind, strict=True))

    workload = ChaosWorkload([], ids, start, rate, seed)
    valid_next = 0
    produced_valid: list[Record] = []
    poison_serial = 0
    for index in range(total):
        at = format_time(start + index / rate)
        kind = extra.get(index, VALID)
        if kind == VALID:
            type_, channel, cindex, payload = plan[valid_next]
            event_id = f"ev-{valid_next:09d}"
            valid_next += 1
            customer = ids[cindex]
            phone = chaos_msisdn(cindex)
            key = customer.encode()
            if valid_next <= customers:  # her home profile links her phone
                value = _valid_record(
                    rng, event_id, type_, channel, customer, at, payload, {"msisdn": phone}
                )
            elif channel == "telco" and rng.random() < IDENTIFIED_TELCO_SHARE:
                value = _valid_record(
                    rng, event_id, type_, channel, customer, at, payload, {"msisdn": phone}, True
                )
                key = f"msisdn:{phone}".encode()
            else:
                value = _valid_record(rng, event_id, type_, channel, customer, at, payload)
            record = Record(index, channel, key, value, VALID, event_id, customer)
            produced_valid.append(record)
            workload.mix[type_] += 1
        elif kind == DUPLICATE:
            if not produced_valid:  # cannot happen: duplicates come after the home profiles
                raise AssertionError("a duplicate before any valid event")
            original = rng.choice(produced_valid)
            record = Record(
                index,
                original.channel,
                original.key,
                original.value,
                DUPLICATE,
                original.event_id,
                original.customer,
            )
        else:
            poison_serial += 1
            cid = ids[rng.randrange(customers)]
            other = ids[rng.randrange(customers)]
            if other == cid:
                other = ids[(ids.index(cid) + 1) % customers] if customers > 1 else cid + "-other"
            context = PoisonContext(rng, f"px-{kind}-{poison_serial:06d}", cid, other, at)
            channel, poison_key, value = POISON_BUILDERS[kind](context)
            record = Record(index, channel, poison_key, value, kind, context.event_id)
        workload.records.append(record)
        workload.kinds[kind] += 1
    return workload
