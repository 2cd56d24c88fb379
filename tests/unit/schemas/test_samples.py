"""The samples are the contract's examples: every valid one passes, every invalid one
gets its reason and an error that names the field and says what to do."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from schemas import (
    CHECK_REASONS,
    EVENT_TYPES,
    KNOWN_EVENT_TYPES,
    RECORD_KINDS,
    VENDOR,
    EventValidator,
    Rejection,
    identity_key,
    load_schema,
    validate_record,
)
from tests.unit.schemas.helpers import (
    InvalidSample,
    invalid_samples,
    record_samples,
    valid_event_paths,
    valid_events,
)

#: "<field path>: <what is wrong> — <what to do>"
#: (``customer_id/identifiers``: either field, for ``unidentified``)
MESSAGE = re.compile(
    r"(?P<path>[a-z_]+(?:/[a-z_]+)?(?:\.[a-z_]+|\[\d+\])*): \S.* — \S.*", re.DOTALL
)


@pytest.fixture(scope="module")
def validator() -> EventValidator:
    return EventValidator()


@pytest.mark.parametrize("path", valid_event_paths(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_valid_sample_passes(validator: EventValidator, path: Path) -> None:
    event = json.loads(path.read_text())
    assert event["type"] == path.parent.name, "sample is filed under the wrong type"
    key = event["customer_id"] if "customer_id" in event else identity_key(event["identifiers"])
    result = validator.check(event["channel"], key.encode(), path.read_bytes())
    assert not isinstance(result, Rejection), result
    assert result == event


def test_at_least_two_valid_samples_per_type_covering_every_optional_field() -> None:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for _, event in valid_events():
        by_type.setdefault(event["type"], []).append(event)
    assert sorted(by_type) == sorted(KNOWN_EVENT_TYPES)
    envelope_fields: set[str] = set()
    for event_type, events in by_type.items():
        assert len(events) >= 2, event_type
        schema = load_schema(VENDOR, EVENT_TYPES[event_type].schema)
        used = {name for event in events for name in event["payload"]}
        missing = set(schema["properties"]) - used
        assert not missing, f"{event_type}: no valid sample uses {missing}"
        assert used <= set(schema["properties"])
        envelope_fields |= {name for event in events for name in event}
    assert envelope_fields == set(load_schema(VENDOR, "event")["properties"])


@pytest.mark.parametrize("sample", invalid_samples(), ids=lambda s: s.id)
def test_invalid_sample_gets_its_reason_and_names_the_field(
    validator: EventValidator, sample: InvalidSample
) -> None:
    result = validator.check(sample.channel, sample.key, sample.value, sample.max_bytes)
    assert isinstance(result, Rejection), f"accepted: {sample.note}"
    assert result.reason == sample.reason, result.errors
    assert result.errors, "a rejection without errors"
    for error in result.errors:
        assert MESSAGE.fullmatch(error), f"not '<field>: <problem> — <what to do>': {error!r}"
    assert any(error.startswith(f"{sample.field}: ") for error in result.errors), result.errors


def test_invalid_samples_cover_every_reason_and_every_type() -> None:
    samples = invalid_samples()
    assert {s.reason for s in samples} == set(CHECK_REASONS)
    types = {s.event.get("type") for s in samples if isinstance(s.event, dict)}
    assert set(KNOWN_EVENT_TYPES) <= types
    # Every type has a payload that breaks its own schema (not just a broken envelope).
    payload_broken = {
        s.event["type"]
        for s in samples
        if s.reason == "schema_violation" and s.field.startswith("payload.")
    }
    assert payload_broken == set(KNOWN_EVENT_TYPES)


def test_every_rejection_fits_in_a_deadletter_record(validator: EventValidator) -> None:
    for sample in invalid_samples():
        result = validator.check(sample.channel, sample.key, sample.value, sample.max_bytes)
        assert isinstance(result, Rejection)
        record = {
            "reason": result.reason,
            "errors": list(result.errors),
            "source": {"topic": f"touchpoint.{sample.channel}", "partition": 0, "offset": 7},
            "raw": (sample.value or b"")[:8192].decode("utf-8", errors="replace"),
            "received_at": "2026-01-15T09:30:00.000Z",
        }
        assert validate_record("deadletter", record) == [], sample.id


def test_record_samples_exist_for_every_kind() -> None:
    assert {kind for kind, _, _ in record_samples("valid")} == set(RECORD_KINDS)
    assert {kind for kind, _, _ in record_samples("invalid")} == set(RECORD_KINDS)


@pytest.mark.parametrize(
    ("kind", "path", "record"),
    record_samples("valid"),
    ids=lambda v: v.stem if isinstance(v, Path) else None,
)
def test_valid_record_sample_passes(kind: str, path: Path, record: dict[str, Any]) -> None:
    assert validate_record(kind, record) == []


@pytest.mark.parametrize(
    ("kind", "path", "sample"),
    record_samples("invalid"),
    ids=lambda v: v.stem if isinstance(v, Path) else None,
)
def test_invalid_record_sample_fails_naming_the_field(
    kind: str, path: Path, sample: dict[str, Any]
) -> None:
    errors = validate_record(kind, sample["record"])
    assert errors, sample["note"]
    for error in errors:
        assert MESSAGE.fullmatch(error), error
    assert any(error.startswith(f"{sample['field']}: ") for error in errors), errors
