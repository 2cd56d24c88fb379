"""Journeys in the pure step: timer rules (fire, cancel, restart, never twice), carts,
coupons, lead scoring and funnel, hotel, hospital."""

from __future__ import annotations

from typing import Any

from processors.domain.contact import ContactPolicy
from processors.domain.model import CustomerState, Event, StepOutputs, parse_time
from processors.domain.policy import Policy
from processors.domain.read_model import cart_key, coupon_key, project
from processors.domain.step import StepContext, fire_timers, step
from processors.rulebook import load_ruleset
from processors.settings import DEFAULT_RULES_DIR, Settings

NOW = parse_time("2026-11-22T12:00:00Z")
HOUR = 3600.0
SETTINGS = Settings()
CTX = StepContext(
    Policy(max_event_age=7 * 86400),
    ContactPolicy(quiet_start="00:00", quiet_end="00:00"),
    load_ruleset(DEFAULT_RULES_DIR, SETTINGS.rule_delays()),
    b"k",
    lead_points=SETTINGS.lead_points,
)


def ev(type_: str, payload: dict[str, Any], event_id: str, channel: str, at: float) -> Event:
    return Event(event_id, type_, channel, "c1", at, payload, produced_at=at)


def cart(event_id: str, at: float, items: int = 1, cart_id: str = "C1") -> Event:
    lines = [{"sku": f"S{i}", "qty": 1, "unit_price": 2.5} for i in range(items)]
    return ev(
        "cart.updated",
        {"cart_id": cart_id, "items": lines, "currency": "EUR"},
        event_id,
        "mobile",
        at,
    )


def run(
    state: CustomerState | None, *events: Event, now: float = NOW
) -> tuple[CustomerState, StepOutputs]:
    return step(state, list(events), CTX, now)


def types(out: StepOutputs) -> list[str]:
    return [t.type for t in out.triggers]


def test_cart_reminder_fires_once_after_the_wait() -> None:
    start = NOW - 30 * HOUR
    state, out = run(None, cart("c1", start), now=start)
    assert out.triggers == [] and len(state.timers) == 1
    assert types(fire_timers(state, CTX, start + 23 * HOUR)) == []
    fired = fire_timers(state, CTX, start + 24 * HOUR + 1)
    [reminder] = fired.triggers
    assert reminder.type == "cart_reminder" and reminder.channel == "email"
    assert reminder.payload["items"][0]["sku"] == "S0"
    assert fire_timers(state, CTX, NOW).triggers == []  # never twice


def test_order_or_emptied_cart_cancels_and_a_change_restarts() -> None:
    start = NOW - 30 * HOUR
    state, _ = run(None, cart("c1", start), now=start)
    state, _ = run(state, cart("c2", start + 10 * HOUR, items=2), now=start + 10 * HOUR)
    assert [t["due_at"] for t in state.timers] == [start + 34 * HOUR]  # restarted, one timer
    state, out = run(
        state,
        ev(
            "order.placed",
            {"order_id": "O1", "cart_id": "C1", "total": 5, "currency": "EUR"},
            "o1",
            "web",
            start + 11 * HOUR,
        ),
    )
    assert state.timers == [] and out.timers_cancelled == 1 and state.cart is None
    state, _ = run(state, cart("c3", start + 12 * HOUR), now=start + 12 * HOUR)
    state, out = run(state, cart("c4", start + 13 * HOUR, items=0), now=start + 13 * HOUR)
    assert state.timers == [] and out.timers_cancelled == 1


def test_cart_in_redis_and_deleted_when_ordered() -> None:
    state, _ = run(None, cart("c1", NOW - 10))
    [write] = [w for w in project(state, NOW) if w.key == cart_key("c1")]
    assert write.value is not None and b'"cart_id":"C1"' in write.value
    state, _ = run(
        state,
        ev("order.placed", {"order_id": "O", "total": 5, "currency": "EUR"}, "o1", "web", NOW - 5),
    )
    [write] = [w for w in project(state, NOW) if w.key == cart_key("c1")]
    assert write.value is None


def test_second_redemption_is_refused_on_the_redeeming_channel() -> None:
    issued = ev(
        "coupon.issued",
        {"coupon_id": "K1", "value": 5, "currency": "EUR", "valid_hours": 48},
        "i1",
        "tv",
        NOW - 100,
    )
    first = ev("coupon.redeemed", {"coupon_id": "K1"}, "r1", "pos", NOW - 50)
    second = ev("coupon.redeemed", {"coupon_id": "K1"}, "r2", "web", NOW - 40)
    state, out = run(None, issued, first, second)
    [refused] = out.triggers
    assert (refused.type, refused.channel) == ("coupon_redemption_refused", "web")
    assert refused.payload["redeemed_channel"] == "pos"
    assert state.coupons["K1"]["redeemed_channel"] == "pos"  # the first stands
    assert state.timers == []  # the reminder was cancelled by the redemption
    [write] = [w for w in project(state, NOW) if w.key == coupon_key("K1")]
    assert write.value is not None and b'"status":"redeemed"' in write.value


def test_unredeemed_coupon_gets_one_reminder_in_its_last_day() -> None:
    issued = ev(
        "coupon.issued",
        {"coupon_id": "K2", "value": 5, "currency": "EUR", "valid_hours": 72},
        "i1",
        "sms",
        NOW,
    )
    state, _ = run(None, issued)
    assert [t["due_at"] for t in state.timers] == [NOW + 48 * HOUR]
    [reminder] = fire_timers(state, CTX, NOW + 48 * HOUR + 1).triggers
    assert reminder.type == "coupon_reminder" and reminder.expires_at == NOW + 72 * HOUR


def test_lead_crosses_the_threshold_once_and_funnel_advances() -> None:
    views = [ev("page.viewed", {"url": f"/p{i}"}, f"v{i}", "web", NOW - 100 + i) for i in range(6)]
    clicks = [ev("email.clicked", {}, f"e{i}", "email", NOW - 50 + i) for i in range(3)]
    state, out = run(None, *views, *clicks)
    [lead] = [t for t in out.triggers if t.type == "qualified_lead"]
    assert lead.channel == "crm" and lead.payload["score"] == 50.0
    assert len(lead.payload["interactions"]) == 8
    assert state.traits["funnel_stage"] == "engagement"
    state, out = run(
        state,
        ev("order.placed", {"order_id": "O", "total": 1, "currency": "EUR"}, "o1", "web", NOW - 1),
    )
    assert "qualified_lead" not in types(out)  # already qualified: cooldown
    assert state.traits["funnel_stage"] == "conversion"


def test_hotel_guest_preferences_at_any_property() -> None:
    prefs = ev(
        "profile.updated",
        {"room_type": "king", "requests": ["extra_pillows"], "tv_favourites": ["news"]},
        "p1",
        "hotel",
        NOW - 20,
    )
    _, out = run(
        None, prefs, ev("hotel.checked_in", {"property_id": "PAR-1"}, "h1", "hotel", NOW - 10)
    )
    [trigger] = out.triggers
    assert trigger.channel == "hotel"
    assert trigger.payload == {
        "property_id": "PAR-1",
        "room_type": "king",
        "requests": ["extra_pillows"],
        "tv_favourites": ["news"],
    }


def test_hospital_journey() -> None:
    scheduled = "2026-11-24T09:00:00+01:00"
    booked = ev(
        "appointment.booked",
        {"appointment_id": "A1", "department": "cardiology", "scheduled_at": scheduled},
        "b1",
        "mobile",
        NOW - 30,
    )
    state, out = run(None, booked)
    [timer] = state.timers
    assert timer["due_at"] == parse_time(scheduled) - 86400
    [reminder] = fire_timers(state, CTX, timer["due_at"] + 1).triggers
    assert reminder.type == "appointment_reminder" and reminder.payload["scheduled_at"] == scheduled
    state, out = run(
        state, ev("kiosk.checked_in", {"appointment_id": "A1"}, "k1", "kiosk", NOW - 20)
    )
    assert [(t.type, t.channel, t.payload["department"]) for t in out.triggers] == [
        ("queue_ticket", "push", "cardiology")
    ]
    state, out = run(
        state,
        ev("diagnosis.ready", {"appointment_id": "A1", "report_id": "R1"}, "d1", "crm", NOW - 10),
    )
    assert sorted((t.type, t.channel) for t in out.triggers) == [
        ("diagnosis_available", "email"),
        ("insurance_claim_prompt", "push"),
    ]
    _, out = run(state, ev("kiosk.checked_in", {"appointment_id": "NOPE"}, "k2", "kiosk", NOW - 5))
    assert sorted(types(out)) == ["appointment_unknown", "queue_ticket"]
