"""Forgetting a customer: what ``privacy.erasure_requested`` removes, decided purely.

The step (:func:`processors.domain.step.step`) calls :func:`erase` when it meets the
event: everything the record knows goes (traits, consents, entitlements, coupons,
timers and so deferred triggers, contact history, the dedup ring, the timeline),
and the step goes on with an empty record, so an event after the erasure starts a
new customer who knows nothing of the old one. The agent then writes tombstones
(None values) for the customer's ``customers`` and ``timelines`` records, clears her
timer index entry, and deletes the read-model keys listed here; the per-rule offer
counters (``stats``) hold no customer and stay.

The keys are derived from the record *before* the erasure, because some are keyed by
something else than the customer (coupons by coupon id): only her record knows them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from processors.domain.ids import decision_id
from processors.domain.links import unlink_all
from processors.domain.model import ERASED, CustomerState, Decision, Event, StepOutputs
from processors.domain.read_model import (
    ReadModelWrite,
    cart_key,
    coupon_key,
    coupons_key,
    entitlement_key,
    offers_key,
    profile_key,
    timeline_key,
)
from producers.claims import coupon_claim_key

if TYPE_CHECKING:
    from processors.domain.step import StepContext

#: The event type that asks the pipeline to forget its customer (crm only).
ERASURE_EVENT = "privacy.erasure_requested"
#: ``rule`` and ``trigger_type`` of the decision an erasure logs (no rule file has it).
ERASURE_RULE = "privacy_erasure"
#: Entitlement kinds the fold grants. Their keys are deleted whether or not the record
#: still holds the entitlement: Redis may keep one a moment past its removal from state.
ENTITLEMENT_KINDS: tuple[str, ...] = ("overdraft",)


def forgotten_keys(state: CustomerState) -> list[ReadModelWrite]:
    """Every read-model key of this customer, each as a delete."""
    customer_id = state.customer_id
    keys = [
        profile_key(customer_id),
        timeline_key(customer_id),
        cart_key(customer_id),
        offers_key(customer_id),
        coupons_key(customer_id),
    ]
    kinds = sorted(set(ENTITLEMENT_KINDS) | set(state.entitlements))
    keys.extend(entitlement_key(customer_id, kind) for kind in kinds)
    for coupon_id in sorted(state.coupons):
        # The record and the tills' claim (producers.claims), both keyed by coupon id.
        keys.extend((coupon_key(coupon_id), coupon_claim_key(coupon_id)))
    return [ReadModelWrite(key, None) for key in keys]


def erasure_decision(event: Event, ctx: StepContext, now: float) -> Decision:
    """The decision.log record of an erasure: ids and the request id, no personal data."""
    return Decision(
        decision_id=decision_id(ERASURE_RULE, event.customer_id, event.event_id),
        customer_id=event.customer_id,
        rule=ERASURE_RULE,
        trigger_type=ERASURE_RULE,
        source_event_id=event.event_id,
        outcome=ERASED,
        reasons=(),
        trigger_id=None,
        decided_at=now,
        ruleset=ctx.ruleset.ruleset_id,
        request_id=str(event.payload["request_id"]),
    )


def erase(
    state: CustomerState, event: Event, ctx: StepContext, now: float, out: StepOutputs
) -> CustomerState:
    """Forget the customer: note her keys and the decision in ``out``; an empty record."""
    out.erased_keys.extend(forgotten_keys(state))
    # Her identifiers' records go too (links, and a shared device's memory of her).
    unlink_all(state, event, out)
    out.decisions.append(erasure_decision(event, ctx, now))
    if out.timeline is not None:
        out.timeline = []
    out.changed = True
    out.forgotten = True
    return CustomerState.new(state.customer_id)
