"""Identity resolution, decided purely: one identifier's record and the messages for it.

Channels that do not know the customer id send *identified events*: events with
``identifiers`` (msisdn, email, device_id, card_token, loyalty_id) and no
``customer_id``, keyed ``<type>:<value>`` (:func:`schemas.identity_key`). The ingest
step forwards them to ``omni.customer-events`` keyed by that identifier, with the
record header ``omni-kind: identify``; the worker's keyed agent hands every record
with that header to :func:`identity_step` for the identifier's record (table
``identities``) instead of to the customer step. Links arrive the same way (header
``link`` / ``unlink``), republished by the customer step when it learns one from an
event that carries both a customer id and identifiers (:mod:`processors.domain.links`).

An identified event is

* forwarded to its customer (``customer_id`` set, same ``event_id``) when the
  identifier is linked to one;
* forwarded to the identifier's anonymous profile ``anon:<type>:<value>`` when the
  identifier already has one (it was unresolved for longer than the parking time);
* otherwise parked in the record, bounded in count and bytes, until a link arrives
  (then forwarded to the customer, in order) or the parking time passes (then its
  anonymous profile is created with it: nothing is lost).

A link to an identifier with an anonymous profile merges that profile into the
customer: the identity step sends ``identity.merge_requested`` to the anonymous
profile, whose customer step sends its state to the customer
(``identity.profile_merged``) and forgets itself (:mod:`processors.domain.merge`).

Guardrails: blocked junk values never link; a device seen for more than
``shared_device_customers`` customers within the window is *shared*: it never links
or merges (its events go to its anonymous profile); a learned link never moves an
identifier from one known customer to another (only the CRM's ``identity.linked``
may). Every link, unlink, merge and refusal is an ``identity.log`` record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from processors.domain.ids import _hex_id
from processors.domain.model import format_time
from processors.domain.read_model import ReadModelWrite
from producers.keys import identifier_key

if TYPE_CHECKING:
    from processors.settings import Settings

#: Record header naming what an identity record on the customer-events topic is.
KIND_HEADER = "omni-kind"
#: An identified event (the value is the event, without ``customer_id``).
IDENTIFY = "identify"
#: A link or unlink of the key's identifier (the value is a :func:`link_command`).
LINK = "link"
UNLINK = "unlink"
#: A parking timer's marker (empty value): the tick found the record's parking due.
TICK = "tick"
IDENTITY_KINDS: frozenset[str] = frozenset((IDENTIFY, LINK, UNLINK, TICK))

#: Anonymous profiles are customers keyed ``anon:<type>:<value>`` (the prefix is
#: reserved: the validator refuses customer ids that start with it).
ANONYMOUS_PREFIX = "anon:"

# The customer step's internal event types (never on a touchpoint topic).
MERGE_REQUESTED = "identity.merge_requested"
PROFILE_MERGED = "identity.profile_merged"

# identity.log record types and refusal reasons (schema iglu:com.omnichannel/identity).
LINKED = "identity.linked"
UNLINKED = "identity.unlinked"
MERGED = "identity.merged"
REFUSED = "identity.refused"
BLOCKED_VALUE = "blocked_value"
SHARED_DEVICE = "shared_device"
LINKED_TO_ANOTHER = "linked_to_another_customer"
IDENTIFIER_LIMIT = "identifier_limit"
RESERVED_ID = "reserved_id"
IDENTITY_REFUSALS: tuple[str, ...] = (
    BLOCKED_VALUE,
    SHARED_DEVICE,
    LINKED_TO_ANOTHER,
    IDENTIFIER_LIMIT,
    RESERVED_ID,
)

# Link sources.
LEARNED = "learned"
CRM = "crm"

DAY = 86400.0

#: Identifier type -> values per customer (Segment's defaults are of this order).
DEFAULT_IDENTITY_LIMITS: Mapping[str, int] = {
    "msisdn": 3,
    "email": 5,
    "loyalty_id": 3,
    "card_token": 10,
    "device_id": 10,
}
#: Values that systems send when they know nothing; they never identify anybody.
DEFAULT_BLOCKED_IDENTIFIERS: tuple[str, ...] = (
    "unknown",
    "0",
    "null",
    "none",
    "undefined",
    "n/a",
    "anonymous",
    "test",
    "test@test.com",
    "test@example.com",
    "noreply@example.com",
    "00000000-0000-0000-0000-000000000000",
    "+10000000000",
)


@dataclass(slots=True, frozen=True)
class IdentityPolicy:
    """The identity guardrails, copied once from the settings so the steps stay pure."""

    #: An unresolved event waits this long for a link, then goes to the anonymous profile.
    park_seconds: float = 600.0
    #: At most this many parked events (and :attr:`park_max_bytes`) per identifier;
    #: one more creates the anonymous profile at once.
    park_max_events: int = 100
    park_max_bytes: int = 128 * 1024
    #: Identifier type -> at most this many values per customer.
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_IDENTITY_LIMITS))
    #: Junk values (lower-case) that never identify anybody.
    blocked: frozenset[str] = frozenset(DEFAULT_BLOCKED_IDENTIFIERS)
    #: A device seen for more than this many customers within the window is shared.
    shared_device_customers: int = 3
    shared_device_window: float = 30 * DAY

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityPolicy:
        return cls(
            park_seconds=settings.identity_park_seconds,
            park_max_events=settings.identity_park_max_events,
            # A parked event is at most max_event_bytes; a record stays well within the
            # state limit (it is a changelog record like a customer's).
            park_max_bytes=max(settings.max_event_bytes, settings.max_state_bytes // 2),
            limits=dict(settings.identity_limits),
            blocked=frozenset(v.strip().lower() for v in settings.identity_blocked_values),
            shared_device_customers=settings.identity_shared_device_customers,
            shared_device_window=settings.identity_shared_device_days * DAY,
        )

    def is_blocked(self, value: str) -> bool:
        return value.strip().lower() in self.blocked


def split_key(key: str) -> tuple[str, str]:
    """``"msisdn:+4477..."`` -> ``("msisdn", "+4477...")`` (a value may hold ``:``)."""
    identifier_type, _, value = key.partition(":")
    return identifier_type, value


def anonymous_id(key: str) -> str:
    return ANONYMOUS_PREFIX + key


def is_anonymous(customer_id: str) -> bool:
    return customer_id.startswith(ANONYMOUS_PREFIX)


@dataclass(slots=True)
class IdentityRecord:
    """What the pipeline knows of one identifier; the value of the ``identities`` table."""

    #: The known customer it resolves to (None: none, or a shared device).
    customer_id: str | None = None
    #: Who made the link: "learned" (an event with both) or "crm" (identity.linked).
    source: str | None = None
    linked_at: float | None = None
    #: Its anonymous profile ``anon:<key>`` exists (events went there).
    anonymous: bool = False
    #: A device seen for too many customers: never links or merges.
    shared: bool = False
    #: Events waiting for a link: [produced_at, event] in arrival order.
    parked: list[list[Any]] = field(default_factory=list)
    parked_bytes: int = 0
    #: When the oldest parked event stops waiting.
    park_until: float | None = None
    #: Devices: customer id -> when last seen with this device (the shared-device window).
    seen: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes) -> IdentityRecord:
        return cls(**orjson.loads(data))


class Forward(NamedTuple):
    """A record for the customer-events topic: to a customer, or to an identifier
    (``kind`` set: a link or unlink command)."""

    key: str
    value: dict[str, Any]
    produced_at: float
    kind: str | None = None


@dataclass(slots=True)
class IdentityOutputs:
    forwards: list[Forward] = field(default_factory=list)
    #: identity.log records.
    log: list[dict[str, Any]] = field(default_factory=list)
    #: The identifier's read-model key, as the record ends (set or deleted).
    writes: list[ReadModelWrite] = field(default_factory=list)
    changed: bool = False
    #: The record is gone (an erasure): a tombstone, not a write.
    deleted: bool = False
    parked: int = 0
    #: Events forwarded to a customer / to the anonymous profile.
    resolved: int = 0
    to_anonymous: int = 0


class IdentityMessage(NamedTuple):
    kind: str
    #: The identified event, or the link command; None for a tick.
    value: dict[str, Any] | None
    produced_at: float
    #: Bytes of the value (parking is bounded in bytes).
    size: int = 0


def link_command(
    customer_id: str, source: str, event_id: str, at: float, channel: str, *, force: bool = False
) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "source": source,
        "event_id": event_id,
        "at": at,
        "channel": channel,
        "force": force,
    }


def unlink_command(
    customer_id: str, event_id: str, at: float, *, erase: bool = False
) -> dict[str, Any]:
    return {"customer_id": customer_id, "event_id": event_id, "at": at, "erase": erase}


def log_record(
    record_type: str,
    customer_id: str | None,
    key: str | None,
    source_event_id: str,
    at: float,
    *,
    merged_from: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """An ``identity.log`` record; its id is the same for the same input (replays)."""
    identifier = None
    if key is not None:
        identifier_type, value = split_key(key)
        identifier = {"type": identifier_type, "value": value}
    return {
        "record_id": _hex_id(
            "identity",
            record_type,
            key or "",
            merged_from or "",
            customer_id or "",
            source_event_id,
        ),
        "type": record_type,
        "customer_id": customer_id,
        "identifier": identifier,
        "merged_from": merged_from,
        "reason": reason,
        "source_event_id": source_event_id,
        "at": format_time(at),
    }


def merge_request(
    source_id: str, into: str, link_event_id: str, at: float, channel: str
) -> Forward:
    """``identity.merge_requested`` for ``source_id`` (anonymous profile or customer):
    send your profile to ``into``. Its id derives from the link's: replays repeat it."""
    return Forward(
        source_id,
        {
            "event_id": f"{link_event_id}/merge/{source_id}"[:512],
            "type": MERGE_REQUESTED,
            "channel": channel,
            "customer_id": source_id,
            "occurred_at": format_time(at),
            "payload": {"into": into},
        },
        at,
    )


def identity_step(
    key: str,
    record: IdentityRecord | None,
    messages: Sequence[IdentityMessage],
    policy: IdentityPolicy,
    now: float,
) -> tuple[IdentityRecord | None, IdentityOutputs]:
    """Apply one identifier's messages in order; the record after them (None: deleted)."""
    out = IdentityOutputs()
    current = IdentityRecord() if record is None else record
    for message in messages:
        if message.kind == IDENTIFY:
            assert message.value is not None
            _identify(key, current, message, policy, now, out)
        elif message.kind == LINK:
            assert message.value is not None
            _link(key, current, message.value, policy, out)
        elif message.kind == UNLINK:
            assert message.value is not None
            if _unlink(key, current, message.value, out):
                current = IdentityRecord()
        elif message.kind == TICK:
            _expire_parking(key, current, now, out)
    final = None if out.deleted and current == IdentityRecord() else current
    if final is not None:
        out.deleted = False  # something came after the erasure: a new record
    # The identifier's read-model key as the record now says (whole value, idempotent:
    # a replay after a crash writes the same).
    view = None if final is None else identifier_view(key, final)
    out.writes = [view or ReadModelWrite(identifier_key(*split_key(key)), None)]
    return final, out


def _resolved_event(key: str, event: dict[str, Any], customer_id: str) -> dict[str, Any]:
    """The event as its customer's: her id, and only the identifier it was resolved by.

    The other identifiers are dropped on purpose: a link is learned only from an event
    whose channel named the customer itself. Otherwise anyone who knows her phone
    number could send ``{msisdn: hers, device_id: theirs}`` and link their device to
    her (and later merge their browsing into her profile).
    """
    identifier_type, value = split_key(key)
    return {**event, "customer_id": customer_id, "identifiers": {identifier_type: value}}


def _identify(
    key: str,
    record: IdentityRecord,
    message: IdentityMessage,
    policy: IdentityPolicy,
    now: float,
    out: IdentityOutputs,
) -> None:
    event = message.value
    assert event is not None
    if record.customer_id is not None and not record.shared:
        out.forwards.append(
            Forward(
                record.customer_id,
                _resolved_event(key, event, record.customer_id),
                message.produced_at,
            )
        )
        out.resolved += 1
        return
    if record.anonymous or record.shared:
        _to_anonymous(key, record, event, message.produced_at, out)
        return
    out.changed = True
    out.parked += 1
    record.parked.append([message.produced_at, event])
    record.parked_bytes += message.size
    if record.park_until is None:
        record.park_until = now + policy.park_seconds
    if len(record.parked) > policy.park_max_events or record.parked_bytes > policy.park_max_bytes:
        # Full: the events go on as the anonymous profile's now rather than wait.
        _release_to_anonymous(key, record, out)


def _to_anonymous(
    key: str,
    record: IdentityRecord,
    event: dict[str, Any],
    produced_at: float,
    out: IdentityOutputs,
) -> None:
    if not record.anonymous:
        record.anonymous = True
        out.changed = True
    out.forwards.append(
        Forward(anonymous_id(key), _resolved_event(key, event, anonymous_id(key)), produced_at)
    )
    out.to_anonymous += 1


def _release_to_anonymous(key: str, record: IdentityRecord, out: IdentityOutputs) -> None:
    parked, record.parked, record.parked_bytes, record.park_until = record.parked, [], 0, None
    out.changed = True
    for produced_at, event in parked:
        _to_anonymous(key, record, event, produced_at, out)


def _expire_parking(key: str, record: IdentityRecord, now: float, out: IdentityOutputs) -> None:
    if record.park_until is not None and record.park_until <= now and record.parked:
        _release_to_anonymous(key, record, out)


def _identifier_write(
    key: str, customer_id: str, source: str | None, linked_at: float | None, *, anonymous: bool
) -> ReadModelWrite:
    identifier_type, value = split_key(key)
    return ReadModelWrite(
        identifier_key(identifier_type, value),
        orjson.dumps(
            {
                "customer_id": customer_id,
                "anonymous": anonymous,
                "source": source,
                "linked_at": None if linked_at is None else format_time(linked_at),
            }
        ),
    )


def identifier_view(key: str, record: IdentityRecord) -> ReadModelWrite | None:
    """What the read model holds for an identifier's record (None: no key): its
    customer, else its anonymous profile. ``omni redis rebuild`` and the chaos oracle
    derive the keys from records with it; the step writes the same values as it goes."""
    if record.customer_id is not None and not record.shared:
        return _identifier_write(
            key, record.customer_id, record.source, record.linked_at, anonymous=False
        )
    if record.anonymous:
        return _identifier_write(key, anonymous_id(key), None, None, anonymous=True)
    return None


def _note_device(
    key: str, record: IdentityRecord, customer_id: str, at: float, policy: IdentityPolicy
) -> None:
    """Count the customers a device is seen for; too many in the window: shared."""
    if not key.startswith("device_id:"):
        return
    horizon = at - policy.shared_device_window
    seen = {c: t for c, t in record.seen.items() if t > horizon}
    seen[customer_id] = max(at, seen.get(customer_id, at))
    # Bounded: only whether there are more than K matters.
    if len(seen) > policy.shared_device_customers + 1:
        oldest = sorted(seen, key=lambda c: (seen[c], c))[
            : len(seen) - policy.shared_device_customers - 1
        ]
        for customer in oldest:
            del seen[customer]
    record.seen = seen
    if len(seen) > policy.shared_device_customers:
        record.shared = True


def _link(
    key: str,
    record: IdentityRecord,
    command: dict[str, Any],
    policy: IdentityPolicy,
    out: IdentityOutputs,
) -> None:
    customer_id: str = command["customer_id"]
    event_id: str = command["event_id"]
    at: float = command["at"]
    force: bool = command.get("force", False)
    source: str = command.get("source", LEARNED)

    def refuse(reason: str) -> None:
        out.log.append(log_record(REFUSED, customer_id, key, event_id, at, reason=reason))

    if policy.is_blocked(split_key(key)[1]):
        refuse(BLOCKED_VALUE)
        return
    if is_anonymous(customer_id):
        refuse(RESERVED_ID)
        return
    was_shared = record.shared
    _note_device(key, record, customer_id, at, policy)
    out.changed = True
    if record.shared:
        if not was_shared and record.customer_id is not None:
            # It just became shared: nobody owns it any more.
            record.customer_id = record.source = record.linked_at = None
        refuse(SHARED_DEVICE)
        return
    if record.customer_id == customer_id:
        return  # known already
    if record.customer_id is not None and not force:
        refuse(LINKED_TO_ANOTHER)
        return
    record.customer_id, record.source, record.linked_at = customer_id, source, at
    out.log.append(log_record(LINKED, customer_id, key, event_id, at))
    parked, record.parked, record.parked_bytes, record.park_until = record.parked, [], 0, None
    for produced_at, event in parked:
        out.forwards.append(
            Forward(customer_id, _resolved_event(key, event, customer_id), produced_at)
        )
        out.resolved += 1
    if record.anonymous:
        record.anonymous = False
        out.forwards.append(
            merge_request(
                anonymous_id(key), customer_id, event_id, at, command.get("channel", "crm")
            )
        )
        out.log.append(
            log_record(MERGED, customer_id, key, event_id, at, merged_from=anonymous_id(key))
        )


def _unlink(
    key: str, record: IdentityRecord, command: dict[str, Any], out: IdentityOutputs
) -> bool:
    """Undo the link; True when the record is to be forgotten altogether (an erasure)."""
    customer_id: str = command["customer_id"]
    erase = bool(command.get("erase"))
    if erase and customer_id in record.seen:
        del record.seen[customer_id]  # a shared device forgets it saw her
        out.changed = True
    if record.customer_id != customer_id:
        return False  # linked to someone else (or nobody) since: not hers to undo
    record.customer_id = record.source = record.linked_at = None
    out.changed = True
    out.log.append(log_record(UNLINKED, customer_id, key, command["event_id"], command["at"]))
    if erase:
        # Her parked events (none, while linked) and the devices' customer counts go too.
        out.deleted = True
        return True
    return False


def next_park_due(record: IdentityRecord | None) -> float | None:
    return None if record is None or not record.parked else record.park_until
