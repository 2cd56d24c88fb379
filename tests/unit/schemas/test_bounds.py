"""The bounds JSON Schema cannot express: event time against the clock (future_event),
dates against 2000-01-01 and occurred_at (date_out_of_range), the key's size
(key_too_large). "Now" is pinned: the validator's clock or check(now=...)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from schemas import (
    DATE_OUT_OF_RANGE,
    FUTURE_EVENT,
    KEY_TOO_LARGE,
    EventValidator,
    Rejection,
    validate_record,
)
from schemas.bounds import EARLIEST_TIME, MAX_DATE_AHEAD_SECONDS, MAX_KEY_BYTES

NOW = datetime(2026, 12, 2, 5, 44, tzinfo=UTC).timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@pytest.fixture(scope="module")
def validator() -> EventValidator:
    return EventValidator(clock=lambda: NOW)


def consent(occurred_at: str, customer: str = "alice") -> dict[str, Any]:
    return {
        "event_id": "e-1",
        "type": "consent.updated",
        "occurred_at": occurred_at,
        "channel": "web",
        "customer_id": customer,
        "payload": {"channel": "sms", "purpose": "marketing", "granted": True},
    }


def coupon(occurred_at: str, valid_hours: int = 8760) -> dict[str, Any]:
    return {
        "event_id": "e-2",
        "type": "coupon.issued",
        "occurred_at": occurred_at,
        "channel": "tv",
        "customer_id": "alice",
        "payload": {
            "coupon_id": "TV-1",
            "value": 10,
            "currency": "EUR",
            "valid_hours": valid_hours,
        },
    }


def appointment(occurred_at: str, scheduled_at: str) -> dict[str, Any]:
    return {
        "event_id": "e-3",
        "type": "appointment.booked",
        "occurred_at": occurred_at,
        "channel": "web",
        "customer_id": "alice",
        "payload": {
            "appointment_id": "A1",
            "department": "cardiology",
            "scheduled_at": scheduled_at,
        },
    }


def check(
    validator: EventValidator, doc: dict[str, Any], key: bytes = b"alice", **kwargs: Any
) -> dict[str, Any] | Rejection:
    return validator.check(doc["channel"], key, orjson.dumps(doc), **kwargs)


def reason(result: dict[str, Any] | Rejection) -> str | None:
    return result.reason if isinstance(result, Rejection) else None


def test_consent_dated_2099_is_a_future_event(validator: EventValidator) -> None:
    result = check(validator, consent("2099-01-15T09:30:00Z"))
    assert isinstance(result, Rejection) and result.reason == FUTURE_EVENT
    [error] = result.errors
    assert error.startswith('occurred_at: "2099-01-15T09:30:00Z" is 26,') and " — " in error
    assert "2026-12-02T05:44:00Z" in error and "OMNI_MAX_FUTURE_SKEW_SECONDS" in error


def test_the_coupon_dated_9999_is_a_future_event(validator: EventValidator) -> None:
    assert reason(check(validator, coupon("9999-12-31T00:00:00Z"))) == FUTURE_EVENT


def test_the_skew_allowed_is_a_setting_and_inclusive(validator: EventValidator) -> None:
    assert reason(check(validator, consent(iso(NOW + 300)))) is None
    assert reason(check(validator, consent(iso(NOW + 301)))) == FUTURE_EVENT
    assert reason(check(validator, consent(iso(NOW + 301)), max_future_skew=600)) is None
    assert reason(check(validator, consent(iso(NOW + 1)), max_future_skew=0)) == FUTURE_EVENT
    # An offset does not fool it: the same instant written in another zone.
    ahead = datetime.fromtimestamp(NOW + 3600, timezone(timedelta(hours=-5)))
    assert reason(check(validator, consent(ahead.isoformat(timespec="seconds")))) == FUTURE_EVENT


def test_now_comes_from_the_clock_or_the_argument() -> None:
    late = EventValidator(clock=lambda: NOW + 86400 * 365 * 80)  # the clock of 2106
    assert reason(check(late, consent("2099-01-15T09:30:00Z"))) is None
    assert reason(check(late, consent("2099-01-15T09:30:00Z"), now=NOW)) == FUTURE_EVENT


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        ("1900-01-01T00:00:00Z", DATE_OUT_OF_RANGE),
        ("1969-12-31T23:59:59Z", DATE_OUT_OF_RANGE),
        ("1999-12-31T23:59:59.999Z", DATE_OUT_OF_RANGE),
        ("2000-01-01T01:00:00+02:00", DATE_OUT_OF_RANGE),  # 1999-12-31T23:00Z
        ("2000-01-01T00:00:00Z", None),
        ("1999-12-31T23:00:00-01:00", None),  # 2000-01-01T00:00Z
    ],
)
def test_ancient_dates_are_out_of_range(
    validator: EventValidator, occurred_at: str, expected: str | None
) -> None:
    result = check(validator, coupon(occurred_at, valid_hours=24))
    assert reason(result) == expected
    if isinstance(result, Rejection):
        assert result.errors[0].startswith(f'occurred_at: "{occurred_at}" is before 2000-01-01')


@pytest.mark.parametrize(
    ("scheduled_at", "expected"),
    [
        ("2026-01-20T10:30:00+01:00", None),
        ("9999-12-31T23:59:59Z", DATE_OUT_OF_RANGE),
        ("1900-06-01T10:00:00Z", DATE_OUT_OF_RANGE),
        (iso(datetime(2026, 1, 15, tzinfo=UTC).timestamp() + MAX_DATE_AHEAD_SECONDS), None),
        (
            iso(datetime(2026, 1, 15, tzinfo=UTC).timestamp() + MAX_DATE_AHEAD_SECONDS + 1),
            DATE_OUT_OF_RANGE,
        ),
    ],
)
def test_payload_dates_are_bounded(
    validator: EventValidator, scheduled_at: str, expected: str | None
) -> None:
    result = check(validator, appointment("2026-01-15T00:00:00Z", scheduled_at))
    assert reason(result) == expected
    if isinstance(result, Rejection):
        assert result.errors[0].startswith(f'payload.scheduled_at: "{scheduled_at}" is ')


def test_a_million_byte_key_is_key_too_large(validator: EventValidator) -> None:
    key = b"k" * 1_000_000
    result = check(validator, consent("2026-01-15T09:30:00Z"), key=key)
    assert isinstance(result, Rejection) and result.reason == KEY_TOO_LARGE
    assert result.errors == (
        "key: is 1000000 bytes, more than the limit of 1024 — set the Kafka message key to the "
        "customer_id (1-128 characters, UTF-8); this dead letter is keyed by the key's sha256 "
        "instead",
    )
    # A key at the limit is only compared with customer_id, as before.
    assert reason(check(validator, consent("2026-01-15T09:30:00Z"), key=b"k" * MAX_KEY_BYTES)) == (
        "key_mismatch"
    )


@pytest.mark.parametrize(
    "doc",
    [
        consent("2099-01-15T09:30:00Z"),
        coupon("1900-01-01T00:00:00Z"),
        appointment("2026-01-15T00:00:00Z", "9999-12-31T23:59:59Z"),
    ],
    ids=["future", "ancient", "scheduled"],
)
def test_every_bound_rejection_fits_the_deadletter_schema(
    validator: EventValidator, doc: dict[str, Any]
) -> None:
    result = check(validator, doc)
    assert isinstance(result, Rejection)
    record = {
        "reason": result.reason,
        "errors": list(result.errors),
        "source": {"topic": "touchpoint.web", "partition": 0, "offset": 1},
        "raw": orjson.dumps(doc).decode(),
        "received_at": "2026-12-02T05:44:00.000Z",
    }
    assert validate_record("deadletter", record) == []


def test_earliest_time_is_2000() -> None:
    assert iso(EARLIEST_TIME) == "2000-01-01T00:00:00Z"
