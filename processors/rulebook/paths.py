"""Which parts of ``event``, ``state``, ``delays`` and ``timer`` CEL expressions read.

Converting values to CEL is most of the cost of evaluating rules, so a context
holds only what its expressions can see: the paths they select, read from their
text, and values pruned to them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from processors.rulebook.model import Expression

#: What of a value expressions read: ``None``, all of it; a dict, only those keys (each
#: with what of it they read). Converting values to CEL is most of the cost of evaluating
#: rules, so a context holds only what its expressions can see.
Shape = dict[str, "Shape"] | None

#: The variables a rule context can have.
_VARIABLE = re.compile(r"\b(event|state|now|delays|timer)\b")
#: ``.<name>`` after a variable or field; group 2 set: a method call (``.size()``, ``.exists(``)
#: or a comment that could hide one, so the value before it is read whole.
_SELECT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)(\s*(?:\(|//))?")


def paths(text: str) -> Iterator[tuple[str, ...]]:
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


def reads(expressions: Iterable[Expression]) -> dict[str, Shape]:
    """Variable name -> what of it these expressions read; an unread variable is absent."""
    tree: dict[str, Shape] = {}
    for expression in expressions:
        for path in paths(expression.text):
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


def covers(have: Shape, need: Shape) -> bool:
    """Does a value pruned to ``have`` hold everything of ``need``?"""
    if have is None:
        return True
    if need is None:
        return False
    return all(key in have and covers(have[key], sub) for key, sub in need.items())


def merge(one: Shape, other: Shape) -> Shape:
    """What reads of both shapes need."""
    if one is None or other is None:
        return None
    merged = dict(one)
    for key, shape in other.items():
        merged[key] = merge(one[key], shape) if key in one else shape
    return merged


def prune(value: Any, shape: Shape) -> Any:
    """``value`` with only what ``shape`` reads: a missing key stays missing (``has()``
    is false, a selection fails as before), a value that is not a dict is kept whole."""
    if shape is None or type(value) is not dict:
        return value
    pruned = {}
    for key, sub in shape.items():
        if key in value:
            pruned[key] = value[key] if sub is None else prune(value[key], sub)
    return pruned
