"""No time arithmetic overflows or goes negative: whatever the validator accepts steps and
projects without raising, and records stored before the bounds project clamped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest.mock import ANY

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from processors.domain.contact import ContactPolicy
from processors.domain.model import CustomerState, Event, format_time, parse_time
from processors.domain.policy import Policy
from processors.domain.read_model import COUPON_KEEP_SECONDS, ReadModelWrite, coupon_key, project
from processors.domain.step import StepContext, fire_timers, step
from processors.projection import queue_writes
from processors.rulebook import load_ruleset
from processors.settings import DEFAULT_RULES_DIR, Settings
from schemas import EventValidator, Rejection

SETTINGS = Settings()
CTX = StepContext(
    Policy(max_event_age=7 * 86400),
    ContactPolicy(),  # real quiet hours: they do date arithmetic in local time
    load_ruleset(DEFAULT_RULES_DIR, SETTINGS.rule_delays()),
    b"k",
    lead_points=SETTINGS.lead_points,
)
VALIDATOR = EventValidator()
NOW = parse_time("2026-12-02T05:44:00Z")


def project_everything(state: CustomerState, now: float) -> list[ReadModelWrite]:
    """The projection, the records and a pipeline of writes, as the worker does them."""
    writes = project(state, now)
    for write in writes:
        assert write.expire_at is None or write.expire_at > now, write
    queue_writes(_Pipe(), writes, keys_unique=True)
    return writes


class _Pipe:
    """Records commands; refuses what Redis refuses (a PXAT <= 0)."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def mset(self, mapping: dict[str, bytes]) -> None:
        self.commands.append(("mset", mapping))

    def set(self, key: str, value: bytes, pxat: int | None = None) -> None:
        assert pxat is None or pxat > 0, (key, pxat)
        self.commands.append(("set", key, pxat))

    def hset(self, key: str, field: str, value: bytes) -> None:
        self.commands.append(("hset", key, field))

    def delete(self, key: str) -> None:
        self.commands.append(("delete", key))


def full_cycle(record: dict[str, Any], now: float) -> None:
    """step, triggers and decisions on the wire, projection, every timer fired later."""
    event = Event.from_record(record, now)
    state, out = step(None, [event], CTX, now, [])
    for trigger in out.triggers:
        orjson.dumps(trigger.to_record())
    for decision in out.decisions:
        orjson.dumps(decision.to_record())
    project_everything(state, now)
    for when in (now + 3600, now + 400 * 86400, now + 6 * 366 * 86400):
        fired = fire_timers(state, CTX, when)
        for trigger in fired.triggers:
            orjson.dumps(trigger.to_record())
        for decision in fired.decisions:
            orjson.dumps(decision.to_record())
        project_everything(state, when)


def envelope(type_: str, channel: str, occurred_at: str, payload: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "event_id": "e-1",
            "type": type_,
            "occurred_at": occurred_at,
            "channel": channel,
            "customer_id": "c1",
            "payload": payload,
        }
    )


def rfc3339(moment: datetime, offset_minutes: int) -> str:
    zone = UTC if offset_minutes == 0 else timezone(timedelta(minutes=offset_minutes))
    text = moment.replace(tzinfo=zone).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


ANY_DATE = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
OFFSETS = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)
EARLIEST = parse_time("2000-01-01T00:00:00Z")


@st.composite
def clock_and_time(draw: st.DrawFn) -> tuple[float, str]:
    """A worker clock (2000-2200) and an occurred_at: anywhere in 1-9999, or (mostly)
    near the accepted window [2000-01-01, now + skew], edges included."""
    now = draw(st.floats(min_value=EARLIEST, max_value=parse_time("2200-01-01T00:00:00Z")))
    near = st.floats(min_value=EARLIEST - 86400, max_value=now + 900).map(
        lambda t: datetime.fromtimestamp(t, UTC).replace(tzinfo=None, microsecond=0)
    )
    moment = draw(st.one_of(ANY_DATE, near, near, near))
    return now, rfc3339(moment, draw(OFFSETS))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clocked=clock_and_time(), valid_hours=st.integers(min_value=1, max_value=8760))
@example(clocked=(NOW, "9999-12-30T00:00:00Z"), valid_hours=8760)
@example(clocked=(NOW, "1900-01-01T00:00:00Z"), valid_hours=24)
@example(clocked=(NOW, "2026-12-02T05:49:00Z"), valid_hours=8760)
def test_any_accepted_coupon_steps_and_projects(
    clocked: tuple[float, str], valid_hours: int
) -> None:
    now, occurred_at = clocked
    value = envelope(
        "coupon.issued",
        "tv",
        occurred_at,
        {"coupon_id": "K1", "value": 5, "currency": "EUR", "valid_hours": valid_hours},
    )
    result = VALIDATOR.check("tv", b"c1", value, now=now)
    if isinstance(result, Rejection):
        assert result.reason in ("future_event", "date_out_of_range"), result
        at = datetime.fromisoformat(occurred_at).timestamp()
        assert at < EARLIEST or at > now + 300
        return
    full_cycle(result, now)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    clocked=clock_and_time(),
    valid_hours=st.integers(min_value=1, max_value=720),
    scheduled=st.one_of(ANY_DATE, st.datetimes(datetime(2000, 1, 1), datetime(2210, 1, 1))),
)
def test_any_accepted_overdraft_and_appointment_steps_and_projects(
    clocked: tuple[float, str], valid_hours: int, scheduled: datetime
) -> None:
    now, occurred_at = clocked
    overdraft = envelope(
        "offer.accepted",
        "mobile",
        occurred_at,
        {
            "offer_id": "OD-1",
            "offer_type": "overdraft",
            "limit": 300,
            "currency": "EUR",
            "valid_hours": valid_hours,
        },
    )
    booking = envelope(
        "appointment.booked",
        "web",
        occurred_at,
        {"appointment_id": "A1", "department": "cardio", "scheduled_at": rfc3339(scheduled, 0)},
    )
    for channel, value in (("mobile", overdraft), ("web", booking)):
        result = VALIDATOR.check(channel, b"c1", value, now=now)
        if not isinstance(result, Rejection):
            full_cycle(result, now)


def test_the_coupon_of_year_9999_that_bypassed_the_validator_is_clamped() -> None:
    """Forwarded before the bounds existed: its time is clamped to now + skew."""
    record = orjson.loads(
        envelope(
            "coupon.issued",
            "tv",
            "9999-12-31T00:00:00Z",
            {"coupon_id": "K9", "value": 5, "currency": "EUR", "valid_hours": 8760},
        )
    )
    state, out = step(None, [Event.from_record(record, NOW)], CTX, NOW, [])
    assert out.times_clamped == 1
    assert state.coupons["K9"]["expires_at"] == NOW + CTX.policy.max_future_skew + 8760 * 3600
    project_everything(state, NOW)


def test_stored_records_out_of_range_still_project() -> None:
    """Records written before the bounds: year 10000 expiry, a coupon dated 1900."""
    state = CustomerState.new("c1")
    state.coupons["far"] = {
        "value": 5,
        "currency": "EUR",
        "expires_at": parse_time("9999-12-31T00:00:00Z") + 8760 * 3600.0,
        "status": "issued",
        "issued_channel": "tv",
        "redeemed_at": None,
        "redeemed_channel": None,
    }
    state.coupons["old"] = {
        **state.coupons["far"],
        "expires_at": parse_time("1900-01-02T00:00:00Z"),
    }
    state.entitlements["overdraft"] = {
        "limit": 1,
        "currency": "EUR",
        "offer_id": "O",
        "expires_at": 1e300,
    }
    state.last_seen["tv"] = -1e15
    state.updated_at = float("inf")
    writes = {w.key: w for w in project_everything(state, NOW)}
    far = orjson.loads(writes[coupon_key("far")].value or b"")
    assert far["expires_at"] == "9999-12-31T23:59:59.999Z"
    # The 1900 coupon's key is past its keep period: skipped, never a negative PXAT.
    assert coupon_key("old") not in writes
    profile = orjson.loads(writes["omni:profile:c1"].value or b"")
    assert profile["last_seen"]["tv"] == "1970-01-01T00:00:00.000Z"
    assert profile["updated_at"] == "9999-12-31T23:59:59.999Z"


def test_a_past_expiry_is_skipped_and_a_pxat_before_1970_becomes_a_delete() -> None:
    state = CustomerState.new("c1")
    state.coupons["K"] = {
        "value": 5,
        "currency": "EUR",
        "expires_at": NOW - COUPON_KEEP_SECONDS - 1,
        "status": "issued",
        "issued_channel": "tv",
        "redeemed_at": None,
        "redeemed_channel": None,
    }
    assert [(w.key, w.value) for w in project(state, NOW)] == [
        ("omni:profile:c1", ANY),
        ("omni:offers:c1", b"{}"),
        ("omni:coupons:c1", b"[]"),  # nor is it in her list
    ]
    pipe = _Pipe()
    commands = queue_writes(
        pipe,
        [
            ReadModelWrite("a", b"1", expire_at=-2208988800.0),
            ReadModelWrite("b", b"1", expire_at=0.0),
            ReadModelWrite("c", b"1", expire_at=float("nan")),
            ReadModelWrite("d", b"1", expire_at=NOW + 60),
        ],
    )
    assert pipe.commands == [
        ("delete", "a"),
        ("delete", "b"),
        ("delete", "c"),
        ("set", "d", int((NOW + 60) * 1000)),
    ]
    assert [[w.key for w in covered] for covered in commands] == [["a"], ["b"], ["c"], ["d"]]


def test_step_clamps_ancient_event_times_too() -> None:
    event = Event("e1", "page.viewed", "web", "c1", -5e9, {"url": "u"}, produced_at=NOW)
    state, out = step(None, [event], CTX, NOW, [])
    assert out.times_clamped == 1
    assert state.last_seen["web"] == parse_time("2000-01-01T00:00:00Z")
    assert format_time(state.updated_at or 0.0) == "2000-01-01T00:00:00.000Z"
