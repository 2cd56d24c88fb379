"""Authorised grants: an event that would grant an entitlement or a coupon, and may not."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from processors.domain.contact import ContactPolicy
from processors.domain.grants import COUPON_CHANNELS, grant_refusal
from processors.domain.model import SUPPRESSED, CustomerState, Event, parse_time
from processors.domain.policy import Policy
from processors.domain.read_model import entitlement_key, project
from processors.domain.step import StepContext, step
from processors.rulebook import load_ruleset
from processors.settings import DEFAULT_RULES_DIR, Settings
from schemas.validate import Rejection, default_validator, validate_record

NOW = parse_time("2026-11-22T12:00:00Z")
RULES = load_ruleset(DEFAULT_RULES_DIR, Settings().rule_delays())
CTX = StepContext(Policy(), ContactPolicy(quiet_start="00:00", quiet_end="00:00"), RULES, b"k")
#: The forged acceptance of the issue: the largest 64-bit limit, from web, answering nothing.
FORGED_LIMIT = 18446744073709551615


def accepted(channel: str = "mobile", event_id: str = "a1", **payload: Any) -> Event:
    body = {"offer_id": "OD-1", "offer_type": "overdraft", "limit": 500, "currency": "EUR"}
    body.update(payload)
    body = {name: value for name, value in body.items() if value is not None}
    return Event(event_id, "offer.accepted", channel, "c1", NOW - 10, body, produced_at=NOW - 10)


def roaming_offer() -> tuple[CustomerState, str]:
    """A customer we sent a marketing offer (S5): its trigger id is ours to be accepted."""
    home = Event("p1", "profile.updated", "crm", "c1", NOW - 20, {"home_country": "DE"}, NOW)
    abroad = Event("n1", "telco.network_attached", "telco", "c1", NOW - 15, {"country": "FR"}, NOW)
    state, out = step(None, [home, abroad], CTX, NOW)
    [offer] = out.triggers
    assert offer.trigger_id in state.offers
    return state, offer.trigger_id


def refused(event: Event, state: CustomerState | None = None) -> tuple[CustomerState, str]:
    """Step a refused grant; check that nothing came of it; the rule that refused it."""
    state, out = step(state, [event], CTX, NOW)
    assert "overdraft" not in state.entitlements
    assert all(t.type != "overdraft_entitlement" for t in out.triggers)
    assert all(w.key != entitlement_key("c1", "overdraft") for w in project(state, NOW))
    [decision] = [d for d in out.decisions if d.rule == "overdraft_entitlement"]
    assert decision.outcome == SUPPRESSED and decision.trigger_id is None
    assert decision.reasons[0] == "unauthorized"
    assert validate_record("decision", decision.to_record()) == []
    assert ("overdraft_entitlement", "atm", "suppressed:unauthorized", 1.0) in out.stats
    return state, decision.reasons[1]


def test_the_forged_acceptance_of_the_issue_grants_nothing() -> None:
    _, rule = refused(accepted("web", limit=FORGED_LIMIT))
    assert rule == "limit_too_high"


@pytest.mark.parametrize("channel", ["atm", "pos", "email", "sms", "tv", "crm", "telco"])
def test_an_acceptance_from_a_channel_that_offers_no_credit_is_refused(channel: str) -> None:
    assert refused(accepted(channel))[1] == "channel_not_allowed"


@pytest.mark.parametrize("currency", ["CHF", "XXX", None])
def test_an_overdraft_in_a_currency_without_a_largest_limit_is_refused(
    currency: str | None,
) -> None:
    assert refused(accepted(currency=currency))[1] == "unknown_currency"


def test_an_overdraft_just_above_the_largest_limit_is_refused_and_at_it_granted() -> None:
    assert refused(accepted(limit=5000.01))[1] == "limit_too_high"
    state, out = step(None, [accepted(limit=5000)], CTX, NOW)
    assert state.entitlements["overdraft"]["limit"] == 5000
    assert [t.type for t in out.triggers] == ["overdraft_entitlement"]


def test_an_acceptance_naming_a_trigger_we_never_sent_is_refused() -> None:
    state, _ = roaming_offer()
    _, rule = refused(accepted(trigger_id="f" * 32), state)
    assert rule == "trigger_not_ours"


def test_a_held_out_offer_was_never_sent_so_accepting_it_is_refused() -> None:
    state = CustomerState.new("c1")
    state.offers["c" * 32] = {"offer_type": "roaming_offer", "rule": "r", "control": True}
    assert refused(accepted(trigger_id="c" * 32), state)[1] == "trigger_not_ours"


def test_an_acceptance_of_an_offer_we_sent_grants_and_is_a_response() -> None:
    state, trigger_id = roaming_offer()
    state, out = step(state, [accepted(trigger_id=trigger_id)], CTX, NOW)
    assert state.entitlements["overdraft"]["offer_id"] == "OD-1"
    assert trigger_id not in state.offers  # answered
    assert any(stat[2] == "accepted" for stat in out.stats)


def test_a_refused_acceptance_is_no_response_to_the_offer_it_names() -> None:
    state, trigger_id = roaming_offer()
    state, _ = refused(accepted("atm", trigger_id=trigger_id), state)
    assert trigger_id in state.offers  # still open: a forged "accept" does not answer it
    assert "conversions" not in state.traits  # nor counts as a conversion (S10)


def test_a_refused_acceptance_is_still_on_the_timeline() -> None:
    _, out = step(None, [accepted("atm")], CTX, NOW, timeline=[])
    assert [entry["type"] for entry in out.timeline or []] == ["offer.accepted"]


def test_the_refusal_rules_are_checked_in_order() -> None:
    state = CustomerState.new("c1")
    policy = Policy()
    # From the wrong channel, answering no offer of ours, in no known currency, too high:
    everything_wrong = accepted("atm", trigger_id="f" * 32, currency="XXX", limit=FORGED_LIMIT)
    assert grant_refusal(state, everything_wrong, policy) == "channel_not_allowed"
    wrong_offer = accepted(trigger_id="f" * 32, currency="XXX", limit=FORGED_LIMIT)
    assert grant_refusal(state, wrong_offer, policy) == "trigger_not_ours"
    assert grant_refusal(state, accepted(currency="XXX", limit=FORGED_LIMIT), policy) == (
        "unknown_currency"
    )


def test_events_that_grant_nothing_are_never_refused() -> None:
    state = CustomerState.new("c1")
    policy = Policy()
    # A campaign offer accepted by email, an overdraft without a limit: no entitlement asked.
    campaign = accepted("email", offer_type="campaign_offer", limit=None, currency=None)
    no_limit = accepted("atm", limit=None)
    page = Event("v1", "page.viewed", "pos", "c1", NOW, {"url": "/"}, NOW)
    for event in (campaign, no_limit, page):
        assert grant_refusal(state, event, policy) is None


def coupon_issued(channel: str) -> Event:
    payload = {"coupon_id": "K1", "value": 5, "currency": "EUR", "valid_hours": 72}
    return Event("i1", "coupon.issued", channel, "c1", NOW - 10, payload, produced_at=NOW - 10)


def test_coupons_are_issued_by_tv_and_sms_only() -> None:
    assert {"tv", "sms"} == COUPON_CHANNELS
    state, _ = step(None, [coupon_issued("tv")], CTX, NOW)
    assert "K1" in state.coupons and state.timers  # the coupon and its reminder


@pytest.mark.parametrize("channel", ["web", "mobile", "pos", "crm"])
def test_a_coupon_issued_by_another_channel_creates_no_coupon(channel: str) -> None:
    """Ingest dead-letters it (below); one forwarded before that check grants nothing either."""
    state, out = step(None, [coupon_issued(channel)], CTX, NOW)
    assert state.coupons == {} and state.timers == []
    assert not any(w.key.startswith("omni:coupon:") for w in project(state, NOW))
    [decision] = out.decisions
    assert decision.rule == "coupon_reminder"
    assert decision.reasons == ("unauthorized", "channel_not_allowed")


@pytest.mark.parametrize("channel", ["web", "mobile", "pos", "crm"])
def test_ingest_dead_letters_a_coupon_issued_by_another_channel(channel: str) -> None:
    event = {
        "event_id": "i1",
        "type": "coupon.issued",
        "occurred_at": "2026-11-22T11:59:50Z",
        "channel": channel,
        "customer_id": "c1",
        "payload": {"coupon_id": "K1", "value": 5, "currency": "EUR", "valid_hours": 72},
    }
    result = default_validator().check(channel, b"c1", orjson.dumps(event), now=NOW)
    assert isinstance(result, Rejection) and result.reason == "channel_mismatch"
    assert "may only be sent by channels tv, sms" in result.errors[0]
