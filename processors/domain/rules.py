"""The rules of the foundation: S1 (overdraft honoured at the ATM), S5 (roaming on arrival).

A rule looks at the customer's state *before* the event is folded in and at the
event, and proposes a trigger with the suppression reasons it found. It never
changes state; :mod:`processors.domain.step` does that. Rules fire on
transitions: S5 on a change of attached country, S1 on an acceptance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from processors.domain.model import MARKETING, SERVICE, CustomerState, Event, format_time
from processors.domain.policy import (
    CONSENT,
    COOLDOWN,
    EXPIRED,
    MISSING_LIMIT,
    STALE,
    Policy,
    has_marketing_consent,
    in_cooldown,
    is_stale,
)


@dataclass(slots=True, frozen=True)
class Proposal:
    """A trigger a rule wants to send, and why it may not."""

    rule: str
    trigger_type: str
    channel: str
    message_class: str
    reason: str
    payload: dict[str, Any]
    expires_at: float | None
    suppressed_by: tuple[str, ...] = ()
    #: Set in ``cooldowns`` (at event time) when the trigger is emitted.
    cooldown_key: str | None = None


Rule = Callable[[CustomerState, Event, Policy, float], Proposal | None]


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


def overdraft_entitlement(
    state: CustomerState, event: Event, policy: Policy, now: float
) -> Proposal | None:
    """S1: an accepted overdraft is a service message to every ATM, until it expires."""
    if event.type != "offer.accepted":
        return None
    grant = overdraft_grant(event, policy)
    if grant is None:
        return None
    reasons: list[str] = []
    if grant["expires_at"] <= now:
        reasons.append(EXPIRED)
    if grant["limit"] is None:
        reasons.append(MISSING_LIMIT)
    expires = format_time(grant["expires_at"])
    amount = " ".join(str(part) for part in (grant["limit"], grant["currency"]) if part)
    return Proposal(
        rule="overdraft_entitlement",
        trigger_type="overdraft_entitlement",
        channel="atm",
        message_class=SERVICE,
        reason=(
            f"{event.customer_id} accepted overdraft offer {grant['offer_id']} on "
            f"{event.channel}; ATMs must honour a limit of {amount} until {expires}."
        ),
        payload={**grant, "expires_at": expires},
        expires_at=grant["expires_at"],
        suppressed_by=tuple(reasons),
    )


def roaming_offer(
    state: CustomerState, event: Event, policy: Policy, now: float
) -> Proposal | None:
    """S5: a phone attached in a new foreign country gets a roaming package offer by SMS.

    Transition: the attached country differs from the home country and from the
    previously attached one. Without a known home country we cannot tell
    roaming from home, so nothing is proposed.
    """
    if event.type != "telco.network_attached":
        return None
    country = event.payload["country"]
    home = state.traits.get("home_country")
    if home is None or country == home or country == state.last_country:
        return None
    cooldown_key = f"roaming_offer:{country}"
    reasons: list[str] = []
    if not has_marketing_consent(state, "sms", policy):
        reasons.append(CONSENT)
    if in_cooldown(state, cooldown_key, event.occurred_at, policy.roaming_cooldown):
        reasons.append(COOLDOWN)
    if is_stale(event.occurred_at, now, policy):
        reasons.append(STALE)
    return Proposal(
        rule="roaming_offer",
        trigger_type="roaming_offer",
        channel="sms",
        message_class=MARKETING,
        reason=(
            f"{event.customer_id} (home {home}) was just seen on a network in {country}, "
            f"coming from {state.last_country or 'no known country'}: offer a roaming package."
        ),
        payload={"country": country},
        expires_at=event.occurred_at + policy.marketing_trigger_ttl,
        suppressed_by=tuple(reasons),
        cooldown_key=cooldown_key,
    )


#: Evaluated in this order for every event.
RULES: tuple[Rule, ...] = (overdraft_entitlement, roaming_offer)
