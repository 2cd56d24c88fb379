"""Caps on the customer record: every collection bounded (closed items first, then the
oldest), the encoded record never over max_state_bytes, every drop counted; the timeline
bounded too."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from processors.domain import caps
from processors.domain import timers as tm
from processors.domain.contact import ContactPolicy
from processors.domain.model import CustomerState, Event, StepOutputs, parse_time
from processors.domain.policy import Policy
from processors.domain.step import StepContext, fire_timers, step
from processors.domain.timeline import MAX_ENTRY_BYTES, SUMMARY_CHARS, summarize, timeline_entry
from processors.rulebook import load_ruleset
from processors.settings import DEFAULT_RULES_DIR, Settings

NOW = parse_time("2026-11-22T12:00:00Z")
HOUR = 3600.0
DAY = 86400.0
SETTINGS = Settings()
RULES = load_ruleset(DEFAULT_RULES_DIR, SETTINGS.rule_delays())


def context(**policy: Any) -> StepContext:
    return StepContext(
        Policy(max_event_age=7 * DAY, **policy),
        ContactPolicy(quiet_start="00:00", quiet_end="00:00"),
        RULES,
        b"k",
        lead_points=SETTINGS.lead_points,
    )


CTX = context()


def ev(type_: str, payload: dict[str, Any], event_id: str, channel: str, at: float) -> Event:
    return Event(event_id, type_, channel, "c1", at, payload, produced_at=at)


def coupon_issued(n: int, at: float, valid_hours: int = 8760) -> Event:
    return ev(
        "coupon.issued",
        {
            "coupon_id": f"COUPON-{n:06d}-{'x' * 100}",
            "value": 5,
            "currency": "EUR",
            "valid_hours": valid_hours,
        },
        f"issue-{n}",
        "tv",
        at,
    )


def coupon(expires_at: float, status: str = "issued") -> dict[str, Any]:
    return {
        "value": 5,
        "currency": "EUR",
        "expires_at": expires_at,
        "status": status,
        "issued_channel": "tv",
        "redeemed_at": None if status == "issued" else expires_at - HOUR,
        "redeemed_channel": None if status == "issued" else "pos",
    }


def total(outs: list[StepOutputs]) -> Counter[str]:
    counted: Counter[str] = Counter()
    for out in outs:
        counted.update(out.state_items_dropped)
    return counted


def test_4000_coupons_keep_the_record_under_the_cap() -> None:
    """Issue 9: 4,000 coupons made a 1.16 MB record; now it stays under 256 KiB."""
    state: CustomerState | None = None
    outs = []
    for batch in range(8):
        events = [coupon_issued(batch * 500 + i, NOW - 3600 + batch) for i in range(500)]
        state, out = step(state, events, CTX, NOW)
        outs.append(out)
        assert out.state_encoded == orjson.dumps(state)
        assert len(out.state_encoded) <= CTX.policy.max_state_bytes
    assert state is not None
    assert len(state.coupons) == caps.MAX_COUPONS
    assert total(outs)["coupons"] == 4000 - caps.MAX_COUPONS
    # The newest stay (the oldest open ones went first).
    assert f"COUPON-{3999:06d}-{'x' * 100}" in state.coupons
    assert f"COUPON-{0:06d}-{'x' * 100}" not in state.coupons
    # Timers keep today's refusal at 64: the reminders beyond it were refused, not dropped.
    assert len(state.timers) == tm.MAX_TIMERS
    assert sum(out.timers_refused for out in outs) == 4000 - tm.MAX_TIMERS


def test_closed_coupons_go_before_open_ones() -> None:
    state = CustomerState.new("c1")
    for n in range(caps.MAX_COUPONS):
        state.coupons[f"open-{n}"] = coupon(NOW + DAY)
    state.coupons["redeemed"] = coupon(NOW + DAY, status="redeemed")
    state.coupons["expired"] = coupon(NOW - HOUR)
    dropped: dict[str, int] = {}
    caps.apply_count_caps(state, NOW, dropped)
    assert dropped == {"coupons": 2}
    assert "redeemed" not in state.coupons and "expired" not in state.coupons
    assert "open-0" in state.coupons


def test_expired_offers_and_finished_appointments_go_first() -> None:
    state = CustomerState.new("c1")
    for n in range(caps.MAX_OFFERS):
        state.offers[f"t{n}"] = {
            "offer_type": "x",
            "rule": "r",
            "channel": "sms",
            "expires_at": NOW + DAY,
        }
    state.offers["late"] = {
        "offer_type": "x",
        "rule": "r",
        "channel": "sms",
        "expires_at": NOW - HOUR,
    }
    for n in range(caps.MAX_APPOINTMENTS):
        state.appointments[f"a{n}"] = {
            "department": "d",
            "scheduled_at": NOW + (n + 1) * DAY,
            "status": "booked",
        }
    state.appointments["done"] = {
        "department": "d",
        "scheduled_at": NOW + 99 * DAY,
        "status": "diagnosed",
    }
    dropped: dict[str, int] = {}
    caps.apply_count_caps(state, NOW, dropped)
    assert dropped == {"offers": 1, "appointments": 1}
    assert "late" not in state.offers and "done" not in state.appointments
    # Then the oldest: the earliest scheduled open appointment.
    state.appointments["new"] = {
        "department": "d",
        "scheduled_at": NOW + 50 * DAY,
        "status": "booked",
    }
    caps.apply_count_caps(state, NOW, dropped)
    assert "a0" not in state.appointments and dropped["appointments"] == 2


def test_every_collection_has_a_count_cap() -> None:
    state = CustomerState.new("c1")
    state.cooldowns = {f"rule:{n}": NOW - n for n in range(caps.MAX_COOLDOWNS + 5)}
    state.products = [f"p{n}" for n in range(caps.MAX_PRODUCTS + 6)]
    state.lead = [[NOW - n, "page.viewed", 5.0] for n in range(caps.MAX_LEAD + 7)]
    state.airport_withdrawals = [
        {"atm_id": f"A{n}", "country": "FR", "at": NOW - n} for n in range(25)
    ]
    state.contact = {
        "sent": [],
        "responses": {f"o{n}": [[NOW - n, "declined"]] for n in range(40)},
        "paused_until": {f"o{n}": NOW + n for n in range(41)},
    }
    dropped: dict[str, int] = {}
    caps.apply_count_caps(state, NOW, dropped)
    assert dropped == {
        "cooldowns": 5,
        "products": 6,
        "lead": 7,
        "airport_withdrawals": 25 - caps.MAX_AIRPORT_WITHDRAWALS,
        "contact_responses": 40 - caps.MAX_CONTACT_OFFER_TYPES,
        "contact_paused": 41 - caps.MAX_CONTACT_OFFER_TYPES,
    }
    # Oldest first everywhere.
    assert f"rule:{caps.MAX_COOLDOWNS + 4}" not in state.cooldowns and "rule:0" in state.cooldowns
    assert state.products[0] == "p6"
    assert min(entry[0] for entry in state.lead) == NOW - (caps.MAX_LEAD - 1)
    assert "o39" not in state.contact["responses"] and "o0" in state.contact["responses"]
    assert "o0" not in state.contact["paused_until"] and "o40" in state.contact["paused_until"]


def stuffed(ring: int = 3000) -> CustomerState:
    """A record with a lot of everything (as a buggy or hostile producer could make)."""
    state = CustomerState.new("c" * 128)
    state.coupons = {f"K{n}-{'y' * 120}": coupon(NOW + DAY) for n in range(caps.MAX_COUPONS)}
    state.coupons["closed"] = coupon(NOW - DAY)
    state.offers = {
        f"{n:032x}": {
            "offer_type": "o" * 64,
            "rule": "r" * 64,
            "channel": "sms",
            "expires_at": NOW + DAY,
            "value": 1.0,
        }
        for n in range(caps.MAX_OFFERS)
    }
    state.cooldowns = {f"{'r' * 64}:{n}-{'s' * 100}": NOW - n for n in range(caps.MAX_COOLDOWNS)}
    state.products = [f"{n}-{'p' * 60}" for n in range(caps.MAX_PRODUCTS)]
    state.lead = [[NOW - n, "appointment.booked", 10.0] for n in range(caps.MAX_LEAD)]
    state.seen_ids = list(range(2**62, 2**62 + ring))
    state.seen_days = [20000] * ring
    state.timers = [
        tm.Timer.new("rule_timer", "c1", str(n), NOW + n, {"payload": "z" * 2000}).to_dict()
        for n in range(tm.MAX_TIMERS)
    ]
    return state


def test_the_byte_cap_trims_oldest_first_and_counts() -> None:
    state = stuffed()
    assert len(orjson.dumps(state)) > 300_000
    dropped: dict[str, int] = {}
    encoded = caps.enforce_caps(state, NOW, 256 * 1024, dropped)
    assert encoded == orjson.dumps(state) and len(encoded) <= 256 * 1024
    # Closed first, then history, then open items, in TRIM_ORDER; what was enough stops it.
    assert dropped["coupons"] >= 1 and "closed" not in state.coupons
    assert dropped["lead"] == caps.MAX_LEAD and not state.lead
    assert "timers" not in dropped and len(state.timers) == tm.MAX_TIMERS
    assert "seen_ids" not in dropped


def test_the_smallest_byte_cap_is_always_met() -> None:
    """64 KiB (the setting's minimum) even for the worst record: the dedup ring and the
    timers go last, and what cannot be trimmed is bounded by the contract."""
    state = stuffed(ring=20000)
    # The untrimmable rest at its largest: traits, consents, last_seen, cart, contact.sent.
    state.traits = {
        "home_country": "GB",
        "marital_status": "divorced",
        "children": 50,
        "preferred_channel": "email",
        "timezone": "T" * 64,
        "language": "l" * 35,
        "room_type": "\u0001" * 64,
        "requests": ["\u0001" * 64] * 20,
        "tv_favourites": ["\u0001" * 64] * 20,
        "conversions": 10**9,
        "funnel_stage": "loyalty",
    }
    state.consents = {
        f"{c}:{p}": {"granted": True, "at": NOW}
        for c in ("sms", "email", "push", "phone")
        for p in ("marketing", "service")
    }
    state.last_seen = {f"channel{n:02d}": NOW for n in range(13)}
    state.cart = {
        "cart_id": "\u0001" * 128,
        "currency": "EUR",
        "updated_at": NOW,
        "items": [
            {"sku": "\u0001" * 64, "qty": 999, "unit_price": 99999999.99} for _ in range(100)
        ],
    }
    state.contact = {
        "sent": [[NOW - n, "o" * 64] for n in range(23)],
        "responses": {},
        "paused_until": {},
    }
    dropped: dict[str, int] = {}
    encoded = caps.enforce_caps(state, NOW, caps.MIN_STATE_BYTES, dropped)
    assert len(encoded) <= caps.MIN_STATE_BYTES
    assert dropped["seen_ids"] > 0


def test_step_and_fire_timers_report_drops_and_the_encoding() -> None:
    ctx = context(max_state_bytes=64 * 1024, dedup_capacity=4000)
    events = [coupon_issued(n, NOW - HOUR, valid_hours=2) for n in range(300)]
    state, out = step(None, events, ctx, NOW)
    assert out.state_items_dropped["coupons"] >= 300 - caps.MAX_COUPONS
    assert out.state_encoded is not None and len(out.state_encoded) <= 64 * 1024
    fired = fire_timers(state, ctx, NOW + DAY)
    assert fired.changed and fired.state_encoded == orjson.dumps(state)
    assert len(fired.state_encoded) <= 64 * 1024
    # A batch of duplicates changes nothing: nothing to store, nothing encoded.
    _, dup = step(state, events[-1:], ctx, NOW)
    assert dup.duplicates == 1 and not dup.changed and dup.state_encoded is None


def test_coupons_leave_the_record_with_their_read_model_key() -> None:
    state, _ = step(None, [coupon_issued(1, NOW - 40 * DAY, valid_hours=24)], CTX, NOW - 40 * DAY)
    assert len(state.coupons) == 1
    state, out = step(state, [ev("page.viewed", {"url": "u"}, "p1", "web", NOW)], CTX, NOW)
    assert state.coupons == {} and "coupons" not in out.state_items_dropped  # not a cap drop


@pytest.mark.parametrize("length", [20, 200])
def test_the_timeline_is_bounded(length: int) -> None:
    control = "\u0001"  # JSON escapes it six-fold: the largest encoding of a character
    long_offer = {
        "offer_id": control * 128,
        "offer_type": control * 64,
        "limit": 10**15,
        "currency": "EUR",
    }
    event = Event(control * 128, "offer.accepted", "callcenter", "c1", NOW, long_offer, NOW)
    assert len(summarize(event)) == SUMMARY_CHARS
    assert len(orjson.dumps(timeline_entry(event))) <= MAX_ENTRY_BYTES
    assert 200 * MAX_ENTRY_BYTES < 1_000_000  # the broker's message limit, at the longest
    tail = control * 120
    events = [
        Event(f"e{n}-{tail}", "offer.accepted", "callcenter", "c1", NOW + n, long_offer, NOW)
        for n in range(length + 30)
    ]
    ctx = StepContext(CTX.policy, CTX.contact, RULES, b"k", timeline_length=length)
    _, out = step(None, events, ctx, NOW + 1000, timeline=[])
    assert out.timeline is not None and len(out.timeline) == length
    assert len(orjson.dumps(out.timeline)) <= length * MAX_ENTRY_BYTES
