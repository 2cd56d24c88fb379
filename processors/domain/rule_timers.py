"""Timer rules ("when X, unless Y within D, then Z"): their timers in the customer's record.

A match with a due time starts a timer instead of a trigger; an event the rule
names in ``cancel_on`` may cancel it; when it comes due, :func:`due_match` gives
back the match to decide, as of its due time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from processors.domain import timers as tm
from processors.domain.model import CustomerState, Event, StepOutputs
from processors.rulebook import Match, RuleSet

if TYPE_CHECKING:
    from processors.domain.step import StepContext


def _rule_timer_id(rule_id: str, customer_id: str, key: str) -> str:
    return tm.timer_id(tm.RULE_TIMER, customer_id, f"{rule_id}|{key}")


def schedule_rule_timer(state: CustomerState, event: Event, match: Match, out: StepOutputs) -> None:
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


def cancel_rule_timers(
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


def due_match(
    state: CustomerState, timer: tm.Timer, ruleset: RuleSet
) -> tuple[Event, Match] | None:
    """The event and match a due timer stands for; None when its rule was removed since."""
    rule = ruleset.rule(timer.data["rule"])
    if rule is None:
        return None
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
    return event, Match(rule=rule, **timer.data["match"])
