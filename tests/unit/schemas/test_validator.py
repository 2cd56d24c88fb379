"""EventValidator.check: the order of checks, the reason codes, the messages, the fast path."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import FormatChecker

import schemas.registry as registry
from schemas import (
    MISSING_KEY,
    VENDOR,
    CompiledSchema,
    EventValidator,
    Rejection,
    is_rfc3339_datetime,
    load_schema,
    parse_schemaver,
    schema_versions,
    validate_record,
)
from schemas.validate import MAX_ERRORS, format_checker


@pytest.fixture(scope="module")
def validator() -> EventValidator:
    return EventValidator()


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1",
        "type": "offer.accepted",
        "occurred_at": "2026-01-15T09:30:00Z",
        "channel": "mobile",
        "customer_id": "alice",
        "payload": {"offer_id": "OD-1", "offer_type": "overdraft", "limit": 500, "currency": "GBP"},
    }
    for name, value in changes.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def check(
    validator: EventValidator,
    doc: Any,
    channel: str = "mobile",
    key: bytes | None = b"alice",
    max_bytes: int = 65536,
) -> dict[str, Any] | Rejection:
    value = doc if isinstance(doc, bytes) or doc is None else orjson.dumps(doc)
    return validator.check(channel, key, value, max_bytes)


def rejected(result: dict[str, Any] | Rejection) -> Rejection:
    assert isinstance(result, Rejection), f"accepted: {result}"
    return result


def test_valid_event_returns_the_parsed_dict(validator: EventValidator) -> None:
    doc = event(device={"id": "iphone-1", "kind": "phone"}, journey_stage="purchase")
    assert check(validator, doc) == doc


def test_rejection_is_a_frozen_slotted_dataclass() -> None:
    rejection = Rejection("not_json", ("value: x — y",))
    assert not hasattr(rejection, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rejection.reason = "other"  # type: ignore[misc]


# --- order of checks ------------------------------------------------------------------


def test_size_is_checked_first_and_exactly_max_bytes_is_accepted(
    validator: EventValidator,
) -> None:
    value = orjson.dumps(event())
    assert isinstance(check(validator, value, max_bytes=len(value)), dict)
    too_large = rejected(check(validator, value, max_bytes=len(value) - 1))
    assert too_large.reason == "too_large"
    assert str(len(value)) in too_large.errors[0]
    # Not even parsed: a huge non-JSON value is too_large, not not_json.
    assert rejected(check(validator, b"x" * 70_000)).reason == "too_large"


def test_default_limit_is_64_kib(validator: EventValidator) -> None:
    compact = orjson.dumps(event())
    exactly = compact.replace(b"{", b"{" + b" " * (65536 - len(compact)), 1)  # JSON whitespace
    assert len(exactly) == 65536
    assert isinstance(validator.check("mobile", b"alice", exactly), dict)
    assert rejected(validator.check("mobile", b"alice", exactly + b" ")).reason == "too_large"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b'{"event_id": ', "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        ('{"customer_id": "Jos\xe9"}'.encode("latin-1"), "not UTF-8"),
        (b'\xef\xbb\xbf{"event_id": "e-1"}', "byte order mark"),
    ],
)
def test_not_json(validator: EventValidator, value: bytes | None, words: str) -> None:
    result = rejected(validator.check("mobile", b"alice", value))
    assert result.reason == "not_json"
    assert result.errors[0].startswith("value: ") and words in result.errors[0]


@pytest.mark.parametrize("value", [b"[]", b'"text"', b"42", b"null", b"true", b"[{}]"])
def test_not_an_object(validator: EventValidator, value: bytes) -> None:
    result = rejected(validator.check("mobile", b"alice", value))
    assert result.reason == "not_an_object"


@pytest.mark.parametrize(
    "bad_type",
    [
        None,
        "order.shipped",
        "",
        42,
        ["offer.accepted"],
        {"name": "offer.accepted"},
        "Offer.Accepted",
    ],
)
def test_unknown_type_lists_the_known_types(validator: EventValidator, bad_type: Any) -> None:
    doc = event(type=bad_type) if bad_type is not None else event(type=None)
    result = rejected(check(validator, doc))
    assert result.reason == "unknown_type"
    assert len(result.errors) == 1 and result.errors[0].startswith("type: ")
    for known in registry.KNOWN_EVENT_TYPES:
        assert known in result.errors[0]


def test_unknown_type_with_a_broken_envelope_is_a_schema_violation(
    validator: EventValidator,
) -> None:
    result = rejected(check(validator, event(type="order.shipped", occurred_at="yesterday")))
    assert result.reason == "schema_violation"
    assert [e.split(":")[0] for e in result.errors] == ["occurred_at", "type"]


def test_schema_violation_comes_before_channel_and_key(validator: EventValidator) -> None:
    doc = event(channel="web", payload={"offer_id": "OD-1"})
    result = rejected(check(validator, doc, channel="mobile", key=None))
    assert result.reason == "schema_violation"
    assert result.errors[0].startswith("payload.offer_type: required field is missing — ")


def test_channel_field_must_match_the_topic(validator: EventValidator) -> None:
    result = rejected(check(validator, event(channel="web"), channel="mobile", key=None))
    assert result.reason == "channel_mismatch"
    assert result.errors[0].startswith("channel: ")
    assert "touchpoint.web" in result.errors[0]


@pytest.mark.parametrize(
    ("event_type", "payload", "allowed"),
    [
        (
            "atm.withdrawal",
            {
                "amount": 50,
                "currency": "EUR",
                "country": "ES",
                "atm_id": "A-1",
                "location_type": "mall",
            },
            "atm",
        ),
        ("telco.network_attached", {"country": "FR"}, "telco"),
        ("telco.call_started", {"destination_country": "FR", "call_type": "local"}, "telco"),
    ],
)
def test_type_restricted_to_its_channels(
    validator: EventValidator, event_type: str, payload: dict[str, Any], allowed: str
) -> None:
    doc = event(type=event_type, channel="web", payload=payload)
    result = rejected(check(validator, doc, channel="web", key=None))
    assert result.reason == "channel_mismatch"
    assert result.errors[0].startswith("type: ")
    assert f"channel {allowed}," in result.errors[0] and "not by web" in result.errors[0]
    assert isinstance(check(validator, {**doc, "channel": allowed}, channel=allowed), dict)


@pytest.mark.parametrize("channel", ["mobile", "web", "crm", "tv", "hotel"])
def test_any_channel_types(validator: EventValidator, channel: str) -> None:
    for doc in (
        event(channel=channel),
        event(channel=channel, type="profile.updated", payload={"children": 0}),
        event(
            channel=channel,
            type="consent.updated",
            payload={"channel": "push", "purpose": "service", "granted": True},
        ),
    ):
        assert isinstance(check(validator, doc, channel=channel), dict)


@pytest.mark.parametrize("key", [None, b""])
def test_missing_key(validator: EventValidator, key: bytes | None) -> None:
    result = rejected(check(validator, event(), key=key))
    assert result.reason == MISSING_KEY
    assert result.errors[0].startswith("key: ") and '"alice"' in result.errors[0]


@pytest.mark.parametrize("key", [b"bob", b"alice ", b"ALICE", b"\xff\xfe"])
def test_key_mismatch(validator: EventValidator, key: bytes) -> None:
    result = rejected(check(validator, event(), key=key))
    assert result.reason == "key_mismatch"
    assert result.errors[0].startswith("key: ")


def test_non_ascii_customer_id_and_key(validator: EventValidator) -> None:
    doc = event(customer_id="josé-ñ-東京")
    assert isinstance(check(validator, doc, key="josé-ñ-東京".encode()), dict)


# --- messages -------------------------------------------------------------------------


def test_the_message_names_the_field_and_says_what_to_do(validator: EventValidator) -> None:
    doc = event()
    doc["payload"]["limit"] = -5
    result = rejected(check(validator, doc))
    assert result.errors == (
        "payload.limit: -5 is less than or equal to the minimum of 0 — send a positive number",
    )


def test_all_errors_are_collected_from_envelope_and_payload(validator: EventValidator) -> None:
    doc = event(
        occurred_at="2026-01-01T10:00:00",
        journey_stage="bored",
        extra=1,
        payload={"offer_type": "Overdraft", "valid_hours": 0, "limit": "500"},
    )
    result = rejected(check(validator, doc))
    fields = [error.split(": ", 1)[0] for error in result.errors]
    assert fields == [
        "extra",
        "journey_stage",
        "occurred_at",
        "payload.limit",
        "payload.offer_id",
        "payload.offer_type",
        "payload.valid_hours",
    ]
    by_field = dict(error.split(": ", 1) for error in result.errors)
    assert by_field["occurred_at"].startswith('"2026-01-01T10:00:00" has no UTC offset — ')
    assert "use one of: awareness, consideration" in by_field["journey_stage"]
    assert by_field["payload.limit"] == '"500" is a string, not a number — send a number'
    assert by_field["payload.valid_hours"].startswith("0 is less than the minimum of 1 — ")
    assert by_field["extra"].startswith("unknown field — remove it; the event allows only: ")


def test_values_are_shown_cut_short(validator: EventValidator) -> None:
    result = rejected(check(validator, event(channel="x" * 5000)))
    assert len(result.errors) == 1  # the enum says it all; no extra length error
    assert len(result.errors[0]) < 400 and "…" in result.errors[0]


def test_errors_are_capped(validator: EventValidator) -> None:
    doc = event(**{f"field_{i:03}": i for i in range(200)})
    result = rejected(check(validator, doc))
    assert len(result.errors) == MAX_ERRORS + 1
    assert result.errors[-1].startswith(f"value: {200 - MAX_ERRORS} more errors not shown")


def test_happy_path_never_uses_jsonschema(
    validator: EventValidator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("jsonschema ran on a valid event")

    monkeypatch.setattr(CompiledSchema, "explain", boom)
    assert isinstance(check(validator, event()), dict)
    with pytest.raises(AssertionError, match="jsonschema ran"):
        check(validator, event(payload={}))


# --- date-time ------------------------------------------------------------------------

GOOD_TIMES = [
    "2026-01-15T09:30:00Z",
    "2026-01-15T09:30:00.1Z",
    "2026-01-15T09:30:00.123456789Z",
    "2026-01-15T09:30:00+01:00",
    "2026-01-15T09:30:00-05:30",
    "2026-01-15T09:30:00-00:00",
    "2024-02-29T23:59:59.999+23:59",
    "0001-01-01T00:00:00Z",
]
BAD_TIMES = [
    "2026-01-01T10:00:00",
    "2026-01-01",
    "2026-01-01T10:00Z",
    "2026-01-01 10:00:00Z",
    "2026-01-01t10:00:00z",
    "2026-01-01T10:00:00z",
    "2026-01-01T10:00:00+0100",
    "2026-01-01T10:00:00+01",
    "2026-02-30T10:00:00Z",
    "2025-02-29T10:00:00Z",
    "2026-13-01T10:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-12-31T23:59:60Z",
    "2026-01-01T10:00:00+24:00",
    "2026-01-01T10:00:00+01:60",
    "0000-01-01T00:00:00Z",
    "2026-01-01T10:00:00.Z",
    "2026-01-01T10:00:00.1234567890Z",
    "2026-01-01T10:00:00Z\n",
    " 2026-01-01T10:00:00Z",
    "\uff12\uff10\uff12\uff16-01-01T10:00:00Z",
    "1768469400",
    "",
]


@pytest.mark.parametrize("value", GOOD_TIMES)
def test_good_date_times(validator: EventValidator, value: str) -> None:
    assert is_rfc3339_datetime(value)
    assert format_checker().conforms(value, "date-time")
    result = check(validator, event(occurred_at=value))
    if value.startswith("0001"):  # well-formed, but before 2000-01-01 (schemas.bounds)
        assert rejected(result).reason == "date_out_of_range"
    else:
        assert isinstance(result, dict)
    datetime.fromisoformat(value)  # what the worker's parse_time does


@pytest.mark.parametrize("value", BAD_TIMES)
def test_bad_date_times(validator: EventValidator, value: str) -> None:
    assert not is_rfc3339_datetime(value)
    assert not format_checker().conforms(value, "date-time")
    result = rejected(check(validator, event(occurred_at=value)))
    assert result.reason == "schema_violation"
    assert [e.split(":")[0] for e in result.errors] == ["occurred_at"]
    assert "RFC 3339" in result.errors[0]


def test_jsonschemas_own_format_checker_enforces_date_time() -> None:
    """rfc3339-validator is installed (jsonschema[format-nongpl]): consumers using plain
    jsonschema with a FormatChecker get the offset enforced too."""
    checker = FormatChecker()
    assert "date-time" in checker.checkers
    assert checker.conforms("2026-01-01T10:00:00Z", "date-time")
    assert not checker.conforms("2026-01-01T10:00:00", "date-time")


# --- records --------------------------------------------------------------------------


def test_validate_record_knows_its_kinds() -> None:
    with pytest.raises(ValueError, match="trigger, decision, deadletter, identity"):
        validate_record("event", {})
    assert validate_record("decision", [])[0].startswith("decision: [] is an array")


def test_trigger_payload_is_free_form_but_nothing_else_is() -> None:
    trigger = {
        "trigger_id": "0123456789abcdef0123456789abcdef",
        "type": "roaming_offer",
        "customer_id": "maria",
        "channel": "sms",
        "created_at": "2026-01-15T09:30:00.000Z",
        "expires_at": None,
        "source_event_id": "e-1",
        "rule": "roaming_offer",
        "reason": "maria was seen in FR.",
        "payload": {"anything": {"goes": [1, None]}},
    }
    assert validate_record("trigger", trigger) == []
    assert validate_record("trigger", {**trigger, "note": "x"}) == [
        "note: unknown field — remove it; a trigger allows only: trigger_id, type, customer_id, "
        "channel, created_at, expires_at, source_event_id, rule, reason, payload, message_class, "
        "ruleset, actions (a new field needs a new schema version first)"
    ]
    errors = validate_record("trigger", {**trigger, "trigger_id": "ABC"})
    assert [e.split(":")[0] for e in errors] == ["trigger_id"]


# --- schema loading -------------------------------------------------------------------


def test_schemaver_order() -> None:
    versions = ["1-0-10", "1-0-9", "2-0-0", "1-1-0", "1-0-0"]
    assert sorted(versions, key=parse_schemaver) == ["1-0-0", "1-0-9", "1-0-10", "1-1-0", "2-0-0"]
    for bad in ("1.0.0", "1-0", "0-1-0", "1-01-0", "1-0-0 ", "v1-0-0"):
        with pytest.raises(ValueError):
            parse_schemaver(bad)


def test_load_schema_takes_the_newest_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / VENDOR / "thing" / "jsonschema"
    directory.mkdir(parents=True)
    for version in ("1-0-9", "1-0-10", "1-0-2"):
        (directory / version).write_text(orjson.dumps({"version": version}).decode())
    (directory / "README").write_text("not a version")
    monkeypatch.setattr(registry, "SCHEMA_ROOT", tmp_path)
    assert schema_versions(VENDOR, "thing") == ["1-0-2", "1-0-9", "1-0-10"]
    assert load_schema(VENDOR, "thing") == {"version": "1-0-10"}
    assert load_schema(VENDOR, "thing", "1-0-9") == {"version": "1-0-9"}
    with pytest.raises(FileNotFoundError):
        load_schema(VENDOR, "thing", "1-1-0")
    with pytest.raises(FileNotFoundError):
        load_schema(VENDOR, "nothing")


def test_load_schema_refuses_paths() -> None:
    for vendor, name in ((VENDOR, "../event"), ("..", "event"), (VENDOR, "a/b")):
        with pytest.raises(ValueError):
            load_schema(vendor, name)


def test_load_schema_returns_a_fresh_copy() -> None:
    first = load_schema(VENDOR, "event")
    first["properties"].clear()
    assert load_schema(VENDOR, "event")["properties"]


def test_validator_uses_the_newest_versions(validator: EventValidator) -> None:
    for name, compiled in validator.schemas.items():
        assert compiled.version == schema_versions(VENDOR, name)[-1]
        assert compiled.schema == load_schema(VENDOR, name)


def test_check_does_not_mutate_or_default(validator: EventValidator) -> None:
    doc = event()
    before = copy.deepcopy(doc)
    result = check(validator, doc)
    assert result == before and "valid_hours" not in before["payload"]


# --- identifiers (event 1-0-4) --------------------------------------------------------

HASH = "sha256:" + "0123456789abcdef" * 4

GOOD_IDENTIFIERS = [
    ("msisdn", "+447700900123"),
    ("msisdn", "+1234567"),  # 7 digits, the shortest E.164
    ("msisdn", "+123456789012345"),  # 15 digits, the longest
    ("msisdn", HASH),
    ("email", "maria.garcia@example.com"),
    ("email", "josé@exämple.es"),  # lower case beyond ASCII too
    ("email", "a+tag@sub.example.co.uk"),
    ("email", "x" * 240 + "@example.com"),  # 252 characters
    ("email", HASH),
    ("device_id", "web:3f2a9c1e"),
    ("device_id", "~" * 128),
    ("device_id", HASH),
    ("card_token", "tok_4f9a1c"),
    ("card_token", "!"),
    ("loyalty_id", "LOY-000123"),
    ("loyalty_id", HASH),
]
BAD_IDENTIFIERS = [
    ("msisdn", "447700900123"),  # no +
    ("msisdn", "+0447700900123"),  # country codes do not start with 0
    ("msisdn", "+44 7700 900123"),
    ("msisdn", "+123456"),  # 6 digits
    ("msisdn", "+1234567890123456"),  # 16 digits
    ("msisdn", "+447700900123\n"),
    ("msisdn", HASH.upper()),
    ("msisdn", HASH[:-1]),
    ("msisdn", "sha1:" + "a" * 40),
    ("email", "Maria@example.com"),
    ("email", "maria@Example.com"),
    ("email", "maria garcia@example.com"),
    ("email", "maria\u00a0garcia@example.com"),
    ("email", "maria@example"),
    ("email", "maria@@example.com"),
    ("email", "a@b@example.com"),
    ("email", "maria@example.com\n"),
    ("email", "x" * 243 + "@example.com"),  # 255 characters
    ("email", "sha256:" + "AB" * 32),
    ("device_id", "web 3f2a"),
    ("device_id", ""),
    ("device_id", "~" * 129),
    ("device_id", "tëst"),
    ("card_token", "tok\t1"),
    ("loyalty_id", "LOY-1\n"),
    ("loyalty_id", 123),
]


@pytest.mark.parametrize(("name", "value"), GOOD_IDENTIFIERS)
def test_good_identifiers(validator: EventValidator, name: str, value: str) -> None:
    doc = event(identifiers={name: value})
    assert check(validator, doc) == doc


@pytest.mark.parametrize(("name", "value"), BAD_IDENTIFIERS)
def test_bad_identifiers_name_the_identifier_and_its_normal_form(
    validator: EventValidator, name: str, value: Any
) -> None:
    result = rejected(check(validator, event(identifiers={name: value})))
    assert result.reason == "schema_violation"
    assert [e.split(":")[0] for e in result.errors] == [f"identifiers.{name}"], result.errors
    if "does not match" in result.errors[0]:  # the pattern: the description says the form
        if name == "msisdn":
            assert "E.164" in result.errors[0] and "sha256:" in result.errors[0]
        if name == "email":
            assert "lower case" in result.errors[0] and "sha256:" in result.errors[0]


def test_identifiers_hold_at_least_one_known_identifier(validator: EventValidator) -> None:
    empty = rejected(check(validator, event(identifiers={})))
    assert empty.errors == (
        "identifiers: has 0 fields, fewer than the minimum of 1 — send at least one of: "
        "msisdn, email, device_id, card_token, loyalty_id",
    )
    unknown = rejected(check(validator, event(identifiers={"imei": "35-209900-176148-1"})))
    assert unknown.errors[0].startswith("identifiers.imei: unknown field — remove it; ")
    assert (
        rejected(check(validator, event(identifiers=["+447700900123"])))
        .errors[0]
        .startswith("identifiers: ")
    )


def test_an_event_with_customer_id_and_identifiers_is_keyed_by_customer_id(
    validator: EventValidator,
) -> None:
    doc = event(identifiers={"msisdn": "+447700900123", "device_id": "d-1"})
    assert check(validator, doc, key=b"alice") == doc
    result = rejected(check(validator, doc, key=b"msisdn:+447700900123"))
    assert result.reason == "key_mismatch"


# --- identity.linked / identity.unlinked --------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        ("identity.linked", {}),
        ("identity.linked", {"merge_from": "alice-dup"}),
        ("identity.unlinked", {}),
    ],
)
def test_identity_events_come_from_the_crm_only(
    validator: EventValidator, event_type: str, payload: dict[str, Any]
) -> None:
    doc = event(type=event_type, channel="crm", payload=payload, identifiers={"email": "a@b.co"})
    assert check(validator, doc, channel="crm") == doc
    result = rejected(check(validator, {**doc, "channel": "web"}, channel="web"))
    assert result.reason == "channel_mismatch"
    assert result.errors[0].startswith(
        f"type: {event_type} events may only be sent by channel crm,"
    )


@pytest.mark.parametrize(
    ("event_type", "payload", "field"),
    [
        ("identity.linked", {"merge_from": ""}, "payload.merge_from"),
        ("identity.linked", {"merge_from": "x" * 129}, "payload.merge_from"),
        ("identity.linked", {"merge_from": 7}, "payload.merge_from"),
        ("identity.unlinked", {"merge_from": "alice-dup"}, "payload.merge_from"),
    ],
)
def test_identity_payloads(
    validator: EventValidator, event_type: str, payload: dict[str, Any], field: str
) -> None:
    doc = event(type=event_type, channel="crm", payload=payload)
    result = rejected(check(validator, doc, channel="crm"))
    assert result.reason == "schema_violation"
    assert [e.split(":")[0] for e in result.errors] == [field]


# --- reserved customer ids ------------------------------------------------------------

ANON_ERROR = (
    "customer_id: ids starting with 'anon:' are reserved for anonymous profiles (the pipeline "
    "names them anon:<type>:<value>) — use another id"
)


@pytest.mark.parametrize("customer_id", ["anon:x", "anon:msisdn:+447700900123", "anon:"])
def test_anon_customer_ids_are_reserved(validator: EventValidator, customer_id: str) -> None:
    result = rejected(check(validator, event(customer_id=customer_id), key=customer_id.encode()))
    assert result == Rejection("schema_violation", (ANON_ERROR,))


def test_the_reserved_id_comes_with_the_other_schema_errors(validator: EventValidator) -> None:
    doc = event(customer_id="anon:x", payload={"offer_id": "OD-1"})
    result = rejected(check(validator, doc, key=b"anon:x"))
    assert result.reason == "schema_violation"
    assert result.errors[0] == ANON_ERROR
    assert [e.split(":")[0] for e in result.errors] == ["customer_id", "payload.offer_type"]
    # Before the channel and the key are looked at.
    result = rejected(check(validator, event(customer_id="anon:x"), channel="web", key=None))
    assert result.reason == "schema_violation"


@pytest.mark.parametrize("customer_id", ["anonymous", "Anon:x", "x-anon:y", "anon-x", " anon:x"])
def test_only_the_anon_colon_prefix_is_reserved(
    validator: EventValidator, customer_id: str
) -> None:
    doc = event(customer_id=customer_id)
    assert check(validator, doc, key=customer_id.encode()) == doc


# --- identified events (identified_event 1-0-0: no customer_id) ------------------------


def identified(**changes: Any) -> dict[str, Any]:
    """A telco event that names its customer by identifiers only."""
    doc = event(
        customer_id=None,
        type="telco.network_attached",
        channel="telco",
        payload={"country": "FR"},
        identifiers={"msisdn": "+447700900123", "device_id": "imei:35-209900-176148-1"},
    )
    for name, value in changes.items():
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


def test_an_identified_event_is_keyed_by_its_first_identifier(validator: EventValidator) -> None:
    doc = identified()
    assert check(validator, doc, channel="telco", key=b"msisdn:+447700900123") == doc
    only_device = identified(identifiers={"device_id": "imei:35-209900-176148-1"})
    key = b"device_id:imei:35-209900-176148-1"
    assert check(validator, only_device, channel="telco", key=key) == only_device


@pytest.mark.parametrize(
    ("identifiers", "expected"),
    [
        ({"device_id": "d", "card_token": "t", "loyalty_id": "l"}, "loyalty_id:l"),
        ({"device_id": "d", "card_token": "t"}, "card_token:t"),
        ({"device_id": "d", "email": "a@b.co"}, "email:a@b.co"),
        ({"email": "a@b.co", "msisdn": "+447700900123"}, "msisdn:+447700900123"),
    ],
)
def test_the_key_follows_the_priority_order(
    validator: EventValidator, identifiers: dict[str, str], expected: str
) -> None:
    doc = identified(identifiers=identifiers)
    assert check(validator, doc, channel="telco", key=expected.encode()) == doc
    for name, value in identifiers.items():
        if f"{name}:{value}" != expected:
            result = rejected(
                check(validator, doc, channel="telco", key=f"{name}:{value}".encode())
            )
            assert result.reason == "key_mismatch"


@pytest.mark.parametrize("key", [None, b""])
def test_an_identified_event_without_key_names_the_key_to_set(
    validator: EventValidator, key: bytes | None
) -> None:
    result = rejected(check(validator, identified(), channel="telco", key=key))
    assert result == Rejection(
        "missing_key",
        (
            'key: the message has no key — set the Kafka message key to "msisdn:+447700900123" '
            "(UTF-8): an event without customer_id is keyed by <type>:<value> of the first "
            "identifier present in the order msisdn, email, loyalty_id, card_token, device_id, "
            "so all of a customer's events share a partition and stay in order",
        ),
    )


@pytest.mark.parametrize(
    "key",
    [b"+447700900123", b"device_id:imei:35-209900-176148-1", b"msisdn:+447700900123 ", b"\xff"],
)
def test_an_identified_event_with_another_key_says_the_key_and_the_rule(
    validator: EventValidator, key: bytes
) -> None:
    result = rejected(check(validator, identified(), channel="telco", key=key))
    assert result.reason == "key_mismatch"
    (error,) = result.errors
    assert error.startswith("key: ")
    assert 'does not equal "msisdn:+447700900123" — an event without customer_id is keyed by ' in (
        error
    )
    assert "in the order msisdn, email, loyalty_id, card_token, device_id" in error


def test_identified_events_get_the_same_checks_as_the_others(validator: EventValidator) -> None:
    key = b"msisdn:+447700900123"
    # channel field against the topic, and the type's channels
    result = rejected(check(validator, identified(), channel="mobile", key=key))
    assert result.reason == "channel_mismatch" and result.errors[0].startswith("channel: ")
    doc = identified(channel="web")
    result = rejected(check(validator, doc, channel="web", key=key))
    assert result.reason == "channel_mismatch" and result.errors[0].startswith("type: ")
    # dates
    result = rejected(
        check(validator, identified(occurred_at="1999-12-31T23:59:59Z"), "telco", key)
    )
    assert result.reason == "date_out_of_range"
    result = rejected(
        check(validator, identified(occurred_at="2099-01-01T00:00:00Z"), "telco", key)
    )
    assert result.reason == "future_event"
    # size and key size
    value = orjson.dumps(identified())
    result = rejected(validator.check("telco", key, value, len(value) - 1))
    assert result.reason == "too_large"
    assert rejected(check(validator, identified(), "telco", b"k" * 2000)).reason == "key_too_large"
    # the schema: payload, unknown fields, identifiers required and well-formed
    result = rejected(check(validator, identified(payload={}), "telco", key))
    assert [e.split(":")[0] for e in result.errors] == ["payload.country"]
    result = rejected(check(validator, identified(identifiers={"msisdn": "07700900123"}), "telco"))
    assert [e.split(":")[0] for e in result.errors] == ["identifiers.msisdn"]
    result = rejected(check(validator, identified(customerid="x"), "telco", key))
    assert result.errors[0].startswith("customerid: unknown field — remove it; ")


def test_a_null_customer_id_is_not_an_identified_event(validator: EventValidator) -> None:
    doc = {**identified(), "customer_id": None}
    result = rejected(check(validator, doc, "telco", b"msisdn:+447700900123"))
    assert result.reason == "schema_violation"
    assert [e.split(":")[0] for e in result.errors] == ["customer_id"]


@pytest.mark.parametrize("event_type", ["identity.linked", "identity.unlinked"])
def test_identity_events_need_a_customer_id(validator: EventValidator, event_type: str) -> None:
    doc = identified(type=event_type, channel="crm", payload={})
    result = rejected(check(validator, doc, "crm", b"msisdn:+447700900123"))
    assert result == Rejection(
        "schema_violation",
        (
            f"customer_id: required field is missing — {event_type} events name their customer "
            "by customer_id (the customer the identifiers are linked to or unlinked from), "
            "identifiers alone are not enough: set customer_id and key the message by it",
        ),
    )
    # With other problems, all of them.
    result = rejected(check(validator, {**doc, "payload": {"x": 1}}, "crm", None))
    assert [e.split(":")[0] for e in result.errors] == ["customer_id", "payload.x"]


def test_an_erasure_request_needs_a_customer_id(validator: EventValidator) -> None:
    # An erasure names whom it forgets: never a guess resolved from a phone number.
    doc = identified(type="privacy.erasure_requested", channel="crm", payload={"request_id": "R1"})
    result = rejected(check(validator, doc, "crm", b"msisdn:+447700900123"))
    assert result == Rejection(
        "schema_violation",
        (
            "customer_id: required field is missing — privacy.erasure_requested events name "
            "their customer by customer_id (the customer to forget), identifiers alone are not "
            "enough: set customer_id and key the message by it",
        ),
    )


# --- unidentified: neither customer_id nor identifiers ---------------------------------

UNIDENTIFIED_MESSAGE = (
    "customer_id/identifiers: the event names no customer — set customer_id, or identifiers "
    "(msisdn, email, device_id, card_token, loyalty_id) when the channel does not know the "
    "customer id"
)


@pytest.mark.parametrize("key", [b"alice", None])
def test_an_event_naming_no_customer_is_unidentified(
    validator: EventValidator, key: bytes | None
) -> None:
    result = rejected(check(validator, event(customer_id=None), key=key))
    assert result == Rejection("unidentified", (UNIDENTIFIED_MESSAGE,))
    # before the channel is looked at
    result = rejected(check(validator, event(customer_id=None), channel="web", key=key))
    assert result.reason == "unidentified"


def test_naming_no_customer_among_other_errors_is_a_schema_violation(
    validator: EventValidator,
) -> None:
    result = rejected(check(validator, event(customer_id=None, payload={"offer_id": "OD-1"})))
    assert result.reason == "schema_violation"
    assert result.errors[0] == (
        "customer_id: required field is missing — set customer_id, or identifiers (msisdn, "
        "email, device_id, card_token, loyalty_id) when the channel does not know the customer id"
    )
    assert [e.split(":")[0] for e in result.errors] == ["customer_id", "payload.offer_type"]
    # An unknown type too: both errors, as before identifiers existed.
    result = rejected(check(validator, event(customer_id=None, type="order.shipped")))
    assert result.reason == "schema_violation"
    assert [e.split(":")[0] for e in result.errors] == ["customer_id", "type"]


# --- identity records (identity.log) --------------------------------------------------

IDENTITY_RECORD: dict[str, Any] = {
    "record_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "type": "identity.refused",
    "customer_id": "maria-s14",
    "identifier": {"type": "msisdn", "value": "+447700900123"},
    "merged_from": None,
    "reason": "linked_to_another_customer",
    "source_event_id": "e-1",
    "at": "2026-01-15T09:30:00.125Z",
}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"type": "identity.linked", "reason": None},
        {"type": "identity.merged", "reason": None, "identifier": None, "merged_from": "bob"},
        {"type": "identity.merged", "reason": None, "merged_from": "anon:email:" + "x" * 254},
        {"customer_id": None, "reason": "blocked_value"},
        {"reason": "shared_device"},
        {"reason": "identifier_limit"},
        {"reason": "reserved_id", "customer_id": "anon:x"},
        {"type": "identity.unlinked", "reason": None, "at": "2026-01-15T10:30:00+01:00"},
    ],
)
def test_identity_records(changes: dict[str, Any]) -> None:
    assert validate_record("identity", {**IDENTITY_RECORD, **changes}) == []


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"type": "identity.stitched"}, ["type"]),
        ({"reason": "because"}, ["reason"]),
        ({"reason": ""}, ["reason"]),
        ({"identifier": {"type": "phone", "value": ""}}, ["identifier.type", "identifier.value"]),
        ({"identifier": {"type": "msisdn"}}, ["identifier.value"]),
        ({"identifier": "msisdn:+447700900123"}, ["identifier"]),
        ({"customer_id": ""}, ["customer_id"]),
        ({"merged_from": "x" * 266}, ["merged_from"]),
        ({"at": "2026-01-15T09:30:00"}, ["at"]),
        ({"source_event_id": None}, ["source_event_id"]),
        ({"note": "x"}, ["note"]),
    ],
)
def test_identity_records_refused(changes: dict[str, Any], fields: list[str]) -> None:
    errors = validate_record("identity", {**IDENTITY_RECORD, **changes})
    assert [e.split(":")[0] for e in errors] == fields, errors


def test_identity_records_have_every_field() -> None:
    for name in IDENTITY_RECORD:
        record = {k: v for k, v in IDENTITY_RECORD.items() if k != name}
        assert validate_record("identity", record) == [
            f"{name}: required field is missing — add it: "
            + load_schema(VENDOR, "identity")["properties"][name]["description"]
        ]
    errors = validate_record("identity", {**IDENTITY_RECORD, "reason": "because"})
    assert errors == [
        'reason: "because" is not allowed — use one of: blocked_value, shared_device, '
        "linked_to_another_customer, identifier_limit, reserved_id, null"
    ]
