"""The schema files themselves: layout, self block, closed objects, bounded strings,
portable patterns, and enums that match the registry and the settings."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from processors.settings import TOUCHPOINT_CHANNELS, TRIGGER_CHANNELS
from schemas import (
    EVENT_TYPES,
    IDENTIFIED_ENVELOPE,
    JOURNEY_STAGES,
    KNOWN_EVENT_TYPES,
    RECORD_KINDS,
    REJECTION_REASONS,
    SCHEMA_ROOT,
    VENDOR,
    SchemaKey,
    iter_schemas,
    load_schema,
    parse_schemaver,
    payload_schema_name,
)

#: Objects that are free-form on purpose: the envelopes' payload (validated by the
#: payload schema of its type) and a trigger's payload (per trigger type).
OPEN_OBJECTS = {("event", "payload"), ("identified_event", "payload"), ("trigger", "payload")}

SCHEMA_KEYS = list(iter_schemas())
DATE_TIME_PATTERN = load_schema(VENDOR, "event")["properties"]["occurred_at"]["pattern"]


def nodes(
    schema: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every subschema with its path (property names; '[]' for array items)."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], (*path, "[]"))
    for keyword in (
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "patternProperties",
        "definitions",
        "additionalItems",
        "if",
        "then",
        "else",
        "dependencies",
    ):
        assert keyword not in schema, f"{path}: {keyword} is not used in v1 (walker is simple)"


def types_of(node: dict[str, Any]) -> set[str]:
    declared = node.get("type")
    return set(declared) if isinstance(declared, list) else {declared} if declared else set()


def test_the_tree_has_exactly_the_v1_schemas() -> None:
    names = {key.name for key in SCHEMA_KEYS}
    expected = {
        "event",
        IDENTIFIED_ENVELOPE,
        *(spec.schema for spec in EVENT_TYPES.values()),
        *RECORD_KINDS,
    }
    assert names == expected
    assert all(key.vendor == VENDOR for key in SCHEMA_KEYS)
    # Nothing else lies around in the tree (stray files would be shipped as package data).
    files = {p for p in SCHEMA_ROOT.rglob("*") if p.is_file()}
    assert files == {key.path for key in SCHEMA_KEYS}


@pytest.mark.parametrize("key", SCHEMA_KEYS, ids=lambda k: f"{k.name}/{k.version}")
def test_schema_file_is_draft7_with_a_self_block_matching_its_path(key: SchemaKey) -> None:
    assert key.path.suffix == "" and parse_schemaver(key.path.name)
    schema = json.loads(key.path.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(schema)
    relative = key.path.relative_to(SCHEMA_ROOT).parts
    assert schema["self"] == {
        "vendor": relative[0],
        "name": relative[1],
        "format": relative[2],
        "version": relative[3],
    }
    assert isinstance(schema["description"], str) and len(schema["description"]) > 20
    assert "$ref" not in key.path.read_text(), "schemas are self-contained"


@pytest.mark.parametrize("key", SCHEMA_KEYS, ids=lambda k: f"{k.name}/{k.version}")
def test_every_object_is_closed(key: SchemaKey) -> None:
    schema = load_schema(key.vendor, key.name, key.version)
    for path, node in nodes(schema):
        if "object" not in types_of(node):
            assert "properties" not in node, path
            continue
        if (key.name, *path) in OPEN_OBJECTS:
            assert "properties" not in node and "additionalProperties" not in node, path
            continue
        assert node.get("additionalProperties") is False, f"{key.name}{list(path)} is open"
        for name in node.get("required", []):
            assert name in node["properties"], f"{path}: required {name} is not a property"


@pytest.mark.parametrize("key", SCHEMA_KEYS, ids=lambda k: f"{k.name}/{k.version}")
def test_every_string_array_and_node_is_bounded_and_described(key: SchemaKey) -> None:
    schema = load_schema(key.vendor, key.name, key.version)
    for path, node in nodes(schema):
        where = f"{key.name}{list(path)}"
        assert types_of(node), f"{where}: no type"
        if path:
            assert isinstance(node.get("description"), str), f"{where}: no description"
        if "string" in types_of(node):
            assert isinstance(node.get("maxLength"), int), f"{where}: unbounded string"
            assert isinstance(node.get("minLength"), int), f"{where}: no minLength"
            assert 0 <= node["minLength"] <= node["maxLength"], where
            assert node["minLength"] >= 1 or (key.name, *path) == ("deadletter", "raw"), (
                f"{where}: empty strings allowed"
            )
        if "array" in types_of(node):
            assert isinstance(node.get("maxItems"), int), f"{where}: unbounded array"
        for value in node.get("enum", []):
            if value is None:  # a nullable enum (identity's reason): the bounds are for strings
                assert "null" in types_of(node), where
                continue
            # Redundant bounds must never contradict the enum.
            assert node["minLength"] <= len(value) <= node["maxLength"], (where, value)
            if "pattern" in node:
                assert re.search(node["pattern"], value), (where, value)


@pytest.mark.parametrize("key", SCHEMA_KEYS, ids=lambda k: f"{k.name}/{k.version}")
def test_patterns_and_formats_are_portable(key: SchemaKey) -> None:
    """Patterns mean the same in ECMA 262 (other languages) and Python: anchored, ASCII
    classes only (Python's \\d and \\w match non-ASCII digits and letters)."""
    schema = load_schema(key.vendor, key.name, key.version)
    for path, node in nodes(schema):
        if "pattern" in node:
            pattern = node["pattern"]
            assert pattern.startswith("^") and pattern.endswith("$"), (path, pattern)
            assert not re.search(r"\\[dDwWsSbB]", pattern), (path, pattern)
            re.compile(pattern)
        if "format" in node:
            assert node["format"] == "date-time", (path, node["format"])
            # Validators that treat format as an annotation still see the pattern.
            assert node["pattern"] == DATE_TIME_PATTERN, path
            assert (node["minLength"], node["maxLength"]) == (20, 35), path


def test_envelope_enums_match_the_registry_and_the_settings() -> None:
    for name in ("event", IDENTIFIED_ENVELOPE):
        envelope = load_schema(VENDOR, name)["properties"]
        assert envelope["type"]["enum"] == list(KNOWN_EVENT_TYPES), name
        assert envelope["channel"]["enum"] == list(TOUCHPOINT_CHANNELS), name
        assert envelope["journey_stage"]["enum"] == list(JOURNEY_STAGES), name
    trigger = load_schema(VENDOR, "trigger")["properties"]
    assert trigger["channel"]["enum"] == list(TRIGGER_CHANNELS)
    deadletter = load_schema(VENDOR, "deadletter")["properties"]
    assert sorted(deadletter["reason"]["enum"]) == sorted(REJECTION_REASONS)


def test_registry_names_and_channels() -> None:
    for event_type, spec in EVENT_TYPES.items():
        assert spec.schema == payload_schema_name(event_type)
        assert load_schema(VENDOR, spec.schema)["self"]["name"] == spec.schema
        if spec.channels is not None:
            assert spec.channels and set(spec.channels) <= set(TOUCHPOINT_CHANNELS)
    assert EVENT_TYPES["telco.network_attached"].channels == ("telco",)
    assert EVENT_TYPES["telco.call_started"].channels == ("telco",)
    assert EVENT_TYPES["atm.withdrawal"].channels == ("atm",)
    for any_channel in ("profile.updated", "consent.updated", "offer.accepted"):
        assert EVENT_TYPES[any_channel].channels is None


def test_the_contract_wheel_ships_the_whole_schemas_package() -> None:
    """The contract's build hook force-includes whole folders, so every schema file (they
    have no suffix) and sample ships: nothing to keep in step with a glob. What a wheel
    really holds is checked by tests/integration/test_contract_alone.py."""
    contract = tomllib.loads(
        (Path(__file__).parents[3] / "contract" / "pyproject.toml").read_text()
    )
    packages = contract["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]
    assert packages["packages"] == {"../producers": "producers", "../schemas": "schemas"}
    package_dir = SCHEMA_ROOT.parent
    assert {key.path for key in SCHEMA_KEYS} <= set(package_dir.rglob("*"))


def test_the_identified_envelope_is_the_envelope_without_customer_id() -> None:
    """identified_event follows event: a new envelope field needs a new version of both."""
    event = load_schema(VENDOR, "event")
    identified = load_schema(VENDOR, IDENTIFIED_ENVELOPE)
    assert "customer_id" not in identified["properties"]
    assert identified["additionalProperties"] is False
    assert identified["required"] == [
        "identifiers" if name == "customer_id" else name for name in event["required"]
    ]

    def shape(node: Any) -> Any:  # the schema without its annotations
        if isinstance(node, dict):
            return {k: shape(v) for k, v in node.items() if k not in ("description", "self")}
        return node

    expected = {k: v for k, v in event["properties"].items() if k != "customer_id"}
    assert shape(identified["properties"]) == shape(expected)
