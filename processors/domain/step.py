"""``step(state, events) -> (state, outputs)``: one customer's batch, as a pure function.

For each event, in order: drop it if it is a duplicate; evaluate the rules
against the state *before* the event; record a decision per matching rule and
emit the trigger when nothing suppressed it; then fold the event into state.
"""

from __future__ import annotations

from collections.abc import Sequence

from processors.domain.ids import decision_id, event_fingerprint, trigger_id
from processors.domain.model import (
    EMITTED,
    SUPPRESSED,
    CustomerState,
    Decision,
    Event,
    StepOutputs,
    Trigger,
)
from processors.domain.policy import DAY, Policy
from processors.domain.rules import RULES, Proposal, Rule, overdraft_grant


def step(
    state: CustomerState | None,
    events: Sequence[Event],
    policy: Policy,
    now: float,
    rules: Sequence[Rule] = RULES,
) -> tuple[CustomerState, StepOutputs]:
    """Fold one customer's events (all with the same ``customer_id``) into state.

    ``now`` is the wall-clock time of processing; it only decides staleness and
    expiry at processing time. Everything else uses the event's ``occurred_at``.
    """
    if state is None:
        state = CustomerState.new(events[0].customer_id)
    out = StepOutputs()
    today = int(now // DAY)
    for event in events:
        if not _remember(state, event.event_id, today, policy, out):
            out.duplicates += 1
            continue
        out.changed = True
        for rule in rules:
            proposal = rule(state, event, policy, now)
            if proposal is not None:
                _decide(state, event, proposal, now, out)
        apply_event(state, event, policy)
    prune_expired(state, now)
    return state, out


def _remember(
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


def _decide(
    state: CustomerState, event: Event, proposal: Proposal, now: float, out: StepOutputs
) -> None:
    emitted = not proposal.suppressed_by
    tid = trigger_id(proposal.rule, event.customer_id, event.event_id)
    out.decisions.append(
        Decision(
            decision_id=decision_id(proposal.rule, event.customer_id, event.event_id),
            customer_id=event.customer_id,
            rule=proposal.rule,
            trigger_type=proposal.trigger_type,
            source_event_id=event.event_id,
            outcome=EMITTED if emitted else SUPPRESSED,
            reasons=proposal.suppressed_by,
            trigger_id=tid if emitted else None,
            decided_at=now,
        )
    )
    if not emitted:
        return
    if proposal.cooldown_key is not None:
        state.cooldowns[proposal.cooldown_key] = event.occurred_at
    out.triggers.append(
        Trigger(
            trigger_id=tid,
            type=proposal.trigger_type,
            customer_id=event.customer_id,
            channel=proposal.channel,
            created_at=now,
            expires_at=proposal.expires_at,
            source_event_id=event.event_id,
            rule=proposal.rule,
            reason=proposal.reason,
            payload=proposal.payload,
            source_produced_at=event.produced_at,
        )
    )


def apply_event(state: CustomerState, event: Event, policy: Policy) -> None:
    """Fold the facts an event carries into the customer's state."""
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
        grant = overdraft_grant(event, policy)
        if grant is not None and grant["limit"] is not None:
            state.entitlements["overdraft"] = grant
    previous = state.last_seen.get(event.channel)
    if previous is None or event.occurred_at > previous:
        state.last_seen[event.channel] = event.occurred_at
    state.updated_at = max(state.updated_at or 0.0, event.occurred_at)


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
