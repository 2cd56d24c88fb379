"""Evaluating rules in contexts of only what their expressions read.

The ``when`` conditions of an event type's rules are evaluated first, in a
context of what they read (their outcome remembered by those values:
:class:`Memo`); the other expressions only for the rules that held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cel
import orjson

from processors.rulebook.functions import FUNCTIONS
from processors.rulebook.model import CompiledRule, Expression, Match
from processors.rulebook.paths import Shape, covers, merge, prune, reads

#: (rule, None) when its ``when`` held, (rule, what failed) when it raised; rules whose
#: ``when`` was false are left out.
Outcome = tuple[tuple[CompiledRule, str | None], ...]


def whens(rules: Iterable[CompiledRule], context: Any) -> Outcome:
    outcome: list[tuple[CompiledRule, str | None]] = []
    for rule in rules:
        try:
            if holds(rule, context):
                outcome.append((rule, None))
        except Exception as exc:  # a rule bug must not stop the customer's events
            outcome.append((rule, failure(exc)))
    return tuple(outcome)


#: orjson options for memo keys: values orjson would write as if they were JSON but that
#: CEL sees otherwise (datetimes, dataclasses, subclasses of str, int, dict, list) raise.
_KEY_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


class Memo:
    """The outcome of an event type's ``when`` conditions by the values they read.

    Converting values to CEL costs far more than looking their JSON up, and the
    few fields a condition reads (a country, a call type, a score) often repeat.
    The outcome is a function of those values alone (CEL and :data:`FUNCTIONS`
    are pure; the rule set never changes), so a remembered one is what evaluating
    again would give, errors included. The key is the values' JSON: values JSON
    cannot tell apart (``null`` also stands for NaN and the infinities) or cannot
    write are not remembered. Bounded; switched off for an event type whose values
    do not repeat enough (a timestamp among them) to pay for the keys.
    """

    __slots__ = ("enabled", "hits", "lookups", "outcomes")

    KEEP = 4096
    TRIAL = 1024
    MIN_HIT_SHARE = 0.25

    def __init__(self) -> None:
        self.outcomes: dict[bytes, Outcome] = {}
        self.enabled = True
        self.lookups = 0
        self.hits = 0

    def key(self, variables: dict[str, Any]) -> bytes | None:
        if not self.enabled:
            return None
        try:
            key = orjson.dumps(variables, option=_KEY_OPTIONS)
        except TypeError:
            return None
        return None if b"null" in key else key

    def get(self, key: bytes | None) -> Outcome | None:
        if key is None:
            return None
        self.lookups += 1
        found = self.outcomes.get(key)
        if found is not None:
            self.hits += 1
        elif self.lookups >= self.TRIAL and self.hits < self.lookups * self.MIN_HIT_SHARE:
            self.enabled = False
            self.outcomes.clear()
        return found

    def put(self, key: bytes | None, outcome: Outcome) -> None:
        if key is None or not self.enabled:
            return
        if len(self.outcomes) >= self.KEEP:
            self.outcomes.clear()
        self.outcomes[key] = outcome


@dataclass(slots=True, frozen=True)
class Needs:
    """What some expressions read: variables (:data:`Shape`) and our functions."""

    variables: Mapping[str, Shape]
    #: The functions of :data:`FUNCTIONS` they call (None: none).
    functions: dict[str, Callable[..., Any]] | None

    @classmethod
    def of(cls, expressions: Iterable[Expression]) -> Needs:
        listed = list(expressions)
        called = {name for e in listed for name in e.program.functions()}
        functions = {name: f for name, f in FUNCTIONS.items() if name in called}
        return cls(reads(listed), functions or None)

    def missing(self, other: Needs) -> Needs:
        """What a context of ``self`` must get to also serve ``other``: each variable it
        lacks something of, with what both read, and the functions it lacks."""
        variables = {
            name: merge(self.variables[name], shape) if name in self.variables else shape
            for name, shape in other.variables.items()
            if name not in self.variables or not covers(self.variables[name], shape)
        }
        mine = self.functions or {}
        functions = {n: f for n, f in (other.functions or {}).items() if n not in mine}
        return Needs(variables, functions or None)


@dataclass(slots=True, frozen=True)
class Plan:
    """How the rules of one event type are evaluated."""

    rules: tuple[CompiledRule, ...]
    #: What their ``when`` conditions read.
    when: Needs
    memo: Memo = field(default_factory=Memo)


def cel_context(
    needs: Needs,
    event: dict[str, Any],
    state: dict[str, Any],
    now: float,
    delays: dict[str, float],
    timer: dict[str, Any] | None = None,
) -> Any:
    """A CEL context with only what ``needs`` reads; ``timer`` only for ``cancel_when``."""
    variables = variables_for(needs, event, state, now, delays, timer)
    return cel.Context(variables=variables, functions=needs.functions)


def variables_for(
    needs: Needs,
    event: dict[str, Any],
    state: dict[str, Any],
    now: float,
    delays: dict[str, float],
    timer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    reads = needs.variables
    variables: dict[str, Any] = {}
    if "event" in reads:
        variables["event"] = prune(event, reads["event"])
    if "state" in reads:
        variables["state"] = prune(state, reads["state"])
    if "now" in reads:
        variables["now"] = now
    if "delays" in reads:
        variables["delays"] = prune(delays, reads["delays"])
    if timer is not None and "timer" in reads:
        variables["timer"] = prune(timer, reads["timer"])
    return variables


def failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def holds(rule: CompiledRule, context: Any) -> bool:
    holds = rule.when(context)
    if not isinstance(holds, bool):
        raise TypeError(f"'when' returned {type(holds).__name__}, not a bool ({rule.when.text})")
    return holds


def match_rule(rule: CompiledRule, context: Any, event: dict[str, Any]) -> Match:
    """What a rule whose ``when`` held wants to send."""
    eligible = True
    if rule.eligibility is not None:
        eligible = rule.eligibility(context)
        if not isinstance(eligible, bool):
            raise TypeError(f"'eligibility' returned {type(eligible).__name__}, not a bool")
    channel = rule.channel
    if rule.channel_from is not None:
        wanted = rule.channel_from(context)
        if wanted:
            channel = str(wanted)
    cooldown_key = None
    if rule.cooldown_seconds is not None:
        subject = "" if rule.cooldown_subject is None else str(rule.cooldown_subject(context))
        cooldown_key = f"{rule.id}:{subject}"
    due_at: float | None = None
    if rule.at is not None:
        due_at = float(rule.at(context))
    elif rule.after is not None:
        due_at = float(event["occurred_at"]) + rule.after
    # A delayed trigger's validity counts from when it fires.
    start = float(event["occurred_at"]) if due_at is None else due_at
    if rule.expires_at is not None:
        expires_at: float | None = float(rule.expires_at(context))
    elif rule.expires_in is not None:
        expires_at = start + rule.expires_in
    else:
        expires_at = None
    return Match(
        rule=rule,
        eligible=eligible,
        channel=channel,
        fallback_channel=rule.fallback_channel,
        message_class=rule.message_class,
        priority=rule.priority,
        value=rule.value,
        cooldown_seconds=rule.cooldown_seconds,
        cooldown_key=cooldown_key,
        expires_at=expires_at,
        reason=str(rule.reason(context)),
        payload={name: expression(context) for name, expression in rule.payload},
        due_at=due_at,
        timer_key="" if rule.timer_key is None else str(rule.timer_key(context)),
    )
