"""Authorised grants: an event that would grant something is checked before anything acts on it.

Two event types grant: ``offer.accepted`` of an overdraft with a limit (an
entitlement ATMs honour, S1) and ``coupon.issued`` (a coupon any till redeems, S7).
Any channel can publish an event, so the event alone is not authority: an overdraft
is granted only when accepted on a channel where customers accept offers
(``Policy.entitlement_channels``), in a currency with a largest limit
(``Policy.overdraft_max_limit``) and within it, and, when it names a ``trigger_id``,
for an offer we sent this customer. A coupon only from the channels that issue
coupons (the contract's, :data:`schemas.registry.EVENT_TYPES`: ingest dead-letters
the others already; this holds for events forwarded before that check too).

A refused event still happened (it is on the timeline), but nothing is granted, no
rule acts on it, it is no response to an offer, and every match of it is logged as
suppressed with ``unauthorized`` and the rule that refused it.
"""

from __future__ import annotations

from processors.domain.model import CustomerState, Event
from processors.domain.policy import Policy
from processors.domain.reasons import (
    CHANNEL_NOT_ALLOWED,
    LIMIT_TOO_HIGH,
    TRIGGER_NOT_OURS,
    UNKNOWN_CURRENCY,
)
from schemas.registry import EVENT_TYPES

#: Channels that may issue coupons: the contract's (README event table).
COUPON_CHANNELS: frozenset[str] = frozenset(EVENT_TYPES["coupon.issued"].channels or ())


def grants_overdraft(event: Event) -> bool:
    """An acceptance of an overdraft with a limit: what creates an entitlement (and its rule)."""
    payload = event.payload
    return (
        event.type == "offer.accepted"
        and payload.get("offer_type") == "overdraft"
        and payload.get("limit") is not None
    )


def grant_refusal(state: CustomerState, event: Event, policy: Policy) -> str | None:
    """The rule that refuses what ``event`` would grant, or None (authorised, or no grant).

    ``state`` is the customer *before* the event (its offers still hold the one
    the event may answer).
    """
    if event.type == "coupon.issued":
        return None if event.channel in COUPON_CHANNELS else CHANNEL_NOT_ALLOWED
    if not grants_overdraft(event):
        return None
    if event.channel not in policy.entitlement_channels:
        return CHANNEL_NOT_ALLOWED
    payload = event.payload
    trigger_id = payload.get("trigger_id")
    if trigger_id is not None:
        offer = state.offers.get(trigger_id)
        # A held-out (control group) offer was never sent: accepting it cannot be ours.
        if offer is None or offer.get("control"):
            return TRIGGER_NOT_OURS
    max_limit = policy.overdraft_max_limit.get(payload.get("currency") or "")
    if max_limit is None:
        return UNKNOWN_CURRENCY
    if payload["limit"] > max_limit:
        return LIMIT_TOO_HIGH
    return None
