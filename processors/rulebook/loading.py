"""Rule files: YAML read with YAML 1.2 booleans, checked against the schema, compiled.

Any problem raises :class:`RuleFileError` naming the file, the rule and the
field, and saying what to do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cel
import orjson
import yaml
from jsonschema import Draft202012Validator

from processors.rulebook.model import CompiledRule, Expression

SCHEMA_PATH = Path(__file__).with_name("rule_file.schema.json")
_VALIDATOR = Draft202012Validator(orjson.loads(SCHEMA_PATH.read_bytes()))
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


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


def read_rule_files(directory: Path) -> list[tuple[str, Any]]:
    """(path, parsed document) of every ``*.yaml`` file in ``directory``, sorted by name."""
    documents: list[tuple[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            documents.append((str(path), yaml.load(path.read_text(), Loader=_RuleLoader)))
        except yaml.YAMLError as exc:
            raise RuleFileError(f"{path}: not valid YAML ({exc}) — fix the file's syntax") from None
    return documents


def check_schema(source: str, document: Any) -> None:
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


def compile_rule(source: str, raw: dict[str, Any], delays: Mapping[str, float]) -> CompiledRule:
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

    def duration_or_delay(text: str | None, where: str) -> float | None:
        """A duration, or the name of a delay setting (``after``, ``trigger.cooldown``)."""
        named = None if text is None else delays.get(text)
        return named if named is not None else duration(text, where)

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
        cooldown_seconds=duration_or_delay(trigger.get("cooldown"), "trigger.cooldown"),
        cooldown_subject=expr(trigger.get("cooldown_subject"), "trigger.cooldown_subject"),
        expires_in=duration(trigger.get("expires_in"), "trigger.expires_in"),
        expires_at=expr(trigger.get("expires_at"), "trigger.expires_at"),
        reason=reason,
        payload=tuple(payload),
        include=tuple(trigger.get("include", ())),
        after=duration_or_delay(raw.get("after"), "after"),
        at=expr(raw.get("at"), "at"),
        timer_key=expr(raw.get("timer_key"), "timer_key"),
        cancel_on=frozenset(raw.get("cancel_on", ())),
        cancel_when=expr(raw.get("cancel_when"), "cancel_when"),
    )
