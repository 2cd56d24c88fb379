"""A compiled rule and what evaluating it gives: plain, immutable values."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, frozen=True)
class Expression:
    """A compiled CEL expression and its text (for messages)."""

    text: str
    program: Any

    def __call__(self, context: Any) -> Any:
        return self.program.execute(context)


@dataclass(slots=True, frozen=True)
class CompiledRule:
    id: str
    source: str
    description: str
    on: frozenset[str]
    transition: str
    when: Expression
    eligibility: Expression | None
    trigger_type: str
    channel: str
    fallback_channel: str | None
    channel_from: Expression | None
    message_class: str
    priority: int
    value: float
    cooldown_seconds: float | None
    cooldown_subject: Expression | None
    expires_in: float | None
    expires_at: Expression | None
    reason: Expression
    payload: tuple[tuple[str, Expression], ...]
    #: Timer rules ("when X, unless Y within D, then Z"): fire ``after`` seconds after
    #: the event, or ``at`` (CEL), unless an event of ``cancel_on`` makes
    #: ``cancel_when`` (CEL over event, state and ``timer``) true first.
    after: float | None = None
    at: Expression | None = None
    timer_key: Expression | None = None
    cancel_on: frozenset[str] = frozenset()
    cancel_when: Expression | None = None
    #: Views of the customer added to the payload besides its CEL fields
    #: (``trigger.include``; :data:`processors.domain.views.PAYLOAD_VIEWS`).
    include: tuple[str, ...] = ()

    @property
    def delayed(self) -> bool:
        return self.after is not None or self.at is not None


@dataclass(slots=True, frozen=True)
class Match:
    """A rule whose ``when`` held for an event, with everything it wants to send."""

    rule: CompiledRule
    eligible: bool
    #: A trigger channel, or ``"preferred"`` for the caller to resolve.
    channel: str
    fallback_channel: str | None
    message_class: str
    priority: int
    value: float
    cooldown_seconds: float | None
    cooldown_key: str | None
    expires_at: float | None
    reason: str
    payload: dict[str, Any]
    #: For timer rules: when to fire, and the key that tells this rule's timers apart.
    due_at: float | None = None
    timer_key: str = ""


@dataclass(slots=True)
class Evaluation:
    matches: list[Match] = field(default_factory=list)
    #: (rule id, what failed) for expressions that raised at run time.
    errors: list[tuple[str, str]] = field(default_factory=list)


def followup_expressions(rule: CompiledRule) -> Iterable[Expression]:
    """The expressions evaluated once ``when`` held."""
    for expression in (
        rule.eligibility,
        rule.channel_from,
        rule.cooldown_subject,
        rule.expires_at,
        rule.reason,
        rule.at,
        rule.timer_key,
        *(e for _, e in rule.payload),
    ):
        if expression is not None:
            yield expression


def match_expressions(rule: CompiledRule) -> Iterable[Expression]:
    """Every expression of a match (not ``cancel_when``, which has its own context)."""
    yield rule.when
    yield from followup_expressions(rule)
