"""Folding an event into the customer's state: the facts it carries, nothing decided.

Every function here changes ``state`` in place and reads only the event, the
state and the policy, so a replay of the same events folds to the same state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from processors.domain.ids import event_fingerprint
from processors.domain.model import CustomerState, Event, StepOutputs, parse_time
from processors.domain.policy import DAY, Policy
from processors.domain.read_model import COUPON_KEEP_SECONDS
from schemas.bounds import EARLIEST_TIME, MAX_DATE_AHEAD_SECONDS

if TYPE_CHECKING:
    from processors.domain.step import StepContext

AIRPORT_WINDOW = 30 * DAY


def remember(
    state: CustomerState, event_id: str, today: int, policy: Policy, out: StepOutputs
) -> bool:
    """Add the event id to the dedup ring; False when it was already there."""
    fingerprint = event_fingerprint(event_id)
    if fingerprint in state.seen_ids:
        return False
    state.seen_ids.append(fingerprint)
    state.seen_days.append(today)
    if len(state.seen_ids) > policy.dedup_capacity:
        state.seen_ids.pop(0)
        evicted_day = state.seen_days.pop(0)
        if today - evicted_day < policy.dedup_days:
            out.dedup_early_evictions += 1
    return True


def overdraft_grant(event: Event, policy: Policy) -> dict[str, Any] | None:
    """The entitlement an ``offer.accepted`` for an overdraft grants, or None."""
    payload = event.payload
    if payload.get("offer_type") != "overdraft":
        return None
    valid_hours = payload.get("valid_hours", policy.overdraft_default_valid_hours)
    return {
        "limit": payload.get("limit"),
        "currency": payload.get("currency"),
        "offer_id": payload["offer_id"],
        "expires_at": event.occurred_at + valid_hours * 3600.0,
    }


def apply_event(
    state: CustomerState, event: Event, policy: Policy, authorised: bool = True
) -> None:
    """Fold the facts an event carries into the customer's state.

    ``authorised``: False when what the event would grant was refused
    (:func:`processors.domain.grants.grant_refusal`): it grants no entitlement and
    no coupon, but is still an interaction (last seen, updated at).
    """
    payload = event.payload
    kind = event.type
    if kind == "profile.updated":
        _apply_profile(state, payload)
    elif kind == "consent.updated":
        key = f"{payload['channel']}:{payload['purpose']}"
        current = state.consents.get(key)
        # The newest statement by event time wins, whatever order they arrive in.
        if current is None or event.occurred_at >= current["at"]:
            state.consents[key] = {"granted": payload["granted"], "at": event.occurred_at}
    elif kind == "telco.network_attached":
        state.last_country = payload["country"]
    elif kind == "offer.accepted":
        grant = overdraft_grant(event, policy) if authorised else None
        if grant is not None and grant["limit"] is not None:
            state.entitlements["overdraft"] = grant
    elif kind == "atm.withdrawal":
        _note_airport_withdrawal(state, event)
    elif kind in ("cart.updated", "order.placed"):
        _apply_cart(state, event)
    elif kind in ("coupon.issued", "coupon.redeemed") and authorised:
        _apply_coupon(state, event)
    elif kind in ("appointment.booked", "kiosk.checked_in", "diagnosis.ready"):
        _apply_appointment(state, event)
    previous = state.last_seen.get(event.channel)
    if previous is None or event.occurred_at > previous:
        state.last_seen[event.channel] = event.occurred_at
    state.updated_at = max(state.updated_at or 0.0, event.occurred_at)


def lead_score(state: CustomerState, at: float, window: float) -> float:
    """Points of the interactions within ``window`` before ``at`` (S10)."""
    return float(sum(entry[2] for entry in state.lead if at - window < entry[0] <= at))


#: The furthest stage an event type proves (S10): awareness < engagement < conversion < loyalty.
FUNNEL = ("awareness", "engagement", "conversion", "loyalty")
_ENGAGING = {
    "page.viewed",
    "email.clicked",
    "cart.updated",
    "campaign.requested",
    "branch.visit",
    "appointment.booked",
    "offer.declined",
}
_CONVERTING = {"order.placed", "offer.accepted", "coupon.redeemed"}


def note_journey(state: CustomerState, event: Event, ctx: StepContext) -> None:
    """Lead score and funnel stage: derived from events, kept in the record and profile."""
    points = float(ctx.lead_points.get(event.type, 0.0))
    if points:
        horizon = event.occurred_at - ctx.lead_window
        state.lead = [e for e in state.lead if e[0] > horizon]
        state.lead.append([event.occurred_at, event.type, points])
        state.lead.sort(key=lambda e: e[0])
        # Bounded by caps.MAX_LEAD (the window's newest interactions) after each event.
    stage = "awareness"
    if event.type in _ENGAGING:
        stage = "engagement"
    if event.type in _CONVERTING:
        conversions = state.traits.get("conversions", 0) + 1
        state.traits["conversions"] = conversions
        stage = "loyalty" if conversions >= 3 else "conversion"
    current = state.traits.get("funnel_stage")
    if current not in FUNNEL or FUNNEL.index(stage) > FUNNEL.index(current):
        state.traits["funnel_stage"] = stage


def _apply_cart(state: CustomerState, event: Event) -> None:
    payload = event.payload
    if event.type == "cart.updated":
        if not payload["items"]:
            state.cart = None
            state.cart_closed_at = event.occurred_at
        elif state.cart is None or event.occurred_at >= state.cart["updated_at"]:
            state.cart = {
                "cart_id": payload["cart_id"],
                "items": payload["items"],
                "currency": payload["currency"],
                "updated_at": event.occurred_at,
            }
    elif event.type == "order.placed" and state.cart is not None:
        cart_id = payload.get("cart_id")
        if cart_id is None or cart_id == state.cart["cart_id"]:
            state.cart = None
            state.cart_closed_at = event.occurred_at


def _apply_coupon(state: CustomerState, event: Event) -> None:
    payload = event.payload
    coupon = state.coupons.get(payload["coupon_id"])
    if event.type == "coupon.issued" and coupon is None:
        state.coupons[payload["coupon_id"]] = {
            "value": payload["value"],
            "currency": payload["currency"],
            "expires_at": event.occurred_at + payload["valid_hours"] * 3600.0,
            "status": "issued",
            "issued_channel": event.channel,
            "redeemed_at": None,
            "redeemed_channel": None,
        }
    elif event.type == "coupon.redeemed" and coupon is not None and coupon["status"] == "issued":
        # The first redemption stands; a later one is refused by a rule, never applied.
        coupon.update(
            status="redeemed", redeemed_at=event.occurred_at, redeemed_channel=event.channel
        )


def _apply_appointment(state: CustomerState, event: Event) -> None:
    payload = event.payload
    if event.type == "appointment.booked":
        state.appointments[payload["appointment_id"]] = {
            "department": payload["department"],
            # Within the validator's bounds, also for an event forwarded before them.
            "scheduled_at": min(
                max(parse_time(payload["scheduled_at"]), EARLIEST_TIME),
                event.occurred_at + MAX_DATE_AHEAD_SECONDS,
            ),
            "status": "booked",
        }
    elif event.type == "kiosk.checked_in":
        appointment = state.appointments.get(payload["appointment_id"])
        if appointment is not None:
            appointment["status"] = "checked_in"
    elif event.type == "diagnosis.ready":
        appointment = state.appointments.get(payload["appointment_id"])
        if appointment is not None:
            appointment.update(status="diagnosed", report_id=payload["report_id"])
    # Bounded by caps.MAX_APPOINTMENTS after each event (finished ones go first).


def _note_airport_withdrawal(state: CustomerState, event: Event) -> None:
    payload = event.payload
    home = state.traits.get("home_country")
    if payload["location_type"] != "airport" or payload["country"] == home:
        return
    horizon = event.occurred_at - AIRPORT_WINDOW
    kept = [w for w in state.airport_withdrawals if w["at"] > horizon]
    kept.append(
        {"atm_id": payload["atm_id"], "country": payload["country"], "at": event.occurred_at}
    )
    state.airport_withdrawals = kept  # capped by caps.MAX_AIRPORT_WITHDRAWALS after each event


def _apply_profile(state: CustomerState, payload: dict[str, object]) -> None:
    for name, value in payload.items():
        if name == "products_add":
            state.products.extend(p for p in value if p not in state.products)  # type: ignore[attr-defined]
        elif name == "products_remove":
            state.products = [p for p in state.products if p not in value]  # type: ignore[operator]
        else:
            state.traits[name] = value


def prune_expired(state: CustomerState, now: float) -> bool:
    """Drop entitlements past their expiry; True when something was dropped."""
    expired = [k for k, e in state.entitlements.items() if e["expires_at"] <= now]
    for kind in expired:
        del state.entitlements[kind]
    return bool(expired)


def forget_old_coupons(state: CustomerState, now: float) -> None:
    """A coupon leaves the record when its read-model key does (its keep period ends)."""
    horizon = now - COUPON_KEEP_SECONDS
    if state.coupons and any(c["expires_at"] <= horizon for c in state.coupons.values()):
        state.coupons = {k: c for k, c in state.coupons.items() if c["expires_at"] > horizon}


def forget_expired_offers(state: CustomerState, now: float) -> None:
    """Held-out offers and any offer left unwatched are forgotten a day after expiry."""
    for offer_id, offer in list(state.offers.items()):
        if offer.get("expires_at") is not None and offer["expires_at"] < now - DAY:
            del state.offers[offer_id]
