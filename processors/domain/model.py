"""The data the domain works on: events in, state, and outputs (triggers, decisions).

Nothing here knows about Faust, Kafka or Redis. Times are epoch seconds (float)
inside the domain and RFC 3339 strings on the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from processors.domain.identity import Forward
    from processors.domain.read_model import ReadModelWrite

# Outcomes on decision.log.
EMITTED = "emitted"
SUPPRESSED = "suppressed"
DEFERRED = "deferred"
#: A deferred trigger sent at its release time (an emission, for the decision log).
RELEASED = "released"
#: The customer was forgotten (privacy.erasure_requested; decision 1-0-2).
ERASED = "erased"

# Message classes: service messages bypass the marketing contact policy.
MARKETING = "marketing"
SERVICE = "service"


def parse_time(value: str) -> float:
    """RFC 3339 (already validated by the contract) -> epoch seconds."""
    return datetime.fromisoformat(value).timestamp()


def _format_time(epoch: float) -> str:
    """The definition of :func:`format_time` (and its path for unusual inputs)."""
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


#: Whole epoch second -> "YYYY-MM-DDTHH:MM:SS" (UTC); a bounded cache, emptied when full.
#: The times formatted are mostly near now (event, decision and expiry times), so few
#: seconds recur a lot.
_SECONDS: dict[int, str] = {}
_SECONDS_KEPT = 4096
#: The fast path's range: from the epoch to a second before 9999-12-31T23:59:59.
_FAST_MAX = 253402300798.0
#: :func:`format_time`'s range, 1970-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z.
#: Input is bounded (``schemas.bounds``: 2000-01-01 .. a few years from now), but a
#: record stored before those bounds may hold any time: clamped, it still projects.
MIN_TIME = 0.0
MAX_TIME = 253402300799.9995  # formats as .999 (float precision)


def _second(seconds: int) -> str:
    if len(_SECONDS) >= _SECONDS_KEPT:
        _SECONDS.clear()
    text = _SECONDS[seconds] = _format_time(seconds)[:19]
    return text


def format_time(epoch: float) -> str:
    """Epoch seconds -> RFC 3339 in UTC with millisecond precision; never raises for a number.

    The same text as ``_format_time`` (``datetime.fromtimestamp``) for every time in
    [:data:`MIN_TIME`, :data:`MAX_TIME`], about twice as fast: it runs several times per
    event. Like ``fromtimestamp``, the fraction is rounded half-even to microseconds,
    then truncated to milliseconds. A time outside that range is clamped to it (NaN
    reads as :data:`MIN_TIME`), so a date stored out of range never stops a projection.
    """
    kind = type(epoch)
    if kind is float and 0.0 <= epoch < _FAST_MAX:
        fraction, whole = math.modf(epoch)
        micros = round(fraction * 1e6)
        seconds = int(whole)
        if micros >= 1_000_000:
            micros -= 1_000_000
            seconds += 1
    elif kind is int and 0 <= epoch < _FAST_MAX:
        seconds, micros = int(epoch), 0
    else:  # NaN, negative, out of range, other types (not numbers: TypeError as ever)
        return _format_time(clamp_time(epoch))
    return f"{_SECONDS.get(seconds) or _second(seconds)}.{micros // 1000:03d}Z"


def clamp_time(epoch: float) -> float:
    """``epoch`` within [:data:`MIN_TIME`, :data:`MAX_TIME`]; NaN becomes MIN_TIME."""
    if epoch != epoch:  # NaN
        return MIN_TIME
    return MIN_TIME if epoch < MIN_TIME else MAX_TIME if epoch > MAX_TIME else epoch


@dataclass(slots=True, frozen=True)
class Event:
    """A validated touchpoint event, as the customer agent sees it."""

    event_id: str
    type: str
    channel: str
    customer_id: str
    occurred_at: float
    payload: dict[str, Any]
    #: When the channel produced it (Kafka timestamp), for event-to-trigger latency.
    produced_at: float
    #: Identifier type -> normalised value (msisdn, email, device_id, ...), when sent.
    identifiers: dict[str, str] | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any], produced_at: float) -> Event:
        return cls(
            event_id=record["event_id"],
            type=record["type"],
            channel=record["channel"],
            customer_id=record["customer_id"],
            occurred_at=parse_time(record["occurred_at"]),
            payload=record["payload"],
            produced_at=produced_at,
            identifiers=record.get("identifiers"),
        )


@dataclass(slots=True)
class CustomerState:
    """One compact record per customer; the value of the ``customers`` table.

    Kept JSON-friendly (dicts, lists, numbers) so it round-trips through orjson
    without custom codecs.
    """

    customer_id: str
    #: Traits from profile.updated: home_country, marital_status, children,
    #: preferred_channel, timezone, language.
    traits: dict[str, Any] = field(default_factory=dict)
    products: list[str] = field(default_factory=list)
    #: "<channel>:<purpose>" -> {"granted": bool, "at": epoch}; the newest by event time wins.
    consents: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: touchpoint channel -> epoch of the newest event seen from it.
    last_seen: dict[str, float] = field(default_factory=dict)
    last_country: str | None = None
    #: entitlement kind ("overdraft") -> {limit, currency, offer_id, expires_at (epoch)}.
    entitlements: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: "<rule>:<subject>" -> epoch (event time) the rule last emitted for that subject.
    cooldowns: dict[str, float] = field(default_factory=dict)
    #: Dedup ring: short hashes of recent event ids and the day (epoch day) each was seen.
    seen_ids: list[int] = field(default_factory=list)
    seen_days: list[int] = field(default_factory=list)
    updated_at: float | None = None
    #: Marketing contact history (``processors.domain.contact.ContactState.to_dict()``).
    contact: dict[str, Any] = field(default_factory=dict)
    #: Durable timers (``processors.domain.timers``), sorted by due time.
    timers: list[dict[str, Any]] = field(default_factory=list)
    #: trigger_id -> {offer_type, rule, channel, expires_at} of marketing triggers sent and
    #: not yet answered; a response looks its offer up here, expiry makes it "ignored".
    offers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Foreign-airport ATM withdrawals of the last 30 days: {atm_id, country, at} (S2).
    airport_withdrawals: list[dict[str, Any]] = field(default_factory=list)
    #: Messaging channel (sms, email, push) -> responses seen from it, to learn the
    #: preferred channel when the profile does not set one.
    response_channels: dict[str, int] = field(default_factory=dict)
    #: The current cart (S8): {cart_id, items, currency, updated_at}; None when empty or ordered.
    cart: dict[str, Any] | None = None
    #: When the last cart was emptied or ordered (its Redis key is then deleted).
    cart_closed_at: float | None = None
    #: coupon_id -> {value, currency, expires_at, status, issued_channel, redeemed_at,
    #: redeemed_channel} (S7). A coupon belongs to one customer, so it lives here.
    coupons: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: appointment_id -> {department, scheduled_at, status} (S13).
    appointments: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Lead-scoring interactions of the window: [epoch, event type, points] (S10).
    lead: list[list[Any]] = field(default_factory=list)
    #: Identifier type -> her values (bounded per type), learned from her events
    #: (processors.domain.links); each resolves her identified events.
    identifiers: dict[str, list[str]] = field(default_factory=dict)
    # The funnel stage is a trait (``traits.funnel_stage``), so the profile shows it.

    @classmethod
    def new(cls, customer_id: str) -> CustomerState:
        return cls(customer_id=customer_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CustomerState:
        if cls is not CustomerState or data.keys() != _STATE_FIELDS:
            return cls(**data)  # an older record (defaults fill in) or a wrong one (raises)
        # A stored record has every field: set them directly, twice as fast as
        # ``cls(**data)`` (keyword matching of 21 arguments), with the same result.
        state = object.__new__(cls)
        for name in _STATE_FIELD_NAMES:
            setattr(state, name, data[name])
        return state


_STATE_FIELD_NAMES: tuple[str, ...] = CustomerState.__slots__
_STATE_FIELDS = frozenset(_STATE_FIELD_NAMES)


@dataclass(slots=True, frozen=True)
class Trigger:
    """An action a channel should take, published on ``trigger.<channel>``."""

    trigger_id: str
    type: str
    customer_id: str
    channel: str
    created_at: float
    expires_at: float | None
    source_event_id: str
    rule: str
    reason: str
    payload: dict[str, Any]
    #: Not on the wire: when the source event was produced, for the latency metric.
    source_produced_at: float = 0.0
    message_class: str = SERVICE
    ruleset: str | None = None
    #: One-tap actions (marketing only): [{kind, token}].
    actions: tuple[dict[str, str], ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "trigger_id": self.trigger_id,
            "type": self.type,
            "customer_id": self.customer_id,
            "channel": self.channel,
            "created_at": format_time(self.created_at),
            "expires_at": None if self.expires_at is None else format_time(self.expires_at),
            "source_event_id": self.source_event_id,
            "rule": self.rule,
            "reason": self.reason,
            "payload": self.payload,
            "message_class": self.message_class,
            **({"ruleset": self.ruleset} if self.ruleset else {}),
            **({"actions": list(self.actions)} if self.actions else {}),
        }


@dataclass(slots=True, frozen=True)
class Decision:
    """Why a rule that matched an event did or did not emit, for ``decision.log``."""

    decision_id: str
    customer_id: str
    rule: str
    trigger_type: str
    source_event_id: str
    outcome: str
    reasons: tuple[str, ...]
    trigger_id: str | None
    decided_at: float
    ruleset: str | None = None
    message_class: str | None = None
    channel: str | None = None
    release_at: float | None = None
    #: An erasure's request id (decision 1-0-2), so the CRM can show the request done.
    request_id: str | None = None

    def to_record(self) -> dict[str, Any]:
        optional = {
            "ruleset": self.ruleset,
            "message_class": self.message_class,
            "channel": self.channel,
            "release_at": None if self.release_at is None else format_time(self.release_at),
            "request_id": self.request_id,
        }
        return {
            **{name: value for name, value in optional.items() if value is not None},
            "decision_id": self.decision_id,
            "customer_id": self.customer_id,
            "rule": self.rule,
            "trigger_type": self.trigger_type,
            "source_event_id": self.source_event_id,
            "outcome": self.outcome,
            "reasons": list(self.reasons),
            "trigger_id": self.trigger_id,
            "decided_at": format_time(self.decided_at),
        }


@dataclass(slots=True)
class StepOutputs:
    """Everything one ``step`` produced; the agent decides how to send it."""

    triggers: list[Trigger] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    duplicates: int = 0
    #: Dedup ids evicted from a full ring before ``dedup_days`` had passed.
    dedup_early_evictions: int = 0
    #: False when every event was a duplicate: state is unchanged.
    changed: bool = False
    #: (rule id, message) of rule expressions that failed at run time.
    rule_errors: list[tuple[str, str]] = field(default_factory=list)
    #: Timers refused because the customer's timer list was full.
    timers_refused: int = 0
    #: Rule timers cancelled by an event, and dropped because their rule was removed.
    timers_cancelled: int = 0
    timers_dropped: int = 0
    #: Offer performance increments (S11): (rule, channel, counter, amount); counters are
    #: emitted, suppressed:<reason>, deferred, accepted, declined, ignored, accepted_value,
    #: control_accepted.
    stats: list[tuple[str, str, str, float]] = field(default_factory=list)
    #: The customer's timeline after the batch, when one was given to ``step``.
    timeline: list[dict[str, Any]] | None = None
    #: Items a cap dropped from the record, by collection (coupons, offers, appointments,
    #: cooldowns, products, lead, airport_withdrawals, contact_responses, contact_paused,
    #: seen_ids, timers): ``processors.domain.caps``. For
    #: ``omni_state_items_dropped_total{collection}``.
    state_items_dropped: dict[str, int] = field(default_factory=dict)
    #: When ``changed``: ``orjson.dumps(state)`` after the caps, at most
    #: ``Policy.max_state_bytes``. Store these bytes rather than encoding again.
    state_encoded: bytes | None = None
    #: Events whose ``occurred_at`` was outside 2000-01-01 .. now + max_future_skew and
    #: was clamped (they bypassed the validator's bounds, e.g. forwarded before them).
    times_clamped: int = 0
    #: Read-model keys of the customer as she was before a ``privacy.erasure_requested``
    #: in this step, all deletes (``processors.domain.erasure``); empty without one.
    erased_keys: list[ReadModelWrite] = field(default_factory=list)
    #: True when the step ends with the customer forgotten (an erasure and no event
    #: after it): her record and timeline are deleted (tombstones), not written.
    forgotten: bool = False
    #: Records for the customer-events topic: link/unlink commands keyed by identifier,
    #: merge events keyed by customer (processors.domain.identity.Forward).
    forwards: list[Forward] = field(default_factory=list)
    #: identity.log records (links refused on her side, CRM merges).
    identity_log: list[dict[str, Any]] = field(default_factory=list)
    #: Identifiers ignored because their value is blocked (OMNI_IDENTITY_BLOCKED_VALUES).
    identity_blocked: int = 0
