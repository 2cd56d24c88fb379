"""The step with the rule engine and contact policy: deferral and release, responses,
learned channel, briefing, one-tap actions."""

from __future__ import annotations

from typing import Any

from processors.domain.contact import ContactPolicy
from processors.domain.model import CustomerState, Event, parse_time
from processors.domain.policy import Policy
from processors.domain.step import StepContext, fire_timers, step
from processors.domain.views import preferred_channel
from processors.rulebook import load_ruleset
from processors.settings import DEFAULT_RULES_DIR, Settings
from producers.actions import verify_action_token

NOW = parse_time("2026-11-22T12:00:00Z")
RULES = load_ruleset(DEFAULT_RULES_DIR, Settings().rule_delays())
KEY = b"test-key-of-the-step-decisioning-tests-32+"
AWAKE = StepContext(Policy(), ContactPolicy(quiet_start="00:00", quiet_end="00:00"), RULES, KEY)
# Quiet 11:00-13:00 UTC: NOW (12:00) is inside.
QUIET = StepContext(
    Policy(),
    ContactPolicy(quiet_start="11:00", quiet_end="13:00", release_spread_seconds=0),
    RULES,
    KEY,
)


def ev(
    type_: str, payload: dict[str, Any], event_id: str, channel: str = "telco", at: float = NOW - 10
) -> Event:
    return Event(event_id, type_, channel, "c1", at, payload, produced_at=at)


def home(ctx: StepContext = AWAKE, **traits: Any) -> CustomerState:
    state, _ = step(
        None, [ev("profile.updated", {"home_country": "DE", **traits}, "p1", "crm")], ctx, NOW
    )
    return state


def test_quiet_hours_defer_then_release_once() -> None:
    state, out = step(
        home(QUIET), [ev("telco.network_attached", {"country": "FR"}, "a1")], QUIET, NOW
    )
    [decision] = out.decisions
    assert decision.outcome == "deferred" and out.triggers == []
    assert decision.release_at == parse_time("2026-11-22T13:00:00Z")
    assert fire_timers(state, QUIET, NOW + 60).triggers == []  # not due yet
    released = fire_timers(state, QUIET, decision.release_at + 1)
    [trigger] = released.triggers
    assert trigger.trigger_id == decision.trigger_id and trigger.payload == {"country": "FR"}
    assert [d.outcome for d in released.decisions] == ["released"]
    assert fire_timers(state, QUIET, decision.release_at + 2).triggers == []  # never twice


def test_release_rechecks_consent() -> None:
    state, _ = step(
        home(QUIET), [ev("telco.network_attached", {"country": "FR"}, "a1")], QUIET, NOW
    )
    withdrawn = ev(
        "consent.updated",
        {"channel": "sms", "purpose": "marketing", "granted": False},
        "c1",
        "web",
        NOW - 5,
    )
    state, _ = step(state, [withdrawn], QUIET, NOW)
    released = fire_timers(state, QUIET, parse_time("2026-11-22T13:00:01Z"))
    assert released.triggers == []
    assert [(d.outcome, d.reasons) for d in released.decisions] == [("suppressed", ("consent",))]


def test_marketing_trigger_carries_verifiable_actions() -> None:
    _, out = step(
        None,
        [
            ev(
                "telco.call_started",
                {"destination_country": "US", "call_type": "international"},
                "t1",
            )
        ],
        AWAKE,
        NOW,
    )
    [trigger] = out.triggers
    kinds = [
        verify_action_token(KEY, a["token"], trigger.trigger_id, "c1", NOW) for a in trigger.actions
    ]
    assert kinds == ["accept", "decline", "unsubscribe"]
    assert trigger.to_record()["message_class"] == "marketing"


def test_ignored_offers_pause_the_offer_type() -> None:
    state = home()
    for n in range(2):
        at = NOW - (5 - 2 * n) * 86400
        ask = ev(
            "campaign.requested",
            {"campaign_id": f"W{n}", "offer_type": "wedding"},
            f"w{n}",
            "crm",
            at,
        )
        state, out = step(state, [ask], AWAKE, at + 1)
        assert len(out.triggers) == 1
        fire_timers(state, AWAKE, at + 49 * 3600)  # expired unanswered: ignored
    assert state.offers == {}
    ask = ev("campaign.requested", {"campaign_id": "W9", "offer_type": "wedding"}, "w9", "crm")
    _, out = step(state, [ask], AWAKE, NOW)
    assert [d.reasons for d in out.decisions] == [("paused",)]


def test_responses_teach_the_preferred_channel() -> None:
    state = home()
    assert preferred_channel(state) is None
    state, out = step(
        state,
        [ev("campaign.requested", {"campaign_id": "W1", "offer_type": "wedding"}, "w1", "crm")],
        AWAKE,
        NOW,
    )
    [offer] = out.triggers
    assert offer.channel == "email"  # the rule's fallback
    declined = ev(
        "offer.declined",
        {"trigger_id": offer.trigger_id, "offer_type": "wedding"},
        "d1",
        "mobile",
        NOW - 5,
    )
    state, _ = step(state, [declined], AWAKE, NOW)
    assert preferred_channel(state) == "push" and offer.trigger_id not in state.offers


def test_branch_briefing_has_history_and_entitlements() -> None:
    accepted = ev(
        "offer.accepted",
        {"offer_id": "OD-1", "offer_type": "overdraft", "limit": 300, "currency": "GBP"},
        "o1",
        "mobile",
        NOW - 30,
    )
    visit = ev("branch.visit", {"branch_id": "B1"}, "v1", "branch", NOW - 10)
    _, out = step(None, [accepted, visit], AWAKE, NOW, timeline=[])
    briefing = next(t for t in out.triggers if t.type == "customer_briefing")
    assert [h["type"] for h in briefing.payload["history"]] == ["offer.accepted"]
    assert briefing.payload["entitlements"][0]["offer_id"] == "OD-1"
    assert [e["type"] for e in out.timeline or []] == ["branch.visit", "offer.accepted"]


def test_overdraft_payload_times_are_rfc3339() -> None:
    accepted = ev(
        "offer.accepted",
        {
            "offer_id": "OD-1",
            "offer_type": "overdraft",
            "limit": 300,
            "currency": "EUR",
            "valid_hours": 2,
        },
        "o1",
        "mobile",
    )
    _, out = step(None, [accepted], AWAKE, NOW)
    [trigger] = out.triggers
    assert trigger.payload == {
        "limit": 300,
        "currency": "EUR",
        "offer_id": "OD-1",
        "expires_at": "2026-11-22T13:59:50.000Z",
    }
