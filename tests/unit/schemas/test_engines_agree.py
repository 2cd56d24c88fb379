"""fastjsonschema (the fast path) and jsonschema (the explanations) must agree.

If fastjsonschema accepted something jsonschema rejects, bad events would reach the
worker; if it rejected something jsonschema accepts, a dead letter would come with
no explanation. Checked on every sample and on systematic mutations of them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from schemas import EVENT_TYPES, CompiledSchema, EventValidator
from tests.unit.schemas.helpers import invalid_samples, record_samples, valid_events

#: Values every leaf gets replaced with: wrong types, edge lengths, tricky strings.
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    0.5,
    3.0,
    10**20,
    -0.0,
    "",
    "x",
    "x" * 129,
    "GB",
    "gb",
    "GB\n",
    "GBP",
    "\u0661\u0662",
    "\uff27\uff22",
    "2026-01-01T10:00:00",
    "2026-01-01T10:00:00Z",
    "2026-01-01T10:00:00+0100",
    "2026-02-30T10:00:00Z",
    "2026-01-01T10:00:00Z\n",
    "0123456789abcdef0123456789abcdef",
    "0123456789ABCDEF0123456789ABCDEF",
    [],
    ["a", "a"],
    ["credit_card"],
    {},
    {"id": "x", "kind": "y"},
    "Europe/Madrid",
    "en-GB",
    "single",
    # identifiers (event 1-0-4): E.164, e-mail, tokens, hashes, and near misses
    "+447700900123",
    "447700900123",
    "+0447700900123",
    "+44 7700 900123",
    "maria.garcia@example.com",
    "Maria@example.com",
    "maria@example",
    "a@b@c.d",
    "maria\u00a0g@example.com",
    "web:3f2a9c1e",
    "sha256:" + "ab" * 32,
    "sha256:" + "AB" * 32,
    "sha256:" + "ab" * 31,
]


def verdicts(compiled: CompiledSchema, instance: Any) -> tuple[bool, bool]:
    return compiled.is_valid(instance), not compiled.explain(instance)


def mutations(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Drop each member, replace each leaf with each odd value, add a stranger."""

    def paths(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield (*path, key)
                yield from paths(value, (*path, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield (*path, index)
                yield from paths(value, (*path, index))

    for path in list(paths(doc, ())):
        parent_path, last = path[:-1], path[-1]
        dropped = copy.deepcopy(doc)
        parent = dropped
        for element in parent_path:
            parent = parent[element]
        del parent[last]
        yield dropped
        for odd in ODD_VALUES:
            changed = copy.deepcopy(doc)
            parent = changed
            for element in parent_path:
                parent = parent[element]
            parent[last] = copy.deepcopy(odd)
            yield changed
    yield {**doc, "stranger": 1}
    # A stranger in every nested object too (a payload may be an empty object).
    for path in list(paths(doc, ())):
        node: Any = doc
        for element in path:
            node = node[element]
        if isinstance(node, dict):
            changed = copy.deepcopy(doc)
            parent = changed
            for element in path:
                parent = parent[element]
            parent["stranger"] = 1
            yield changed
    yield {}


@pytest.fixture(scope="module")
def validator() -> EventValidator:
    return EventValidator()


def test_agree_on_every_event_sample(validator: EventValidator) -> None:
    documents = [event for _, event in valid_events()]
    documents += [s.event for s in invalid_samples() if isinstance(s.event, dict)]
    checked = 0
    for doc in documents:
        for envelope in (validator.envelope, validator.identified):
            fast, slow = verdicts(envelope, doc)
            assert fast == slow, (envelope.name, doc)
        payload_schema = validator.payloads.get(doc.get("type"))  # type: ignore[arg-type]
        if payload_schema is not None and isinstance(doc.get("payload"), dict):
            assert (
                verdicts(payload_schema, doc["payload"])[0]
                == verdicts(payload_schema, doc["payload"])[1]
            ), doc
            checked += 1
    assert checked > 40


def test_agree_on_every_record_sample(validator: EventValidator) -> None:
    for kind, path, document in record_samples("valid"):
        assert verdicts(validator.records[kind], document) == (True, True), path
    for kind, path, sample in record_samples("invalid"):
        assert verdicts(validator.records[kind], sample["record"]) == (False, False), path


@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_agree_on_mutations_of_valid_events(validator: EventValidator, event_type: str) -> None:
    valid = [event for _, event in valid_events() if event["type"] == event_type]
    seen = {True: 0, False: 0}
    for event in valid:
        for mutated in mutations(event):
            for envelope in (validator.envelope, validator.identified):
                fast, slow = verdicts(envelope, mutated)
                assert fast == slow, (envelope.name, mutated)
            payload = mutated.get("payload")
            if mutated.get("type") == event_type and isinstance(payload, dict):
                fast, slow = verdicts(validator.payloads[event_type], payload)
                assert fast == slow, payload
                seen[fast] += 1
    # The mutations hit both sides (a payload with few fields has few ways to break).
    fields = len(validator.payloads[event_type].schema["properties"])
    assert seen[True] > 10 and seen[False] > min(50, 10 * fields), seen


@pytest.mark.parametrize("kind", ["trigger", "decision", "deadletter", "identity"])
def test_agree_on_mutations_of_valid_records(validator: EventValidator, kind: str) -> None:
    seen = {True: 0, False: 0}
    for record_kind, _, document in record_samples("valid"):
        if record_kind != kind:
            continue
        for mutated in mutations(document):
            fast, slow = verdicts(validator.records[kind], mutated)
            assert fast == slow, mutated
            seen[fast] += 1
    assert seen[True] > 5 and seen[False] > 50, seen
