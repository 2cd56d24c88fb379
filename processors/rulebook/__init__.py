"""Rules as data: YAML rule files, validated, with CEL conditions compiled once.

A rule file holds ``rules:``, a list of rules (schema: ``rule_file.schema.json``).
Loading checks every file against that schema, compiles every CEL expression
and refuses duplicate ids; any problem raises :class:`RuleFileError` naming the
file, the rule and the field, and saying what to do. Evaluation is pure: the
caller gives the event, the customer's state before it and ``now`` as plain
values and gets the matches back; an expression that fails at run time (a
missing field, a wrong type) is reported, never raised, and the rule counts as
not matching.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import cel
import orjson
import yaml
from jsonschema import Draft202012Validator

SCHEMA_PATH = Path(__file__).with_name("rule_file.schema.json")
_VALIDATOR = Draft202012Validator(orjson.loads(SCHEMA_PATH.read_bytes()))
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
PREFERRED = "preferred"


def epoch(timestamp: str) -> float:
    """CEL ``epoch("2026-01-20T10:30:00+01:00")``: RFC 3339 to epoch seconds (double)."""
    return datetime.fromisoformat(timestamp).timestamp()


#: Functions rules may call besides CEL's standard library.
FUNCTIONS: dict[str, Any] = {"epoch": epoch}


class _RuleLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. (In YAML 1.1 a rule's ``on:`` key is True.)"""


_RuleLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RuleLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class RuleFileError(ValueError):
    """A rule file that cannot be loaded; the message names file, rule and field."""


def parse_duration(text: str) -> float:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: write a number and s, m, h or d (e.g. 30d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


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


#: ``state.<field>`` in an expression; any other use of ``state`` needs the whole record.
_STATE_FIELD = re.compile(r"\bstate\.([A-Za-z_][A-Za-z0-9_]*)")
_WHOLE_STATE = re.compile(r"\bstate\b(?!\.[A-Za-z_])")


def _expressions(rule: CompiledRule) -> Iterable[Expression]:
    for expression in (
        rule.when,
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


@dataclass(frozen=True)
class RuleSet:
    """An immutable, loaded rule set; ``ruleset_id`` is a hash of its content."""

    rules: tuple[CompiledRule, ...]
    ruleset_id: str
    by_type: Mapping[str, tuple[CompiledRule, ...]]
    #: event type -> timer rules whose timers that event may cancel.
    cancellers: Mapping[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    #: Named delays (settings) available to rules as ``after: <name>`` and ``delays.<name>``.
    delays: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_documents(
        cls, documents: Iterable[tuple[str, Any]], delays: Mapping[str, float] | None = None
    ) -> RuleSet:
        """Build from (source name, parsed YAML document) pairs; raises RuleFileError."""
        delays = dict(delays or {})
        compiled: list[CompiledRule] = []
        canonical: list[Any] = []
        seen: dict[str, str] = {}
        for source, document in documents:
            _check_schema(source, document)
            for raw in document["rules"]:
                rule = _compile(source, raw, delays)
                if rule.id in seen:
                    raise RuleFileError(
                        f"{source}: rule {rule.id!r}: field 'id': already defined in "
                        f"{seen[rule.id]} — rule ids must be unique across files; rename one"
                    )
                seen[rule.id] = source
                compiled.append(rule)
                canonical.append(raw)
        compiled.sort(key=lambda r: (-r.priority, r.id))
        digest = hashlib.sha256(
            orjson.dumps(sorted(canonical, key=lambda r: r["id"]), option=orjson.OPT_SORT_KEYS)
        ).hexdigest()[:12]
        by_type: dict[str, list[CompiledRule]] = {}
        cancellers: dict[str, list[CompiledRule]] = {}
        for rule in compiled:
            for event_type in sorted(rule.on):
                by_type.setdefault(event_type, []).append(rule)
            for event_type in sorted(rule.cancel_on):
                cancellers.setdefault(event_type, []).append(rule)
        return cls(
            tuple(compiled),
            digest,
            {t: tuple(rs) for t, rs in by_type.items()},
            {t: tuple(rs) for t, rs in cancellers.items()},
            delays,
        )

    def listens_to(self, event_type: str) -> bool:
        return event_type in self.by_type or event_type in self.cancellers

    def rule(self, rule_id: str) -> CompiledRule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    def context(self, event: dict[str, Any], state: dict[str, Any], now: float) -> Any:
        """The CEL context of one event (built once, shared by every expression).

        Converting the state to CEL values is most of the cost of evaluating rules,
        so only the state fields the listening rules mention are converted.
        """
        fields = self.state_fields.get(event["type"])
        if fields is not None:
            state = {name: state[name] for name in fields if name in state}
        return cel.Context(
            variables={"event": event, "state": state, "now": now, "delays": dict(self.delays)},
            functions=FUNCTIONS,
        )

    @cached_property
    def state_fields(self) -> dict[str, frozenset[str] | None]:
        """event type -> the state fields its rules read (None: all of them)."""
        needed: dict[str, frozenset[str] | None] = {}
        for event_type, rules in self.by_type.items():
            fields: set[str] | None = set()
            for rule in rules:
                for expression in _expressions(rule):
                    if _WHOLE_STATE.search(expression.text):
                        fields = None
                        break
                    assert fields is not None
                    fields.update(_STATE_FIELD.findall(expression.text))
                if fields is None:
                    break
            needed[event_type] = None if fields is None else frozenset(fields)
        return needed

    def cancels(
        self,
        rule: CompiledRule,
        event: dict[str, Any],
        state: dict[str, Any],
        timer: dict[str, Any],
        now: float,
    ) -> bool:
        """Does this event cancel this timer of ``rule``? (A failing expression: no.)"""
        if rule.cancel_when is None:
            return True
        variables = {
            "event": event,
            "state": state,
            "now": now,
            "delays": dict(self.delays),
            "timer": timer,
        }
        try:
            return rule.cancel_when(cel.Context(variables=variables, functions=FUNCTIONS)) is True
        except Exception:
            return False

    def evaluate(self, event: dict[str, Any], state: dict[str, Any], now: float) -> Evaluation:
        result = Evaluation()
        rules = self.by_type.get(event["type"])
        if not rules:
            return result
        context = self.context(event, state, now)
        for rule in rules:
            try:
                match = _evaluate(rule, context, event)
            except Exception as exc:  # a rule bug must not stop the customer's events
                result.errors.append((rule.id, f"{type(exc).__name__}: {exc}"))
                continue
            if match is not None:
                result.matches.append(match)
        return result


def load_ruleset(directory: Path, delays: Mapping[str, float] | None = None) -> RuleSet:
    """Every ``*.yaml`` file in ``directory`` (sorted by name); raises RuleFileError."""
    if not directory.is_dir():
        raise RuleFileError(
            f"{directory}: no such rules folder — set OMNI_RULES_DIR to the folder of rule files"
        )
    documents: list[tuple[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            documents.append((str(path), yaml.load(path.read_text(), Loader=_RuleLoader)))
        except yaml.YAMLError as exc:
            raise RuleFileError(f"{path}: not valid YAML ({exc}) — fix the file's syntax") from None
    if not documents:
        raise RuleFileError(f"{directory}: no *.yaml rule files — add at least one rule file")
    return RuleSet.from_documents(documents, delays)


def try_reload(directory: Path, current: RuleSet) -> tuple[RuleSet, str | None]:
    """The rule set in ``directory`` now, or ``current`` and why the new one was refused."""
    try:
        return load_ruleset(directory, current.delays), None
    except (RuleFileError, OSError) as exc:
        return current, str(exc)


# --- loading ---------------------------------------------------------------------------------


def _check_schema(source: str, document: Any) -> None:
    errors = sorted(_VALIDATOR.iter_errors(document), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    error = errors[0]
    path = list(error.absolute_path)
    rule_id = None
    if len(path) >= 2 and path[0] == "rules" and isinstance(document, dict):
        try:
            rule_id = document["rules"][path[1]].get("id")
        except (AttributeError, IndexError, KeyError, TypeError):
            rule_id = None
        where = ".".join(str(p) for p in path[2:]) or "(the rule)"
        rule = f"rule {rule_id!r}" if rule_id else f"rule #{path[1] + 1}"
    else:
        where, rule = ".".join(str(p) for p in path) or "(top level)", "file"
    raise RuleFileError(
        f"{source}: {rule}: field '{where}': {error.message} — fix it as the rule file "
        f"schema ({SCHEMA_PATH.name}) says"
    )


def _compile(source: str, raw: dict[str, Any], delays: Mapping[str, float]) -> CompiledRule:
    rule_id = raw["id"]
    trigger = raw["trigger"]

    def expr(text: str | None, where: str) -> Expression | None:
        if text is None:
            return None
        try:
            return Expression(text, cel.compile(text))
        except (ValueError, RuntimeError) as exc:
            detail = str(exc).splitlines()[0]
            raise RuleFileError(
                f"{source}: rule {rule_id!r}: field '{where}': {detail} — fix the CEL expression"
            ) from None

    def duration(text: str | None, where: str) -> float | None:
        if text is None:
            return None
        try:
            return parse_duration(text)
        except ValueError as exc:
            known = ", ".join(sorted(delays)) or "none"
            raise RuleFileError(
                f"{source}: rule {rule_id!r}: field '{where}': {exc} (or a delay setting: {known})"
            ) from None

    after: float | None = None
    if "after" in raw:
        named = delays.get(raw["after"])
        after = named if named is not None else duration(raw["after"], "after")
    when = expr(raw["when"], "when")
    reason = expr(trigger["reason"], "trigger.reason")
    assert when is not None and reason is not None
    payload = []
    for name, text in (trigger.get("payload") or {}).items():
        compiled = expr(text, f"trigger.payload.{name}")
        assert compiled is not None
        payload.append((name, compiled))
    return CompiledRule(
        id=rule_id,
        source=source,
        description=raw.get("description", ""),
        on=frozenset(raw["on"]),
        transition=raw["transition"],
        when=when,
        eligibility=expr(raw.get("eligibility"), "eligibility"),
        trigger_type=trigger["type"],
        channel=trigger["channel"],
        fallback_channel=trigger.get("fallback_channel"),
        channel_from=expr(trigger.get("channel_from"), "trigger.channel_from"),
        message_class=trigger["class"],
        priority=int(trigger.get("priority", 0)),
        value=float(trigger.get("value", 0.0)),
        cooldown_seconds=duration(trigger.get("cooldown"), "trigger.cooldown"),
        cooldown_subject=expr(trigger.get("cooldown_subject"), "trigger.cooldown_subject"),
        expires_in=duration(trigger.get("expires_in"), "trigger.expires_in"),
        expires_at=expr(trigger.get("expires_at"), "trigger.expires_at"),
        reason=reason,
        payload=tuple(payload),
        after=after,
        at=expr(raw.get("at"), "at"),
        timer_key=expr(raw.get("timer_key"), "timer_key"),
        cancel_on=frozenset(raw.get("cancel_on", ())),
        cancel_when=expr(raw.get("cancel_when"), "cancel_when"),
    )


# --- evaluating ------------------------------------------------------------------------------


def _evaluate(rule: CompiledRule, context: Any, event: dict[str, Any]) -> Match | None:
    holds = rule.when(context)
    if not isinstance(holds, bool):
        raise TypeError(f"'when' returned {type(holds).__name__}, not a bool ({rule.when.text})")
    if not holds:
        return None
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


__all__ = [
    "CompiledRule",
    "Evaluation",
    "Match",
    "RuleFileError",
    "RuleSet",
    "load_ruleset",
    "parse_duration",
    "try_reload",
]
