"""Schemas evolve only by adding optional properties (and are immutable once published)."""

from __future__ import annotations

import copy
from itertools import pairwise
from typing import Any

import pytest

from schemas import (
    IDENTIFIER_TYPES,
    VENDOR,
    CompiledSchema,
    check_evolution,
    iter_schemas,
    load_schema,
    schema_versions,
)
from tests.unit.schemas.helpers import valid_events

NAMES = sorted({key.name for key in iter_schemas()})


@pytest.mark.parametrize("name", NAMES)
def test_published_versions_only_add_optional_properties(name: str) -> None:
    versions = schema_versions(VENDOR, name)
    assert versions and versions[0] == "1-0-0"
    for older, newer in pairwise(versions):
        problems = check_evolution(
            load_schema(VENDOR, name, older), load_schema(VENDOR, name, newer)
        )
        assert problems == [], f"{name} {older} -> {newer}: {problems}"


def bumped(schema: dict[str, Any], version: str = "1-0-1") -> dict[str, Any]:
    new = copy.deepcopy(schema)
    new["self"]["version"] = version
    return new


@pytest.fixture
def offer() -> dict[str, Any]:
    return load_schema(VENDOR, "offer_accepted", "1-0-0")


def test_adding_an_optional_property_is_allowed(offer: dict[str, Any]) -> None:
    new = bumped(offer)
    new["properties"]["channel_offer_code"] = {"type": "string", "minLength": 1, "maxLength": 32}
    new["description"] = "reworded"
    new["properties"]["limit"]["description"] = "reworded too"
    assert check_evolution(offer, new) == []
    assert check_evolution(offer, bumped(new, "1-1-0")) == []


def test_adding_an_optional_property_to_a_nested_object_is_allowed() -> None:
    event = load_schema(VENDOR, "event", "1-0-0")
    new = bumped(event)
    new["properties"]["device"]["properties"]["os"] = {"type": "string", "maxLength": 32}
    assert check_evolution(event, new) == []


def test_adding_a_required_property_is_refused(offer: dict[str, Any]) -> None:
    new = bumped(offer)
    new["properties"]["campaign"] = {"type": "string", "maxLength": 32}
    new["required"] = [*new["required"], "campaign"]
    problems = check_evolution(offer, new)
    assert any("campaign: new property is required" in p for p in problems)
    assert any("required changed" in p for p in problems)


def test_making_an_optional_property_required_is_refused(offer: dict[str, Any]) -> None:
    new = bumped(offer)
    new["required"] = [*new["required"], "currency"]
    assert check_evolution(offer, new) == [
        "$: required changed from ['offer_id', 'offer_type'] to ['currency', 'offer_id', "
        "'offer_type']; new fields must be optional"
    ]


def test_removing_a_property_is_refused(offer: dict[str, Any]) -> None:
    new = bumped(offer)
    del new["properties"]["trigger_id"]
    assert check_evolution(offer, new) == ["$.trigger_id: property removed"]


@pytest.mark.parametrize(
    ("field", "keyword", "value"),
    [
        ("currency", "maxLength", 4),  # widening is a change too
        ("currency", "pattern", "^[A-Z]{3,4}$"),
        ("valid_hours", "maximum", 24),  # narrowing
        ("limit", "type", "integer"),
        ("offer_type", "enum", ["overdraft"]),  # a keyword added
    ],
)
def test_changing_a_property_is_refused(
    offer: dict[str, Any], field: str, keyword: str, value: Any
) -> None:
    new = bumped(offer)
    new["properties"][field][keyword] = value
    problems = check_evolution(offer, new)
    assert len(problems) == 1 and problems[0].startswith(f"$.{field}: "), problems


def test_opening_a_closed_object_is_refused(offer: dict[str, Any]) -> None:
    new = bumped(offer)
    new["additionalProperties"] = True
    assert check_evolution(offer, new) == ["$: additionalProperties changed from False to True"]


def test_typing_a_field_of_an_open_object_is_refused() -> None:
    trigger = load_schema(VENDOR, "trigger", "1-0-0")
    new = bumped(trigger)
    new["properties"]["payload"]["properties"] = {"country": {"type": "string", "maxLength": 2}}
    problems = check_evolution(trigger, new)
    assert problems == [
        "$.payload.country: new property on an open object (old data may "
        "already use that name with another shape)"
    ]


def test_array_items_follow_the_rule() -> None:
    profile = load_schema(VENDOR, "profile_updated", "1-0-0")
    new = bumped(profile)
    new["properties"]["products_add"]["items"]["maxLength"] = 128
    assert check_evolution(profile, new) == ["$.products_add[]: maxLength changed from 64 to 128"]


def test_versions_must_grow_within_the_same_model(offer: dict[str, Any]) -> None:
    assert check_evolution(offer, bumped(offer, "1-0-0")) == [
        "version 1-0-0 is not newer than 1-0-0"
    ]
    assert check_evolution(offer, bumped(offer, "2-0-0")) == [
        "MODEL changed: a breaking change is a new event type, not a new version"
    ]
    renamed = bumped(offer)
    renamed["self"]["name"] = "offer_taken"
    assert check_evolution(offer, renamed) == ["self.name changed"]


def test_event_1_0_4_adds_optional_identifiers_and_the_identity_types() -> None:
    old = load_schema(VENDOR, "event", "1-0-3")
    new = load_schema(VENDOR, "event", "1-0-4")
    assert check_evolution(old, new) == []
    assert set(new["properties"]) - set(old["properties"]) == {"identifiers"}
    assert new["required"] == old["required"]
    assert new["properties"]["type"]["enum"] == [
        *old["properties"]["type"]["enum"],
        "identity.linked",
        "identity.unlinked",
    ]
    identifiers = new["properties"]["identifiers"]
    assert identifiers["additionalProperties"] is False and identifiers["minProperties"] == 1
    assert set(identifiers["properties"]) == set(IDENTIFIER_TYPES)


def test_old_producers_events_stay_valid_under_event_1_0_4() -> None:
    """Every valid sample an old producer could send (1-0-3: customer_id, no identifiers,
    an old type) passes 1-0-3 and 1-0-4 alike."""
    old = CompiledSchema("event", "1-0-3", load_schema(VENDOR, "event", "1-0-3"))
    new = CompiledSchema("event", "1-0-4", load_schema(VENDOR, "event", "1-0-4"))
    old_types = set(old.schema["properties"]["type"]["enum"])
    checked = 0
    for _, event in valid_events():
        if "identifiers" in event or event["type"] not in old_types:
            assert not old.is_valid(event)
            continue
        assert old.is_valid(event) and new.is_valid(event), event
        checked += 1
    assert checked > 40


def test_deadletter_1_0_2_adds_the_reason_unidentified() -> None:
    old = load_schema(VENDOR, "deadletter", "1-0-1")
    new = load_schema(VENDOR, "deadletter", "1-0-2")
    assert check_evolution(old, new) == []
    assert new["properties"]["reason"]["enum"] == [
        *old["properties"]["reason"]["enum"],
        "unidentified",
    ]
    old.pop("self"), new.pop("self")
    old["properties"]["reason"].pop("enum"), new["properties"]["reason"].pop("enum")
    old["properties"]["reason"].pop("description"), new["properties"]["reason"].pop("description")
    assert old == new  # nothing else changed
