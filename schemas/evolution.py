"""The evolution rule: a newer version of a schema may only add optional properties.

Everything valid under the older version must stay valid under the newer one,
and the newer one may only accept more by allowing new, optional fields. So,
at every object node (recursively through ``properties`` and ``items``):

* every old property is still there, and its definition follows the same rule;
* a new property is not ``required``; ``required`` does not change;
* an ``enum`` may gain values (old data stays valid), never lose one;
* every other keyword (type, bounds, pattern, format, additionalProperties...)
  is unchanged. Only annotations (``description``, ``title``, ``examples``,
  ``$comment``) and the ``self`` block may differ.

The MODEL number must stay the same: a breaking change is a new event type.
"""

from __future__ import annotations

from typing import Any

from schemas.registry import parse_schemaver

#: Keywords that never change what is valid.
ANNOTATIONS = frozenset({"description", "title", "examples", "$comment", "self", "default"})


def check_evolution(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What in ``new`` breaks the rule relative to ``old``; empty when it is a valid evolution."""
    problems: list[str] = []
    old_self, new_self = old.get("self", {}), new.get("self", {})
    if old_self and new_self:
        old_version = parse_schemaver(old_self["version"])
        new_version = parse_schemaver(new_self["version"])
        if new_version <= old_version:
            problems.append(
                f"version {new_self['version']} is not newer than {old_self['version']}"
            )
        if new_version[0] != old_version[0]:
            problems.append(
                "MODEL changed: a breaking change is a new event type, not a new version"
            )
        for field in ("vendor", "name", "format"):
            if old_self.get(field) != new_self.get(field):
                problems.append(f"self.{field} changed")
    _compare(old, new, "$", problems)
    return problems


def _compare(old: Any, new: Any, where: str, problems: list[str]) -> None:
    if not isinstance(old, dict) or not isinstance(new, dict):
        if old != new:
            problems.append(f"{where}: changed from {old!r} to {new!r}")
        return
    keywords = (set(old) | set(new)) - ANNOTATIONS
    for keyword in sorted(keywords):
        if keyword == "properties":
            continue
        if keyword == "items":
            if "items" not in old or "items" not in new:
                problems.append(f"{where}: items added or removed")
            else:
                _compare(old["items"], new["items"], f"{where}[]", problems)
            continue
        if keyword not in old:
            problems.append(f"{where}: keyword {keyword!r} added ({new[keyword]!r})")
        elif keyword not in new:
            problems.append(f"{where}: keyword {keyword!r} removed (was {old[keyword]!r})")
        elif (
            keyword == "enum" and isinstance(old[keyword], list) and isinstance(new[keyword], list)
        ):
            # More allowed values accept more, and everything valid before stays valid.
            dropped = [value for value in old[keyword] if value not in new[keyword]]
            if dropped:
                problems.append(f"{where}: enum values removed: {dropped}")
        elif keyword == "required":
            if sorted(old[keyword]) != sorted(new[keyword]):
                problems.append(
                    f"{where}: required changed from {sorted(old[keyword])} to "
                    f"{sorted(new[keyword])}; new fields must be optional"
                )
        elif old[keyword] != new[keyword]:
            problems.append(f"{where}: {keyword} changed from {old[keyword]!r} to {new[keyword]!r}")
    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    for name in old_props:
        if name not in new_props:
            problems.append(f"{where}.{name}: property removed")
        else:
            _compare(old_props[name], new_props[name], f"{where}.{name}", problems)
    for name in new_props:
        if name in old_props:
            continue
        if name in new.get("required", ()):
            problems.append(f"{where}.{name}: new property is required; it must be optional")
        if old.get("additionalProperties", True) is not False:
            problems.append(
                f"{where}.{name}: new property on an open object (old data may "
                "already use that name with another shape)"
            )
