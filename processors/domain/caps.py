"""Caps on a customer's record: every collection is bounded, and so is the encoded record.

A record is one changelog message; one over the broker's message limit stops the
customer step, and 4,000 coupons made a 1.16 MB record. So after every ``step``
and every timer firing that changed a record, :func:`enforce_caps`:

1. trims each collection to its cap (:data:`COUNT_CAPS`): closed or expired items go
   first (redeemed or expired coupons, expired offers, past or finished
   appointments), then the oldest;
2. trims further, in :data:`TRIM_ORDER`, while ``orjson.dumps(state)`` is larger
   than ``Policy.max_state_bytes`` (``OMNI_MAX_STATE_BYTES``): closed items, then
   history, then open items, then the dedup ring, timers last; oldest first within
   each (timers: the one due last first).

Every dropped item is counted by collection in ``StepOutputs.state_items_dropped``
(``omni_state_items_dropped_total{collection}``). The record's normal life is not
a drop: entitlements past expiry, offers a day past expiry, contact history past
its window, the dedup ring's rotation, timers refused when 64 are pending
(``timers_refused``).

The stored record (:mod:`processors.domain.record_codec`) is this JSON and the
timeline, compressed: checked against the same limit where it is written, it
falls back to the state JSON alone (and the timeline in its old table) when over,
so the caps measure the JSON and behave as before.

The rest of the record is bounded by the contract, so the byte cap can always be
met (``Settings.max_state_bytes`` is at least 64 KiB): traits (a closed set of
profile fields, lists of at most 20 items), consents (4 channels x 2 purposes),
``last_seen`` (13 channels), one entitlement kind, ``response_channels`` (3), one
cart (at most 100 lines), ``contact.sent`` (at most 2 x weekly cap + daily cap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from processors.domain.model import CustomerState

#: Items per collection; a count cap far above what a customer needs, and small
#: enough that all of them together fit the default 256 KiB with room to spare.
MAX_COUPONS = 256
MAX_OFFERS = 64
MAX_APPOINTMENTS = 20
MAX_COOLDOWNS = 256
MAX_PRODUCTS = 200
MAX_LEAD = 200
MAX_AIRPORT_WITHDRAWALS = 16
#: Offer types with decline/ignore history, and paused offer types.
MAX_CONTACT_OFFER_TYPES = 32

#: The minimum ``max_state_bytes`` that can always be met (see the module docstring).
MIN_STATE_BYTES = 64 * 1024

Dropped = dict[str, int]


# --- drop orders: closed before open, then oldest first -------------------------------------


def _coupon_open(coupon: dict[str, Any], now: float) -> bool:
    return bool(coupon.get("status") == "issued" and _num(coupon.get("expires_at")) > now)


def _coupon_order(state: CustomerState, now: float) -> list[str]:
    coupons = state.coupons
    # sorted() is stable: within closed and within open, insertion (issue) order.
    return sorted(coupons, key=lambda k: _coupon_open(coupons[k], now))


def _offer_open(offer: dict[str, Any], now: float) -> bool:
    expires = offer.get("expires_at")
    return expires is None or _num(expires) > now


def _offer_order(state: CustomerState, now: float) -> list[str]:
    offers = state.offers
    return sorted(offers, key=lambda k: _offer_open(offers[k], now))


def _appointment_open(appointment: dict[str, Any], now: float) -> bool:
    return bool(
        appointment.get("status") == "booked" and _num(appointment.get("scheduled_at")) > now
    )


def _appointment_order(state: CustomerState, now: float) -> list[str]:
    appointments = state.appointments
    return sorted(
        appointments,
        key=lambda k: (
            _appointment_open(appointments[k], now),
            _num(appointments[k].get("scheduled_at")),
        ),
    )


def _cooldown_order(state: CustomerState, now: float) -> list[str]:
    return sorted(state.cooldowns, key=lambda k: _num(state.cooldowns[k]))


def _responses(state: CustomerState) -> dict[str, list[list[Any]]]:
    responses = state.contact.get("responses") if state.contact else None
    return responses if isinstance(responses, dict) else {}


def _paused(state: CustomerState) -> dict[str, float]:
    paused = state.contact.get("paused_until") if state.contact else None
    return paused if isinstance(paused, dict) else {}


def _response_order(state: CustomerState, now: float) -> list[str]:
    responses = _responses(state)
    return sorted(responses, key=lambda k: max((_num(e[0]) for e in responses[k]), default=0.0))


def _paused_order(state: CustomerState, now: float) -> list[str]:
    paused = _paused(state)
    return sorted(paused, key=lambda k: _num(paused[k]))


def _num(value: Any) -> float:
    """A stored time as a float; anything else (None, garbage) sorts first."""
    return float(value) if isinstance(value, int | float) else float("-inf")


# --- count caps ------------------------------------------------------------------------------


def _cap_dict(
    container: dict[str, Any], order: list[str], cap: int, name: str, dropped: Dropped
) -> None:
    excess = len(container) - cap
    if excess <= 0:
        return
    for key in order[:excess]:
        del container[key]
    dropped[name] = dropped.get(name, 0) + excess


def _cap_list(container: list[Any], cap: int, name: str, dropped: Dropped) -> None:
    """Oldest first: the lists are kept in time (or insertion) order."""
    excess = len(container) - cap
    if excess > 0:
        del container[:excess]
        dropped[name] = dropped.get(name, 0) + excess


def apply_count_caps(state: CustomerState, now: float, dropped: Dropped) -> None:
    """Trim every capped collection to its cap (see the module docstring)."""
    if len(state.coupons) > MAX_COUPONS:
        _cap_dict(state.coupons, _coupon_order(state, now), MAX_COUPONS, "coupons", dropped)
    if len(state.offers) > MAX_OFFERS:
        _cap_dict(state.offers, _offer_order(state, now), MAX_OFFERS, "offers", dropped)
    if len(state.appointments) > MAX_APPOINTMENTS:
        order = _appointment_order(state, now)
        _cap_dict(state.appointments, order, MAX_APPOINTMENTS, "appointments", dropped)
    if len(state.cooldowns) > MAX_COOLDOWNS:
        order = _cooldown_order(state, now)
        _cap_dict(state.cooldowns, order, MAX_COOLDOWNS, "cooldowns", dropped)
    _cap_list(state.products, MAX_PRODUCTS, "products", dropped)
    if len(state.lead) > MAX_LEAD:
        state.lead.sort(key=lambda entry: _num(entry[0]))
        _cap_list(state.lead, MAX_LEAD, "lead", dropped)
    _cap_list(state.airport_withdrawals, MAX_AIRPORT_WITHDRAWALS, "airport_withdrawals", dropped)
    responses = _responses(state)
    if len(responses) > MAX_CONTACT_OFFER_TYPES:
        order = _response_order(state, now)
        _cap_dict(responses, order, MAX_CONTACT_OFFER_TYPES, "contact_responses", dropped)
    paused = _paused(state)
    if len(paused) > MAX_CONTACT_OFFER_TYPES:
        order = _paused_order(state, now)
        _cap_dict(paused, order, MAX_CONTACT_OFFER_TYPES, "contact_paused", dropped)


# --- the byte cap ----------------------------------------------------------------------------

#: A source of droppable items: (collection label, container getter, drop order).
DictSource = tuple[
    str,
    Callable[[CustomerState], dict[str, Any]],
    Callable[[CustomerState, float], list[str]],
]

#: What goes first when the record is too large: closed items, history, open items,
#: the dedup ring, timers. (Lists are handled by :func:`_list_sources`.)
TRIM_ORDER: tuple[str, ...] = (
    "coupons:closed",
    "offers:closed",
    "appointments:closed",
    "lead",
    "airport_withdrawals",
    "cooldowns",
    "contact_responses",
    "coupons",
    "offers",
    "appointments",
    "products",
    "contact_paused",
    "seen_ids",
    "timers",
)


def _dict_source(name: str, state: CustomerState, now: float) -> tuple[dict[str, Any], list[str]]:
    if name == "coupons:closed":
        return state.coupons, [k for k, c in state.coupons.items() if not _coupon_open(c, now)]
    if name == "coupons":
        return state.coupons, list(state.coupons)  # closed ones are gone already
    if name == "offers:closed":
        return state.offers, [k for k, o in state.offers.items() if not _offer_open(o, now)]
    if name == "offers":
        return state.offers, list(state.offers)
    if name == "appointments:closed":
        order = _appointment_order(state, now)
        return state.appointments, [
            k for k in order if not _appointment_open(state.appointments[k], now)
        ]
    if name == "appointments":
        return state.appointments, _appointment_order(state, now)
    if name == "cooldowns":
        return state.cooldowns, _cooldown_order(state, now)
    if name == "contact_responses":
        return _responses(state), _response_order(state, now)
    if name == "contact_paused":
        return _paused(state), _paused_order(state, now)
    raise KeyError(name)


def _entry_bytes(key: str, value: Any) -> int:
    """Bytes a dict entry takes in the encoding: ``"key":value,``."""
    return len(orjson.dumps(key)) + len(orjson.dumps(value)) + 2


def _trim_source(name: str, state: CustomerState, now: float, excess: int, dropped: Dropped) -> int:
    """Drop items of one source until about ``excess`` bytes are gone; returns the bytes."""
    label = name.split(":", 1)[0]
    freed = 0
    count = 0
    if name == "seen_ids":
        # The dedup ring: two parallel lists (id, day), oldest first.
        while count < len(state.seen_ids) and freed < excess:
            freed += len(str(state.seen_ids[count])) + len(str(state.seen_days[count])) + 2
            count += 1
        del state.seen_ids[:count]
        del state.seen_days[:count]
    elif name in ("lead", "airport_withdrawals", "products", "timers"):
        items: list[Any] = getattr(state, name)
        # Timers are sorted by due time: the one due last is the least urgent.
        indexes: Iterator[int] = (
            iter(range(len(items) - 1, -1, -1)) if name == "timers" else iter(range(len(items)))
        )
        gone: set[int] = set()
        for index in indexes:
            if freed >= excess:
                break
            freed += len(orjson.dumps(items[index])) + 1
            gone.add(index)
        count = len(gone)
        if gone:
            items[:] = [item for i, item in enumerate(items) if i not in gone]
    else:
        container, order = _dict_source(name, state, now)
        for key in order:
            if freed >= excess:
                break
            freed += _entry_bytes(key, container[key])
            del container[key]
            count += 1
    if count:
        dropped[label] = dropped.get(label, 0) + count
    return freed


def enforce_caps(state: CustomerState, now: float, max_bytes: int, dropped: Dropped) -> bytes:
    """Apply the count caps, then trim until the encoding fits ``max_bytes``.

    Returns ``orjson.dumps(state)`` of the result (store it; do not encode again).
    Drops are added to ``dropped`` (collection -> items).
    """
    apply_count_caps(state, now, dropped)
    encoded = orjson.dumps(state)
    if len(encoded) <= max_bytes:
        return encoded
    for name in TRIM_ORDER:
        # Estimates are per item and near exact; re-measure, and go on with the same
        # source while it still has items, before touching the next one.
        while len(encoded) > max_bytes:
            if not _trim_source(name, state, now, len(encoded) - max_bytes, dropped):
                break
            encoded = orjson.dumps(state)
    return encoded
