"""Deciding a rule's match: suppress it, send it now, hold it until quiet hours end.

Service triggers only check expiry; marketing ones are checked for staleness and
expiry, then go through the contact policy (:mod:`processors.domain.contact`)
together, and a share of customers is held out (the control group). Every match
gets a decision on ``decision.log``; a match of a timer rule starts its timer
instead (:mod:`processors.domain.rule_timers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from processors.domain import contact as cp
from processors.domain import timers as tm
from processors.domain.ids import _hex_id, decision_id, trigger_id
from processors.domain.model import (
    DEFERRED,
    EMITTED,
    MARKETING,
    RELEASED,
    SUPPRESSED,
    CustomerState,
    Decision,
    Event,
    StepOutputs,
    Trigger,
    format_time,
)
from processors.domain.policy import has_marketing_consent, is_stale
from processors.domain.reasons import CONTROL_GROUP, EXPIRED, STALE, UNAUTHORIZED
from processors.domain.rule_timers import schedule_rule_timer
from processors.domain.views import PAYLOAD_VIEWS, preferred_channel
from processors.rulebook import Match
from producers.actions import actions_for

if TYPE_CHECKING:
    from processors.domain.step import StepContext


def decide(
    state: CustomerState,
    contact: cp.ContactState,
    event: Event,
    matches: Sequence[Match],
    ctx: StepContext,
    now: float,
    out: StepOutputs,
    refusal: str | None = None,
) -> None:
    """Record a decision for each match of ``event`` (timer rules: start the timer).

    ``refusal``: the rule that refused what the event would grant
    (:func:`processors.domain.grants.grant_refusal`); then every match is suppressed
    ``unauthorized`` and that rule, and no trigger or timer comes of it.
    """
    candidates: list[tuple[Match, cp.Candidate]] = []
    for match in matches:
        if refusal is not None:
            tid = trigger_id(match.rule.id, event.customer_id, event.event_id)
            refused = (UNAUTHORIZED, refusal)
            _record(state, event, match, _channel(state, match), tid, refused, ctx, now, out)
            continue
        if match.due_at is not None:
            schedule_rule_timer(state, event, match, out)
            continue
        channel = _channel(state, match)
        tid = trigger_id(match.rule.id, event.customer_id, event.event_id)
        if match.message_class != MARKETING:
            expired = match.expires_at is not None and match.expires_at <= now
            reasons = (EXPIRED,) if expired else ()
            _record(state, event, match, channel, tid, reasons, ctx, now, out)
            continue
        if is_stale(event.occurred_at, now, ctx.policy):
            _record(state, event, match, channel, tid, (STALE,), ctx, now, out)
            continue
        if match.expires_at is not None and match.expires_at <= now:
            _record(state, event, match, channel, tid, (EXPIRED,), ctx, now, out)
            continue
        candidates.append(
            (
                match,
                cp.Candidate(
                    rule_id=match.rule.id,
                    trigger_id=tid,
                    offer_type=match.rule.trigger_type,
                    channel=channel,
                    priority=match.priority,
                    value=match.value,
                    expires_at=match.expires_at,
                    cooldown_key=match.cooldown_key,
                    cooldown_seconds=match.cooldown_seconds,
                    eligible=match.eligible,
                    consent_granted=has_marketing_consent(state, channel, ctx.policy),
                ),
            )
        )
    if not candidates:
        return
    verdicts = cp.decide(
        contact,
        [candidate for _, candidate in candidates],
        event.occurred_at,
        now,
        state.traits.get("timezone"),
        state.cooldowns,
        ctx.contact,
    )
    for (match, candidate), verdict in zip(candidates, verdicts, strict=True):
        if verdict.outcome in (EMITTED, DEFERRED) and in_control_group(
            event.customer_id, match.rule.id, ctx.control_share
        ):
            _hold_out(state, match, candidate)
            verdict = cp.Verdict(
                candidate.rule_id, candidate.trigger_id, SUPPRESSED, (CONTROL_GROUP,)
            )
        if verdict.outcome == EMITTED:
            cp.record_sent(contact, candidate.offer_type, event.occurred_at, ctx.contact)
        elif verdict.outcome == DEFERRED:
            _defer(state, event, match, candidate, verdict.release_at or now, ctx, out)
        _record(
            state,
            event,
            match,
            candidate.channel,
            candidate.trigger_id,
            verdict.reasons,
            ctx,
            now,
            out,
            outcome=verdict.outcome,
            release_at=verdict.release_at,
        )


def in_control_group(customer_id: str, rule_id: str, share: float) -> bool:
    """Deterministic hold-out: the same customers, for a rule, whatever the order of events."""
    if share <= 0:
        return False
    bucket = int(_hex_id("control", rule_id, customer_id)[:8], 16) / 0xFFFFFFFF
    return bucket < share


def _hold_out(state: CustomerState, match: Match, candidate: cp.Candidate) -> None:
    """Remember what the held-out customer would have got, to see whether she converts anyway."""
    state.offers[candidate.trigger_id] = {
        "offer_type": match.rule.trigger_type,
        "rule": match.rule.id,
        "channel": candidate.channel,
        "expires_at": match.expires_at,
        "value": match.value,
        "control": True,
    }


def _channel(state: CustomerState, match: Match) -> str:
    if match.channel != "preferred":
        return match.channel
    return preferred_channel(state) or match.fallback_channel or "email"


def _record(
    state: CustomerState,
    event: Event,
    match: Match,
    channel: str,
    tid: str,
    reasons: tuple[str, ...],
    ctx: StepContext,
    now: float,
    out: StepOutputs,
    outcome: str | None = None,
    release_at: float | None = None,
) -> None:
    """Log the decision; emit the trigger when it goes now."""
    outcome = outcome or (SUPPRESSED if reasons else EMITTED)
    rule = match.rule
    counter = f"suppressed:{reasons[0]}" if outcome == SUPPRESSED and reasons else outcome
    out.stats.append((rule.id, channel, counter, 1.0))
    out.decisions.append(
        Decision(
            decision_id=decision_id(rule.id, event.customer_id, event.event_id),
            customer_id=event.customer_id,
            rule=rule.id,
            trigger_type=rule.trigger_type,
            source_event_id=event.event_id,
            outcome=outcome,
            reasons=reasons,
            trigger_id=None if outcome == SUPPRESSED else tid,
            decided_at=now,
            ruleset=ctx.ruleset.ruleset_id,
            message_class=match.message_class,
            channel=channel,
            release_at=release_at,
        )
    )
    if outcome in (SUPPRESSED, DEFERRED):
        if outcome == DEFERRED and match.cooldown_key is not None:
            # A deferred offer holds its cooldown: the next match tonight is not another one.
            state.cooldowns[match.cooldown_key] = event.occurred_at
        return
    if match.cooldown_key is not None:
        state.cooldowns[match.cooldown_key] = event.occurred_at
    payload = _payload(state, match, event)
    _emit(
        state,
        Trigger(
            trigger_id=tid,
            type=rule.trigger_type,
            customer_id=event.customer_id,
            channel=channel,
            created_at=now,
            expires_at=match.expires_at,
            source_event_id=event.event_id,
            rule=rule.id,
            reason=match.reason,
            payload=payload,
            source_produced_at=event.produced_at,
            message_class=match.message_class,
            ruleset=ctx.ruleset.ruleset_id,
        ),
        ctx,
        out,
        match.value,
    )


def _payload(state: CustomerState, match: Match, event: Event) -> dict[str, Any]:
    # Times are epoch seconds inside rules; on the wire every ``*_at`` is RFC 3339.
    payload = {
        name: format_time(value)
        if name.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool)
        else value
        for name, value in match.payload.items()
    }
    # The views the rule includes besides its own fields (``trigger.include``).
    for name in match.rule.include:
        payload.setdefault(name, PAYLOAD_VIEWS[name](state, event.occurred_at))
    return payload


def _emit(
    state: CustomerState,
    trigger: Trigger,
    ctx: StepContext,
    out: StepOutputs,
    value: float = 0.0,
) -> None:
    """Send a trigger; a marketing one gets one-tap actions and a response watch."""
    if trigger.message_class == MARKETING:
        expires_at = trigger.expires_at if trigger.expires_at is not None else trigger.created_at
        actions = tuple(
            actions_for(ctx.action_key, trigger.trigger_id, trigger.customer_id, expires_at)
        )
        trigger = Trigger(**{**_fields(trigger), "actions": actions})
        state.offers[trigger.trigger_id] = {
            "offer_type": trigger.type,
            "rule": trigger.rule,
            "channel": trigger.channel,
            "expires_at": trigger.expires_at,
            "value": value,
        }
        if trigger.expires_at is not None:
            watch = tm.Timer.new(
                tm.IGNORED_CHECK,
                trigger.customer_id,
                trigger.trigger_id,
                trigger.expires_at,
                {"trigger_id": trigger.trigger_id},
            )
            if not tm.schedule(state.timers, watch) and not tm.is_scheduled(
                state.timers, watch.timer_id
            ):
                out.timers_refused += 1
    out.triggers.append(trigger)


def _fields(trigger: Trigger) -> dict[str, Any]:
    return {name: getattr(trigger, name) for name in Trigger.__slots__}


def _defer(
    state: CustomerState,
    event: Event,
    match: Match,
    candidate: cp.Candidate,
    release_at: float,
    ctx: StepContext,
    out: StepOutputs,
) -> None:
    timer = tm.Timer.new(
        tm.DEFERRED_TRIGGER,
        event.customer_id,
        candidate.trigger_id,
        release_at,
        {
            "candidate": candidate.to_dict(),
            "trigger": {
                "type": match.rule.trigger_type,
                "rule": match.rule.id,
                "reason": match.reason,
                "payload": _payload(state, match, event),
                "source_event_id": event.event_id,
                "produced_at": event.produced_at,
            },
        },
    )
    if not tm.schedule(state.timers, timer) and not tm.is_scheduled(state.timers, timer.timer_id):
        out.timers_refused += 1


def release_deferred(
    state: CustomerState,
    contact: cp.ContactState,
    timer: tm.Timer,
    ctx: StepContext,
    now: float,
    out: StepOutputs,
) -> None:
    """A deferred trigger's release time came: check it again, then send or suppress it."""
    candidate = cp.Candidate.from_dict(timer.data["candidate"])
    spec = timer.data["trigger"]
    consent = has_marketing_consent(state, candidate.channel, ctx.policy)
    verdict = cp.check_release(contact, candidate, timer.due_at, consent, ctx.contact)
    released = verdict.outcome == RELEASED
    out.decisions.append(
        Decision(
            decision_id=_hex_id("release", candidate.trigger_id),
            customer_id=state.customer_id,
            rule=candidate.rule_id,
            trigger_type=candidate.offer_type,
            source_event_id=spec["source_event_id"],
            outcome=verdict.outcome,
            reasons=verdict.reasons,
            trigger_id=candidate.trigger_id if released else None,
            decided_at=now,
            ruleset=ctx.ruleset.ruleset_id,
            message_class=MARKETING,
            channel=candidate.channel,
        )
    )
    if not released:
        return
    cp.record_sent(contact, candidate.offer_type, timer.due_at, ctx.contact)
    _emit(
        state,
        Trigger(
            trigger_id=candidate.trigger_id,
            type=candidate.offer_type,
            customer_id=state.customer_id,
            channel=candidate.channel,
            created_at=now,
            expires_at=candidate.expires_at,
            source_event_id=spec["source_event_id"],
            rule=candidate.rule_id,
            reason=spec["reason"] + " (held until quiet hours ended)",
            payload=spec["payload"],
            source_produced_at=now,
            message_class=MARKETING,
            ruleset=ctx.ruleset.ruleset_id,
        ),
        ctx,
        out,
    )
