"""What the rules and triggers see of an event and a customer: plain dicts, read only."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from processors.domain.fold import lead_score
from processors.domain.model import CustomerState, Event, format_time

if TYPE_CHECKING:
    from processors.domain.step import StepContext


def event_context(event: Event, ctx: StepContext) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "type": event.type,
        "channel": event.channel,
        "customer_id": event.customer_id,
        "occurred_at": event.occurred_at,
        "payload": event.payload,
        "points": float(ctx.lead_points.get(event.type, 0.0)),
    }


def state_context(
    state: CustomerState,
    timeline: list[dict[str, Any]] | None,
    ctx: StepContext,
    at: float,
    fields: Collection[str] | None = None,
) -> dict[str, Any]:
    """The customer as rules see it (before the current event at ``at``).

    ``fields`` (``RuleSet.state_fields``): the only fields the rules read; the
    derived ones (lead score, preferred channel) are then computed only if read.
    """
    window = ctx.lead_window
    view: dict[str, Any] = {
        "cart": state.cart,
        "coupons": state.coupons,
        "appointments": state.appointments,
        "lead_threshold": ctx.lead_threshold,
        "customer_id": state.customer_id,
        "traits": state.traits,
        "products": state.products,
        "last_country": state.last_country,
        "entitlements": state.entitlements,
        "airport_withdrawals": state.airport_withdrawals,
        "timeline": timeline or [],
    }
    if fields is None or "lead_score" in fields:
        view["lead_score"] = lead_score(state, at, window)
    if fields is None or "lead_interactions" in fields:
        view["lead_interactions"] = [entry[1] for entry in state.lead if entry[0] > at - window]
    if fields is None or "preferred_channel" in fields:
        view["preferred_channel"] = preferred_channel(state)
    return view


def preferred_channel(state: CustomerState) -> str | None:
    """The profile's ``preferred_channel``, else the channel she responds on most."""
    explicit = state.traits.get("preferred_channel")
    if explicit:
        return str(explicit)
    if not state.response_channels:
        return None
    return max(sorted(state.response_channels), key=state.response_channels.__getitem__)


def entitlements_view(state: CustomerState, at: float) -> list[dict[str, Any]]:
    """The entitlements still valid at ``at``, by kind, times as on the wire (RFC 3339)."""
    return [
        {"kind": kind, **grant, "expires_at": format_time(grant["expires_at"])}
        for kind, grant in sorted(state.entitlements.items())
        if grant["expires_at"] > at
    ]


#: What a rule's ``trigger.include`` may add to its payload (rule_file.schema.json lists
#: the same names): name -> the view of the customer at the event's time.
PAYLOAD_VIEWS: dict[str, Callable[[CustomerState, float], Any]] = {
    "entitlements": entitlements_view,
}
