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
from collections.abc import Callable, Iterable, Iterator, Mapping
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
FUNCTIONS: dict[str, Callable[..., Any]] = {"epoch": epoch}


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


#: What of a value expressions read: ``None``, all of it; a dict, only those keys (each
#: with what of it they read). Converting values to CEL is most of the cost of evaluating
#: rules, so a context holds only what its expressions can see.
Shape = dict[str, "Shape"] | None

#: The variables a rule context can have.
_VARIABLE = re.compile(r"\b(event|state|now|delays|timer)\b")
#: ``.<name>`` after a variable or field; group 2 set: a method call (``.size()``, ``.exists(``)
#: or a comment that could hide one, so the value before it is read whole.
_SELECT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)(\s*(?:\(|//))?")


def _paths(text: str) -> Iterator[tuple[str, ...]]:
    """Each use of a variable in ``text``: the chain of field selections it reads whole.

    ``state.traits.home_country`` reads that field (and ``has()`` tests it): only that
    key of ``traits`` is needed. Anything else after a chain (an operator, ``[...]``, a
    method call, ``in``, whitespace before a dot) ends it, and the value reached is read
    whole. Over-reading is harmless, so the text is scanned as is: a variable's name in a
    string literal or as a field name only keeps more than needed.
    """
    for variable in _VARIABLE.finditer(text):
        path = [variable.group(1)]
        at = variable.end()
        while (select := _SELECT.match(text, at)) is not None and select.group(2) is None:
            path.append(select.group(1))
            at = select.end()
        yield tuple(path)


def _reads(expressions: Iterable[Expression]) -> dict[str, Shape]:
    """Variable name -> what of it these expressions read; an unread variable is absent."""
    tree: dict[str, Shape] = {}
    for expression in expressions:
        for path in _paths(expression.text):
            node = tree
            for depth, key in enumerate(path):
                if key in node and node[key] is None:
                    break  # already read whole
                if depth == len(path) - 1:
                    node[key] = None
                    break
                child = node.setdefault(key, {})
                assert child is not None
                node = child
    return tree


def _covers(have: Shape, need: Shape) -> bool:
    """Does a value pruned to ``have`` hold everything of ``need``?"""
    if have is None:
        return True
    if need is None:
        return False
    return all(key in have and _covers(have[key], sub) for key, sub in need.items())


def _merge(one: Shape, other: Shape) -> Shape:
    """What reads of both shapes need."""
    if one is None or other is None:
        return None
    merged = dict(one)
    for key, shape in other.items():
        merged[key] = _merge(one[key], shape) if key in one else shape
    return merged


def _prune(value: Any, shape: Shape) -> Any:
    """``value`` with only what ``shape`` reads: a missing key stays missing (``has()``
    is false, a selection fails as before), a value that is not a dict is kept whole."""
    if shape is None or type(value) is not dict:
        return value
    pruned = {}
    for key, sub in shape.items():
        if key in value:
            pruned[key] = value[key] if sub is None else _prune(value[key], sub)
    return pruned


def _rest(rule: CompiledRule) -> Iterable[Expression]:
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


def _expressions(rule: CompiledRule) -> Iterable[Expression]:
    """Every expression of a match (not ``cancel_when``, which has its own context)."""
    yield rule.when
    yield from _rest(rule)


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
        """The CEL context every expression of the event's rules can be evaluated in.

        Converting values to CEL is most of the cost of evaluating rules, so it holds
        only what those expressions read (:data:`Shape`).
        """
        plan = self._plans.get(event["type"])
        needs = _Needs.everything() if plan is None else plan.full
        return _context(needs, event, state, now, self._delays)

    @cached_property
    def state_fields(self) -> dict[str, frozenset[str] | None]:
        """event type -> the state fields read by the rules listening to it and by the
        ``cancel_when`` of the timer rules it may cancel (None: all of them). The
        caller need not compute the others; an event type not here reads none."""
        reads: dict[str, list[Expression]] = {}
        for event_type, rules in self.by_type.items():
            reads.setdefault(event_type, []).extend(e for r in rules for e in _expressions(r))
        for event_type, rules in self.cancellers.items():
            reads.setdefault(event_type, []).extend(
                r.cancel_when for r in rules if r.cancel_when is not None
            )
        fields: dict[str, frozenset[str] | None] = {}
        for event_type, expressions in reads.items():
            state = _reads(expressions).get("state", {})
            fields[event_type] = None if state is None else frozenset(state)
        return fields

    @cached_property
    def _plans(self) -> dict[str, _Plan]:
        return {
            event_type: _Plan(
                rules,
                _Needs.of(rule.when for rule in rules),
                _Needs.of(e for rule in rules for e in _expressions(rule)),
            )
            for event_type, rules in self.by_type.items()
        }

    @cached_property
    def _delays(self) -> dict[str, float]:
        return dict(self.delays)

    @cached_property
    def _cancel_needs(self) -> dict[str, _Needs]:
        return {
            rule.id: _Needs.of([rule.cancel_when])
            for rules in self.cancellers.values()
            for rule in rules
            if rule.cancel_when is not None
        }

    @cached_property
    def _followups(self) -> dict[tuple[str, ...], tuple[_Needs, _Needs]]:
        """Ids of rules whose ``when`` held -> what their other expressions read, and
        what of that the ``when`` context lacks. Filled as combinations occur; few do."""
        return {}

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
        needs = self._cancel_needs.get(rule.id)
        if needs is None:
            needs = _Needs.of([rule.cancel_when])
        try:
            context = _context(needs, event, state, now, self._delays, timer)
            return rule.cancel_when(context) is True
        except Exception:
            return False

    def evaluate(self, event: dict[str, Any], state: dict[str, Any], now: float) -> Evaluation:
        """Every listening rule's match or error, in rule order.

        In two steps, to convert less: the ``when`` conditions first, in a context of
        what they read (or their outcome for the same values, remembered: see
        :class:`_Memo`); then, only for the rules that held, their other expressions,
        in that context once what they read beyond it is (re)added.
        """
        result = Evaluation()
        plan = self._plans.get(event["type"])
        if plan is None:
            return result
        variables = _variables(plan.when, event, state, now, self._delays)
        key = plan.memo.key(variables)
        pending = plan.memo.get(key)
        context = None
        if pending is None:
            context = cel.Context(variables=variables, functions=plan.when.functions)
            pending = _whens(plan.rules, context)
            plan.memo.put(key, pending)
        held = tuple(rule.id for rule, error in pending if error is None)
        if not held:
            result.errors.extend((rule.id, error) for rule, error in pending if error)
            return result
        followup = self._followups.get(held)
        if followup is None:
            rest = _Needs.of(e for rule, error in pending if error is None for e in _rest(rule))
            followup = self._followups[held] = (rest, plan.when.missing(rest))
        if context is None:
            context = _context(followup[0], event, state, now, self._delays)
        else:
            # add_variable replaces a variable: the ones already complete stay converted.
            more = followup[1]
            for name, value in _variables(more, event, state, now, self._delays).items():
                context.add_variable(name, value)
            for name, function in (more.functions or {}).items():
                context.add_function(name, function)
        for rule, error in pending:
            if error is not None:
                result.errors.append((rule.id, error))
                continue
            try:
                result.matches.append(_match(rule, context, event))
            except Exception as exc:
                result.errors.append((rule.id, _failure(exc)))
        return result


#: (rule, None) when its ``when`` held, (rule, what failed) when it raised; rules whose
#: ``when`` was false are left out.
Outcome = tuple[tuple[CompiledRule, str | None], ...]


def _whens(rules: Iterable[CompiledRule], context: Any) -> Outcome:
    outcome: list[tuple[CompiledRule, str | None]] = []
    for rule in rules:
        try:
            if _holds(rule, context):
                outcome.append((rule, None))
        except Exception as exc:  # a rule bug must not stop the customer's events
            outcome.append((rule, _failure(exc)))
    return tuple(outcome)


#: orjson options for memo keys: values orjson would write as if they were JSON but that
#: CEL sees otherwise (datetimes, dataclasses, subclasses of str, int, dict, list) raise.
_KEY_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


class _Memo:
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
class _Needs:
    """What some expressions read: variables (:data:`Shape`) and our functions."""

    variables: Mapping[str, Shape]
    #: The functions of :data:`FUNCTIONS` they call (None: none).
    functions: dict[str, Callable[..., Any]] | None

    @classmethod
    def of(cls, expressions: Iterable[Expression]) -> _Needs:
        listed = list(expressions)
        called = {name for e in listed for name in e.program.functions()}
        functions = {name: f for name, f in FUNCTIONS.items() if name in called}
        return cls(_reads(listed), functions or None)

    @classmethod
    def everything(cls) -> _Needs:
        return cls(dict.fromkeys(("event", "state", "now", "delays")), FUNCTIONS)

    def missing(self, other: _Needs) -> _Needs:
        """What a context of ``self`` must get to also serve ``other``: each variable it
        lacks something of, with what both read, and the functions it lacks."""
        variables = {
            name: _merge(self.variables[name], shape) if name in self.variables else shape
            for name, shape in other.variables.items()
            if name not in self.variables or not _covers(self.variables[name], shape)
        }
        mine = self.functions or {}
        functions = {n: f for n, f in (other.functions or {}).items() if n not in mine}
        return _Needs(variables, functions or None)


@dataclass(slots=True, frozen=True)
class _Plan:
    """How the rules of one event type are evaluated."""

    rules: tuple[CompiledRule, ...]
    #: What their ``when`` conditions read, and what all their expressions read.
    when: _Needs
    full: _Needs
    memo: _Memo = field(default_factory=_Memo)


def _context(
    needs: _Needs,
    event: dict[str, Any],
    state: dict[str, Any],
    now: float,
    delays: dict[str, float],
    timer: dict[str, Any] | None = None,
) -> Any:
    """A CEL context with only what ``needs`` reads; ``timer`` only for ``cancel_when``."""
    variables = _variables(needs, event, state, now, delays, timer)
    return cel.Context(variables=variables, functions=needs.functions)


def _variables(
    needs: _Needs,
    event: dict[str, Any],
    state: dict[str, Any],
    now: float,
    delays: dict[str, float],
    timer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    reads = needs.variables
    variables: dict[str, Any] = {}
    if "event" in reads:
        variables["event"] = _prune(event, reads["event"])
    if "state" in reads:
        variables["state"] = _prune(state, reads["state"])
    if "now" in reads:
        variables["now"] = now
    if "delays" in reads:
        variables["delays"] = _prune(delays, reads["delays"])
    if timer is not None and "timer" in reads:
        variables["timer"] = _prune(timer, reads["timer"])
    return variables


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


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


def _holds(rule: CompiledRule, context: Any) -> bool:
    holds = rule.when(context)
    if not isinstance(holds, bool):
        raise TypeError(f"'when' returned {type(holds).__name__}, not a bool ({rule.when.text})")
    return holds


def _match(rule: CompiledRule, context: Any, event: dict[str, Any]) -> Match:
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
