"""The Redis read model as whole values derived from a customer's state.

Whole values make every write idempotent: writing the same state twice, or
replaying events, converges to the same keys. Channels (ATM, branch, till)
read these keys; they are never the source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from processors.domain.model import CustomerState, format_time

# The key scheme is the contract's (channels build the same keys): ids are
# percent-encoded there, so no id reaches another record's key.
from producers.keys import (
    cart_key,
    coupon_key,
    coupons_key,
    entitlement_key,
    offers_key,
    profile_key,
    stats_key,
    timeline_key,
)

__all__ = [
    "CART_DELETE_SECONDS",
    "COUPON_KEEP_SECONDS",
    "ReadModelWrite",
    "cart_key",
    "coupon_key",
    "coupons_key",
    "entitlement_key",
    "offers_key",
    "open_offers",
    "profile_key",
    "project",
    "stats_key",
    "stats_table_key",
    "stats_write",
    "timeline_key",
    "timeline_write",
]


#: After a cart is closed its key is deleted on every projection for this long (replays
#: converge), then left alone.
CART_DELETE_SECONDS = 86400.0

#: Coupon records stay readable this long after the coupon expired.
COUPON_KEEP_SECONDS = 30 * 86400.0


@dataclass(slots=True, frozen=True)
class ReadModelWrite:
    key: str
    #: The whole value; None deletes the key (an emptied cart).
    value: bytes | None
    #: Epoch seconds at which Redis should drop the key (None = keep).
    expire_at: float | None = None
    #: Set: the value goes to this field of a hash at ``key`` (HSET) instead.
    field: str | None = None


def stats_table_key(rule: str, channel: str) -> bytes:
    """The stats table's key of one rule's counters on one channel (one record per partition)."""
    return f"{rule}|{channel}".encode()


def stats_write(table_key: bytes, totals: bytes, partition: int) -> ReadModelWrite:
    """A partition's counters (a stats table record) as a field of the rule's hash."""
    rule, _, channel = table_key.decode().rpartition("|")
    return ReadModelWrite(stats_key(rule), totals, field=f"{channel}|p{partition}")


def project(state: CustomerState, now: float) -> list[ReadModelWrite]:
    """Every read-model key for this customer, as it should be now.

    Never raises on a stored time: times are formatted within
    1970-01-01 .. 9999-12-31T23:59:59.999Z (``format_time`` clamps), and a key whose
    absolute expiry is already past is *skipped*, not written with a past PXAT
    (Redis refuses a PXAT <= 0 and drops a key at its PXAT itself, so a key past its
    expiry is gone or going either way).
    """
    profile = {
        "customer_id": state.customer_id,
        **state.traits,
        "products": state.products,
        "consents": {key: c["granted"] for key, c in state.consents.items()},
        "last_seen": {channel: format_time(at) for channel, at in state.last_seen.items()},
        "last_country": state.last_country,
        "updated_at": None if state.updated_at is None else format_time(state.updated_at),
    }
    if state.identifiers:
        profile["identifiers"] = state.identifiers
    writes = [ReadModelWrite(profile_key(state.customer_id), orjson.dumps(profile))]
    for kind, entitlement in state.entitlements.items():
        if entitlement["expires_at"] > now:
            writes.append(
                ReadModelWrite(
                    entitlement_key(state.customer_id, kind),
                    orjson.dumps(
                        {**entitlement, "expires_at": format_time(entitlement["expires_at"])}
                    ),
                    expire_at=entitlement["expires_at"],
                )
            )
    cart = state.cart
    if cart is not None:
        value = orjson.dumps({**cart, "updated_at": format_time(cart["updated_at"])})
        writes.append(ReadModelWrite(cart_key(state.customer_id), value))
    elif state.cart_closed_at is not None and now - state.cart_closed_at < CART_DELETE_SECONDS:
        writes.append(ReadModelWrite(cart_key(state.customer_id), None))
    writes.append(
        ReadModelWrite(offers_key(state.customer_id), orjson.dumps(open_offers(state, now)))
    )
    records: list[dict[str, object]] = []
    for coupon_id, coupon in state.coupons.items():
        keep_until = coupon["expires_at"] + COUPON_KEEP_SECONDS
        if keep_until <= now:
            continue  # past its keep period: Redis has dropped (or drops) the key itself
        status = coupon["status"]
        if status == "issued" and coupon["expires_at"] <= now:
            status = "expired"
        record = {
            "coupon_id": coupon_id,
            "customer_id": state.customer_id,
            "status": status,
            "value": coupon["value"],
            "currency": coupon["currency"],
            "expires_at": format_time(coupon["expires_at"]),
            "redeemed_at": None
            if coupon["redeemed_at"] is None
            else format_time(coupon["redeemed_at"]),
            "redeemed_channel": coupon["redeemed_channel"],
        }
        records.append(record)
        writes.append(
            ReadModelWrite(
                coupon_key(coupon_id),
                orjson.dumps(record),
                expire_at=keep_until,
            )
        )
    # Written even when empty, like the offers: a whole value that replaces the last one,
    # so a coupon past its keep period (or an erased one) leaves the list on the next
    # projection, and a replay or a rebuild converges to the same value.
    writes.append(ReadModelWrite(coupons_key(state.customer_id), orjson.dumps(records)))
    return writes


def open_offers(state: CustomerState, now: float) -> dict[str, dict[str, object]]:
    """``omni:offers:<id>``: the marketing offers she was sent and has not answered, still
    open at ``now``: trigger_id -> ``{offer_type, rule, channel, expires_at}`` (RFC 3339, or
    None for an offer without an expiry).

    Held-out offers (``control``: the control group's, never sent) are not hers to see, and
    an offer past its ``expires_at`` is closed (it is answered "ignored"); the value and any
    other field the record keeps stay out.
    """
    shown: dict[str, dict[str, object]] = {}
    for trigger_id, offer in state.offers.items():
        expires_at = offer.get("expires_at")
        if offer.get("control") or (expires_at is not None and expires_at <= now):
            continue
        shown[trigger_id] = {
            "offer_type": offer.get("offer_type"),
            "rule": offer.get("rule"),
            "channel": offer.get("channel"),
            "expires_at": None if expires_at is None else format_time(expires_at),
        }
    return shown


def timeline_write(
    customer_id: str, timeline: list[dict[str, object]], encoded: bytes | None = None
) -> ReadModelWrite:
    """``omni:timeline:<id>``: the recent interactions, newest first (call center, branch).

    ``encoded``: ``orjson.dumps(timeline)`` when the caller has it already (it stored
    the timeline), so it is not encoded twice.
    """
    value = orjson.dumps(timeline) if encoded is None else encoded
    return ReadModelWrite(timeline_key(customer_id), value)
