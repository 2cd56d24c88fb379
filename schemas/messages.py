"""jsonschema errors -> sentences a channel developer can act on.

Every message reads ``<field path>: <what is wrong> — <what to do>``, for example
``payload.limit: -5 is less than or equal to the minimum of 0 — send a positive number``.
Field paths use dots for object members and ``[i]`` for array items; values are
shown as JSON, cut at :data:`MAX_VALUE_CHARS` characters. The schema's
``description`` of a field is the hint where a rule alone would be cryptic (a
pattern, a missing field).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from jsonschema.exceptions import ValidationError

from schemas.formats import DATE_TIME_EXAMPLES, date_time_problem

MAX_VALUE_CHARS = 60
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)

_JSON_TYPE_NAMES = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "a JSON object",
    "array": "a JSON array",
    "null": "null",
}

PathElement = str | int


def show(value: Any) -> str:
    """A value as JSON, cut to a readable length."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # not JSON-able: cannot come from orjson.loads, but be safe
        text = repr(value)
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 1] + "…"
    return text


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, with its article: 'a string', 'an object'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def render_path(prefix: str, path: Iterable[PathElement]) -> str:
    """``("payload", ["products_add", 2])`` -> ``payload.products_add[2]``."""
    text = prefix
    for element in path:
        if isinstance(element, int):
            text += f"[{element}]"
        elif _PLAIN_KEY.fullmatch(element):
            text = f"{text}.{element}" if text else element
        else:
            text += f"[{show(element)}]"
    return text


def _field_description(schema: dict[str, Any], name: str) -> str | None:
    properties = schema.get("properties", {})
    sub = properties.get(name) if isinstance(properties, dict) else None
    if isinstance(sub, dict) and isinstance(sub.get("description"), str):
        return str(sub["description"])
    return None


def _allowed(values: Sequence[Any]) -> str:
    return ", ".join(str(v) if isinstance(v, str) else show(v) for v in values)


def _number(value: Any) -> str:
    return show(value)


def _expected_types(expected: Any) -> str:
    names = expected if isinstance(expected, list) else [expected]
    return " or ".join(_JSON_TYPE_NAMES.get(str(n), str(n)) for n in names)


def describe(error: ValidationError, prefix: str, root: str) -> list[tuple[str, str]]:
    """One jsonschema error -> ``(field path, message)`` pairs (a few keywords give several)."""
    keyword = error.validator
    rule: Any = error.validator_value
    value: Any = error.instance
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    elements = list(error.absolute_path)
    here = render_path(prefix, elements) or root

    def child(name: str) -> str:
        return render_path(prefix, [*elements, name])

    if keyword == "required" and isinstance(value, dict):
        out = []
        for name in rule:
            if name in value:
                continue
            hint = _field_description(schema, name)
            what = f"add it: {hint}" if hint else "add it"
            out.append((child(name), f"{child(name)}: required field is missing — {what}"))
        return out
    if keyword == "additionalProperties" and isinstance(value, dict):
        known = list(schema.get("properties", {}))
        extras = [name for name in value if name not in known]
        where = here if elements or prefix else "the event" if root == "value" else f"a {root}"
        return [
            (
                child(name),
                f"{child(name)}: unknown field — remove it; {where} allows only: "
                f"{_allowed(known)} (a new field needs a new schema version first)",
            )
            for name in extras
        ]
    if keyword == "type":
        expected = _expected_types(rule)
        return [
            (here, f"{here}: {show(value)} is {json_type(value)}, not {expected} — send {expected}")
        ]
    if keyword == "enum":
        return [(here, f"{here}: {show(value)} is not allowed — use one of: {_allowed(rule)}")]
    if keyword == "const":
        return [(here, f"{here}: {show(value)} is not allowed — send {show(rule)}")]
    if (
        schema.get("format") == "date-time"
        and keyword in ("format", "pattern", "minLength", "maxLength")
        and isinstance(value, str)
    ):
        return [
            (
                here,
                f"{here}: {show(value)} {date_time_problem(value)} — send an RFC 3339 "
                f"date-time with upper-case T and a UTC offset, e.g. {DATE_TIME_EXAMPLES}",
            )
        ]
    if keyword == "minLength" and isinstance(value, str):
        if not value:
            return [
                (
                    here,
                    f"{here}: is empty — send at least {rule} character{'s' if rule != 1 else ''}",
                )
            ]
        return [
            (
                here,
                f"{here}: {show(value)} is {len(value)} characters long, shorter than "
                f"the minimum of {rule} — send at least {rule} characters",
            )
        ]
    if keyword == "maxLength" and isinstance(value, str):
        return [
            (
                here,
                f"{here}: is {len(value)} characters long, longer than the maximum of "
                f"{rule} — shorten it to at most {rule} characters",
            )
        ]
    if keyword == "pattern" and isinstance(value, str):
        hint = schema.get("description")
        expected = f"send {hint}" if isinstance(hint, str) else f"send a value matching {rule}"
        return [(here, f"{here}: {show(value)} does not match {rule} — {expected}")]
    if keyword == "format":
        return [(here, f"{here}: {show(value)} is not a valid {rule} — send a valid {rule}")]
    if keyword == "exclusiveMinimum":
        todo = "send a positive number" if rule == 0 else f"send a number greater than {rule}"
        return [
            (
                here,
                f"{here}: {_number(value)} is less than or equal to the minimum of "
                f"{_number(rule)} — {todo}",
            )
        ]
    if keyword == "minimum":
        return [
            (
                here,
                f"{here}: {_number(value)} is less than the minimum of {_number(rule)} — "
                f"send a number from {_number(rule)}"
                f"{_upper_bound(schema)}",
            )
        ]
    if keyword == "exclusiveMaximum":
        return [
            (
                here,
                f"{here}: {_number(value)} is greater than or equal to the maximum of "
                f"{_number(rule)} — send a number less than {_number(rule)}",
            )
        ]
    if keyword == "maximum":
        return [
            (
                here,
                f"{here}: {_number(value)} is more than the maximum of {_number(rule)} — "
                f"send at most {_number(rule)}",
            )
        ]
    if keyword == "minProperties" and isinstance(value, dict):
        fields = list(schema.get("properties", {}))
        todo = f"send at least one of: {_allowed(fields)}" if fields else f"send at least {rule}"
        return [
            (here, f"{here}: has {len(value)} fields, fewer than the minimum of {rule} — {todo}")
        ]
    if keyword == "maxProperties" and isinstance(value, dict):
        return [
            (
                here,
                f"{here}: has {len(value)} fields, more than the maximum of {rule} — "
                "send fewer fields",
            )
        ]
    if keyword == "minItems" and isinstance(value, list):
        return [
            (
                here,
                f"{here}: has {len(value)} items, fewer than the minimum of {rule} — "
                f"send at least {rule} item{'s' if rule != 1 else ''}",
            )
        ]
    if keyword == "maxItems" and isinstance(value, list):
        return [
            (
                here,
                f"{here}: has {len(value)} items, more than the maximum of {rule} — "
                f"send at most {rule} (split the change across several events)",
            )
        ]
    if keyword == "uniqueItems" and isinstance(value, list):
        seen: list[Any] = []
        duplicates: list[Any] = []
        for item in value:
            if item in seen and item not in duplicates:
                duplicates.append(item)
            seen.append(item)
        return [
            (here, f"{here}: has duplicate items ({_allowed(duplicates)}) — send each item once")
        ]
    return [(here, f"{here}: {error.message}")]


def _upper_bound(schema: dict[str, Any]) -> str:
    if "maximum" in schema:
        return f" to {_number(schema['maximum'])}"
    return " up"


def render(
    errors: Iterable[ValidationError], prefix: str = "", root: str = "value"
) -> list[tuple[str, str]]:
    """All errors as ``(field path, message)``, sorted by path, without repeats."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    tagged = [
        (path, str(error.validator), message)
        for error in errors
        for path, message in describe(error, prefix, root)
    ]
    # A pattern or enum error says more than a length error on the same field.
    patterned = {path for path, keyword, _ in tagged if keyword in ("pattern", "enum")}
    pairs = [
        (path, message)
        for path, keyword, message in tagged
        if not (keyword in ("minLength", "maxLength") and path in patterned)
    ]
    for path, message in sorted(pairs, key=lambda pair: pair[0]):
        if message not in seen:
            seen.add(message)
            out.append((path, message))
    return out
