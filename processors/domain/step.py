"""``step(state, events) -> (state, outputs)``: one customer's batch, as a pure function.

For each event, in order: drop it if it is a duplicate; note a response to an
earlier offer; evaluate the rule set against the state *before* the event; decide
every match (service: expiry only; marketing: staleness, then the contact policy
of :mod:`processors.domain.contact`); record a decision per match and emit, defer
or suppress; then fold the event into state. :func:`fire_timers` does the same
for timers that came due (deferred triggers, "ignored" checks).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from processors.domain import contact as cp
from processors.domain import timers as tm
from processors.domain.caps import apply_count_caps, enforce_caps
from processors.domain.ids import _hex_id, decision_id, event_fingerprint, trigger_id
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
    parse_time,
)
from processors.domain.policy import DAY, EXPIRED, STALE, Policy, has_marketing_consent, is_stale
from processors.domain.read_model import COUPON_KEEP_SECONDS
from processors.domain.timeline import add_to_timeline
from processors.rulebook import Match, RuleSet
from producers.actions import actions_for
from schemas.bounds import EARLIEST_TIME, MAX_DATE_AHEAD_SECONDS

#: Touchpoint channel of a response -> the messaging channel it tells us she prefers.
RESPONSE_CHANNEL_PREFERENCE = {"sms": "sms", "email": "email", "mobile": "push"}
#: ``ContactState().to_dict()``: a customer who was never sent marketing.
EMPTY_CONTACT: dict[str, Any] = {"sent": [], "responses": {}, "paused_until": {}}
AIRPORT_WINDOW = 30 * DAY


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
        if not _remember(state, event.event_id, today, ctx.policy, out):
            out.duplicates += 1
            continue
        out.changed = True
        _note_response(state, contact, event, ctx, out)
        if ctx.ruleset.listens_to(event.type):
            event_ctx = event_context(event, ctx)
            fields = ctx.ruleset.state_fields.get(event.type, frozenset())
            state_ctx = state_context(state, out.timeline, ctx, event.occurred_at, fields)
            _cancel_rule_timers(state, event_ctx, state_ctx, ctx, now, out)
            evaluation = ctx.ruleset.evaluate(event_ctx, state_ctx, now)
            out.rule_errors.extend(evaluation.errors)
            _decide(state, contact, event, evaluation.matches, ctx, now, out)
        apply_event(state, event, ctx.policy)
        _note_journey(state, event, ctx)
        # Per event, as the rules of the next event must see a capped record.
        apply_count_caps(state, now, out.state_items_dropped)
        if out.timeline is not None:
            out.timeline = add_to_timeline(out.timeline, [event], ctx.timeline_length)
    if contact.sent or contact.responses or contact.paused_until or state.contact != EMPTY_CONTACT:
        cp.prune(contact, now, ctx.contact)
        state.contact = contact.to_dict()
    # else: no contact history, stored as such already (most customers): nothing to prune.
    prune_expired(state, now)
    # Held-out offers and any offer left unwatched are forgotten a day after expiry.
    for offer_id, offer in list(state.offers.items()):
        if offer.get("expires_at") is not None and offer["expires_at"] < now - DAY:
            del state.offers[offer_id]
    _forget_old_coupons(state, now)
    if out.changed:
        out.state_encoded = enforce_caps(
            state, now, ctx.policy.max_state_bytes, out.state_items_dropped
        )
    return state, out


def _forget_old_coupons(state: CustomerState, now: float) -> None:
    """A coupon leaves the record when its read-model key does (its keep period ends)."""
    horizon = now - COUPON_KEEP_SECONDS
    if state.coupons and any(c["expires_at"] <= horizon for c in state.coupons.values()):
        state.coupons = {k: c for k, c in state.coupons.items() if c["expires_at"] > horizon}


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
            _release(state, contact, timer, ctx, now, out)
        elif timer.kind == tm.RULE_TIMER:
            _fire_rule_timer(state, contact, timer, ctx, now, out)
        elif timer.kind == tm.IGNORED_CHECK:
            offer = state.offers.pop(timer.data["trigger_id"], None)
            if offer is not None and offer.get("control"):
                continue  # a held-out customer: nothing was sent, nothing to ignore
            if offer is not None:  # no response before it expired: ignored
                out.stats.append((offer["rule"], offer["channel"], "ignored", 1.0))
                cp.record_response(
                    contact, offer["offer_type"], cp.IGNORED, timer.due_at, ctx.contact
                )
    state.contact = contact.to_dict()
    out.state_encoded = enforce_caps(
        state, now, ctx.policy.max_state_bytes, out.state_items_dropped
    )
    return out


# --- contexts the rules see ------------------------------------------------------------------


def event_context(event: Event, ctx: StepContext | None = None) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "type": event.type,
        "channel": event.channel,
        "customer_id": event.customer_id,
        "occurred_at": event.occurred_at,
        "payload": event.payload,
        "points": float(ctx.lead_points.get(event.type, 0.0)) if ctx else 0.0,
    }


def state_context(
    state: CustomerState,
    timeline: list[dict[str, Any]] | None = None,
    ctx: StepContext | None = None,
    at: float = 0.0,
    fields: Collection[str] | None = None,
) -> dict[str, Any]:
    """The customer as rules see it (before the current event at ``at``).

    ``fields`` (``RuleSet.state_fields``): the only fields the rules read; the
    derived ones (lead score, preferred channel) are then computed only if read.
    """
    window = ctx.lead_window if ctx else 30 * DAY
    view: dict[str, Any] = {
        "cart": state.cart,
        "coupons": state.coupons,
        "appointments": state.appointments,
        "lead_threshold": ctx.lead_threshold if ctx else 50.0,
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


# --- deciding --------------------------------------------------------------------------------


def _decide(
    state: CustomerState,
    contact: cp.ContactState,
    event: Event,
    matches: Sequence[Match],
    ctx: StepContext,
    now: float,
    out: StepOutputs,
) -> None:
    candidates: list[tuple[Match, cp.Candidate]] = []
    for match in matches:
        if match.due_at is not None:
            _schedule_rule_timer(state, event, match, out)
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


CONTROL_GROUP = "control_group"


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
    if match.rule.trigger_type == "customer_briefing":
        # What the branch needs besides the rule's fields: history and entitlements.
        payload.setdefault("entitlements", _entitlements_view(state, event.occurred_at))
    return payload


def _entitlements_view(state: CustomerState, at: float) -> list[dict[str, Any]]:
    return [
        {"kind": kind, **grant, "expires_at": format_time(grant["expires_at"])}
        for kind, grant in sorted(state.entitlements.items())
        if grant["expires_at"] > at
    ]


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


def _release(
    state: CustomerState,
    contact: cp.ContactState,
    timer: tm.Timer,
    ctx: StepContext,
    now: float,
    out: StepOutputs,
) -> None:
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


# --- timer rules ------------------------------------------------------------------------------


def _rule_timer_id(rule_id: str, customer_id: str, key: str) -> str:
    return tm.timer_id(tm.RULE_TIMER, customer_id, f"{rule_id}|{key}")


def _schedule_rule_timer(
    state: CustomerState, event: Event, match: Match, out: StepOutputs
) -> None:
    """Start (or restart: same rule and key) the rule's timer; it decides when it fires."""
    assert match.due_at is not None
    timer = tm.Timer(
        _rule_timer_id(match.rule.id, event.customer_id, match.timer_key),
        tm.RULE_TIMER,
        match.due_at,
        {
            "rule": match.rule.id,
            "key": match.timer_key,
            "source": {"event_id": event.event_id, "type": event.type, "channel": event.channel},
            "match": {
                "eligible": match.eligible,
                "channel": match.channel,
                "fallback_channel": match.fallback_channel,
                "message_class": match.message_class,
                "priority": match.priority,
                "value": match.value,
                "cooldown_seconds": match.cooldown_seconds,
                "cooldown_key": match.cooldown_key,
                "expires_at": match.expires_at,
                "reason": match.reason,
                "payload": match.payload,
            },
        },
    )
    tm.cancel(state.timers, timer.timer_id)
    if not tm.schedule(state.timers, timer):
        out.timers_refused += 1


def _cancel_rule_timers(
    state: CustomerState,
    event_ctx: dict[str, Any],
    state_ctx: dict[str, Any],
    ctx: StepContext,
    now: float,
    out: StepOutputs,
) -> None:
    """The event that makes a pending timer moot cancels it ("unless Y within D")."""
    rules = ctx.ruleset.cancellers.get(event_ctx["type"])
    if not rules or not state.timers:
        return
    by_id = {rule.id: rule for rule in rules}
    for entry in list(state.timers):
        if entry["kind"] != tm.RULE_TIMER or entry["data"]["rule"] not in by_id:
            continue
        data = entry["data"]
        timer_view = {
            "key": data["key"],
            "payload": data["match"]["payload"],
            "due_at": entry["due_at"],
        }
        rule = by_id[data["rule"]]
        if ctx.ruleset.cancels(rule, event_ctx, state_ctx, timer_view, now):
            tm.cancel(state.timers, entry["timer_id"])
            out.timers_cancelled += 1


def _fire_rule_timer(
    state: CustomerState,
    contact: cp.ContactState,
    timer: tm.Timer,
    ctx: StepContext,
    now: float,
    out: StepOutputs,
) -> None:
    """Nothing cancelled it: decide its trigger now, as of its due time."""
    rule = ctx.ruleset.rule(timer.data["rule"])
    if rule is None:  # the rule was removed by a reload: its timers die with it
        out.timers_dropped += 1
        return
    source = timer.data["source"]
    event = Event(
        event_id=source["event_id"],
        type=source["type"],
        channel=source["channel"],
        customer_id=state.customer_id,
        occurred_at=timer.due_at,
        payload={},
        produced_at=timer.due_at,
    )
    match = Match(rule=rule, **timer.data["match"])
    _decide(state, contact, event, [match], ctx, now, out)


# --- responses and state ---------------------------------------------------------------------


def _note_control_conversion(state: CustomerState, event: Event, out: StepOutputs) -> None:
    """A held-out customer took this kind of offer anyway: the baseline for lift (S11)."""
    for held_id, offer in list(state.offers.items()):
        expires = offer.get("expires_at")
        if (
            offer.get("control")
            and offer["offer_type"] == event.payload.get("offer_type")
            and (expires is None or event.occurred_at <= expires)
        ):
            out.stats.append((offer["rule"], offer["channel"], "control_accepted", 1.0))
            del state.offers[held_id]
            return


def _note_response(
    state: CustomerState,
    contact: cp.ContactState,
    event: Event,
    ctx: StepContext,
    out: StepOutputs,
) -> None:
    """An accepted or declined offer: response history, pause, learned channel."""
    if event.type not in ("offer.accepted", "offer.declined"):
        return
    payload = event.payload
    offer = state.offers.pop(payload.get("trigger_id") or "", None)
    if offer is not None:
        tm.cancel(
            state.timers, tm.timer_id(tm.IGNORED_CHECK, event.customer_id, payload["trigger_id"])
        )
        if event.type == "offer.accepted":
            out.stats.append((offer["rule"], offer["channel"], "accepted", 1.0))
            out.stats.append(
                (offer["rule"], offer["channel"], "accepted_value", float(offer.get("value", 0)))
            )
        else:
            out.stats.append((offer["rule"], offer["channel"], "declined", 1.0))
    elif event.type == "offer.accepted":
        _note_control_conversion(state, event, out)
    offer_type = offer["offer_type"] if offer else payload["offer_type"]
    if event.type == "offer.declined":
        cp.record_response(contact, offer_type, cp.DECLINED, event.occurred_at, ctx.contact)
    else:
        cp.record_accepted(contact, offer_type, event.occurred_at)
    learned = RESPONSE_CHANNEL_PREFERENCE.get(event.channel)
    if learned is not None:
        state.response_channels[learned] = state.response_channels.get(learned, 0) + 1


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
    elif kind == "atm.withdrawal":
        _note_airport_withdrawal(state, event)
    elif kind in ("cart.updated", "order.placed"):
        _apply_cart(state, event)
    elif kind in ("coupon.issued", "coupon.redeemed"):
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


def _note_journey(state: CustomerState, event: Event, ctx: StepContext) -> None:
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
