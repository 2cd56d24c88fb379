"""A loaded rule set: its rules by event type, and evaluating them for an event."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import cel
import orjson

from processors.rulebook.evaluation import (
    Needs,
    Plan,
    cel_context,
    failure,
    match_rule,
    variables_for,
    whens,
)
from processors.rulebook.loading import (
    RuleFileError,
    check_schema,
    compile_rule,
    read_rule_files,
)
from processors.rulebook.model import (
    CompiledRule,
    Evaluation,
    Expression,
    followup_expressions,
    match_expressions,
)
from processors.rulebook.paths import reads


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
            check_schema(source, document)
            for raw in document["rules"]:
                rule = compile_rule(source, raw, delays)
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

    @cached_property
    def state_fields(self) -> dict[str, frozenset[str] | None]:
        """event type -> the state fields read by the rules listening to it and by the
        ``cancel_when`` of the timer rules it may cancel (None: all of them). The
        caller need not compute the others; an event type not here reads none."""
        read: dict[str, list[Expression]] = {}
        for event_type, rules in self.by_type.items():
            read.setdefault(event_type, []).extend(e for r in rules for e in match_expressions(r))
        for event_type, rules in self.cancellers.items():
            read.setdefault(event_type, []).extend(
                r.cancel_when for r in rules if r.cancel_when is not None
            )
        fields: dict[str, frozenset[str] | None] = {}
        for event_type, expressions in read.items():
            state = reads(expressions).get("state", {})
            fields[event_type] = None if state is None else frozenset(state)
        return fields

    @cached_property
    def _plans(self) -> dict[str, Plan]:
        return {
            event_type: Plan(rules, Needs.of(rule.when for rule in rules))
            for event_type, rules in self.by_type.items()
        }

    @cached_property
    def _delays(self) -> dict[str, float]:
        return dict(self.delays)

    @cached_property
    def _cancel_needs(self) -> dict[str, Needs]:
        return {
            rule.id: Needs.of([rule.cancel_when])
            for rules in self.cancellers.values()
            for rule in rules
            if rule.cancel_when is not None
        }

    @cached_property
    def _followups(self) -> dict[tuple[str, ...], tuple[Needs, Needs]]:
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
            needs = Needs.of([rule.cancel_when])
        try:
            context = cel_context(needs, event, state, now, self._delays, timer)
            return rule.cancel_when(context) is True
        except Exception:
            return False

    def evaluate(self, event: dict[str, Any], state: dict[str, Any], now: float) -> Evaluation:
        """Every listening rule's match or error, in rule order.

        In two steps, to convert less: the ``when`` conditions first, in a context of
        what they read (or their outcome for the same values, remembered: see
        :class:`~processors.rulebook.evaluation.Memo`); then, only for the rules that
        held, their other expressions, in that context once what they read beyond it
        is (re)added.
        """
        result = Evaluation()
        plan = self._plans.get(event["type"])
        if plan is None:
            return result
        variables = variables_for(plan.when, event, state, now, self._delays)
        key = plan.memo.key(variables)
        pending = plan.memo.get(key)
        context = None
        if pending is None:
            context = cel.Context(variables=variables, functions=plan.when.functions)
            pending = whens(plan.rules, context)
            plan.memo.put(key, pending)
        held = tuple(rule.id for rule, error in pending if error is None)
        if not held:
            result.errors.extend((rule.id, error) for rule, error in pending if error)
            return result
        followup = self._followups.get(held)
        if followup is None:
            rest = Needs.of(
                e for rule, error in pending if error is None for e in followup_expressions(rule)
            )
            followup = self._followups[held] = (rest, plan.when.missing(rest))
        if context is None:
            context = cel_context(followup[0], event, state, now, self._delays)
        else:
            # add_variable replaces a variable: the ones already complete stay converted.
            more = followup[1]
            for name, value in variables_for(more, event, state, now, self._delays).items():
                context.add_variable(name, value)
            for name, function in (more.functions or {}).items():
                context.add_function(name, function)
        for rule, error in pending:
            if error is not None:
                result.errors.append((rule.id, error))
                continue
            try:
                result.matches.append(match_rule(rule, context, event))
            except Exception as exc:
                result.errors.append((rule.id, failure(exc)))
        return result


def load_ruleset(directory: Path, delays: Mapping[str, float] | None = None) -> RuleSet:
    """Every ``*.yaml`` file in ``directory`` (sorted by name); raises RuleFileError."""
    if not directory.is_dir():
        raise RuleFileError(
            f"{directory}: no such rules folder — set OMNI_RULES_DIR to the folder of rule files"
        )
    documents = read_rule_files(directory)
    if not documents:
        raise RuleFileError(f"{directory}: no *.yaml rule files — add at least one rule file")
    return RuleSet.from_documents(documents, delays)


def try_reload(directory: Path, current: RuleSet) -> tuple[RuleSet, str | None]:
    """The rule set in ``directory`` now, or ``current`` and why the new one was refused."""
    try:
        return load_ruleset(directory, current.delays), None
    except (RuleFileError, OSError) as exc:
        return current, str(exc)
