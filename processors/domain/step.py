"""``step(state, events) -> (state, outputs)``: one customer's batch, as a pure function.

For each event, in order: drop it if it is a duplicate; check what it would grant
(:mod:`~processors.domain.grants`: a refused grant is no response and every match of
it is suppressed ``unauthorized``); note a response to an earlier offer
(:mod:`~processors.domain.responses`); evaluate the rule set against
the state *before* the event (:mod:`~processors.domain.views`); decide every match
(:mod:`~processors.domain.decide`: service: expiry only; marketing: staleness, then
the contact policy of :mod:`~processors.domain.contact`); record a decision per
match and emit, defer or suppress, or start a timer rule's timer
(:mod:`~processors.domain.rule_timers`); then fold the event into state
(:mod:`~processors.domain.fold`). A ``privacy.erasure_requested`` forgets the customer
(:mod:`~processors.domain.erasure`): the events after it start from an empty record.
:func:`fire_timers` does the same for timers that
came due (deferred triggers, timer rules, "ignored" checks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from processors.domain import contact as cp
from processors.domain import timers as tm
from processors.domain.caps import apply_count_caps, enforce_caps
from processors.domain.decide import decide, release_deferred
from processors.domain.erasure import ERASURE_EVENT, erase
from processors.domain.fold import (
    apply_event,
    forget_expired_offers,
    forget_old_coupons,
    note_journey,
    prune_expired,
    remember,
)
from processors.domain.grants import grant_refusal
from processors.domain.identity import MERGE_REQUESTED, PROFILE_MERGED, IdentityPolicy
from processors.domain.links import LINK_EVENT, UNLINK_EVENT, learn_links
from processors.domain.merge import merge_profile, send_profile
from processors.domain.model import CustomerState, Event, StepOutputs
from processors.domain.policy import DAY, Policy
from processors.domain.responses import note_ignored, note_response
from processors.domain.rule_timers import cancel_rule_timers, due_match
from processors.domain.timeline import add_to_timeline
from processors.domain.views import event_context, state_context
from processors.rulebook import RuleSet
from schemas.bounds import EARLIEST_TIME

#: ``ContactState().to_dict()``: a customer who was never sent marketing.
EMPTY_CONTACT: dict[str, Any] = {"sent": [], "responses": {}, "paused_until": {}}


@dataclass(slots=True, frozen=True)
class StepContext:
    """Everything ``step`` needs besides state and events; built once per rule set."""

    policy: Policy
    contact: cp.ContactPolicy
    ruleset: RuleSet
    action_key: bytes
    timeline_length: int = 20
    #: Lead scoring (S10): points per event type, the qualified-lead threshold, the window.
    lead_points: Mapping[str, float] = field(default_factory=dict)
    lead_threshold: float = 50.0
    lead_window: float = 30 * DAY
    #: Share of customers held out of marketing (deterministic by customer id).
    control_share: float = 0.0
    #: Identity guardrails (limits per type, blocked values, shared devices, parking).
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)


def step(
    state: CustomerState | None,
    events: Sequence[Event],
    ctx: StepContext,
    now: float,
    timeline: list[dict[str, Any]] | None = None,
) -> tuple[CustomerState, StepOutputs]:
    """Fold one customer's events (all with the same ``customer_id``) into state.

    ``now`` is the wall-clock time of processing; it only decides staleness and
    expiry at processing time. Everything else uses the event's ``occurred_at``.
    ``timeline`` (the customer's recent interactions, newest first) is read by
    rules and returned updated in ``outputs.timeline``.
    """
    if state is None:
        state = CustomerState.new(events[0].customer_id)
    out = StepOutputs(timeline=list(timeline) if timeline is not None else None)
    today = int(now // DAY)
    # Most customers have no contact history: skip the copy (from_dict of it is empty).
    empty = not state.contact or state.contact == EMPTY_CONTACT
    contact = cp.ContactState() if empty else cp.ContactState.from_dict(state.contact)
    latest = now + ctx.policy.max_future_skew
    for event in events:
        if not EARLIEST_TIME <= event.occurred_at <= latest:
            # Only events that bypassed the validator's bounds (forwarded before them).
            event = replace(event, occurred_at=min(max(event.occurred_at, EARLIEST_TIME), latest))
            out.times_clamped += 1
        if event.type == ERASURE_EVENT:
            # Not remembered: the dedup ring goes with everything else. A repeat of the
            # request (a producer's retry) erases again: only what came between is lost.
            state = erase(state, event, ctx, now, out)
            contact = cp.ContactState()
            continue
        if event.type == MERGE_REQUESTED:
            # Not remembered either: the profile goes to its target and this one is
            # forgotten; a repeat sends an empty profile (its id, a duplicate there).
            state.contact = contact.to_dict()
            state = send_profile(state, event, out)
            contact = cp.ContactState()
            continue
        if not remember(state, event.event_id, today, ctx.policy, out):
            out.duplicates += 1
            continue
        out.changed = True
        out.forgotten = False  # an event after an erasure starts a new customer
        if event.type == PROFILE_MERGED:
            state.contact = contact.to_dict()
            merge_profile(state, event, ctx.policy, ctx.timeline_length, out)
            contact = cp.ContactState.from_dict(state.contact)
            continue
        # Before the response pops the offer it may answer: that offer is the authority.
        refusal = grant_refusal(state, event, ctx.policy)
        if refusal is None:
            note_response(state, contact, event, ctx, out)
        if ctx.ruleset.listens_to(event.type):
            event_ctx = event_context(event, ctx)
            fields = ctx.ruleset.state_fields.get(event.type, frozenset())
            state_ctx = state_context(state, out.timeline, ctx, event.occurred_at, fields)
            cancel_rule_timers(state, event_ctx, state_ctx, ctx, now, out)
            evaluation = ctx.ruleset.evaluate(event_ctx, state_ctx, now)
            out.rule_errors.extend(evaluation.errors)
            decide(state, contact, event, evaluation.matches, ctx, now, out, refusal=refusal)
        apply_event(state, event, ctx.policy, authorised=refusal is None)
        if event.identifiers or event.type in (LINK_EVENT, UNLINK_EVENT):
            learn_links(state, event, ctx, out)
        if refusal is None:
            note_journey(state, event, ctx)
        # Per event, as the rules of the next event must see a capped record.
        apply_count_caps(state, now, out.state_items_dropped)
        if out.timeline is not None:
            out.timeline = add_to_timeline(out.timeline, [event], ctx.timeline_length)
    if contact.sent or contact.responses or contact.paused_until or state.contact != EMPTY_CONTACT:
        cp.prune(contact, now, ctx.contact)
        state.contact = contact.to_dict()
    # else: no contact history, stored as such already (most customers): nothing to prune.
    prune_expired(state, now)
    forget_expired_offers(state, now)
    forget_old_coupons(state, now)
    if out.changed and not out.forgotten:
        out.state_encoded = enforce_caps(
            state, now, ctx.policy.max_state_bytes, out.state_items_dropped
        )
    return state, out


def fire_timers(state: CustomerState, ctx: StepContext, now: float) -> StepOutputs:
    """Fire this customer's due timers; the caller writes ``state`` back with the outputs."""
    out = StepOutputs()
    due = tm.pop_due(state.timers, now)
    if not due:
        return out
    out.changed = True
    contact = cp.ContactState.from_dict(state.contact)
    for timer in due:
        if timer.kind == tm.DEFERRED_TRIGGER:
            release_deferred(state, contact, timer, ctx, now, out)
        elif timer.kind == tm.RULE_TIMER:
            # Nothing cancelled it: decide its trigger now, as of its due time.
            fired = due_match(state, timer, ctx.ruleset)
            if fired is None:  # the rule was removed by a reload: its timers die with it
                out.timers_dropped += 1
                continue
            event, match = fired
            decide(state, contact, event, [match], ctx, now, out)
        elif timer.kind == tm.IGNORED_CHECK:
            note_ignored(state, contact, timer, ctx, out)
    state.contact = contact.to_dict()
    out.state_encoded = enforce_caps(
        state, now, ctx.policy.max_state_bytes, out.state_items_dropped
    )
    return out
