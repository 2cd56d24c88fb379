"""The pure customer step: S1, S5, dedup, consent, cooldown, staleness."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from processors.domain.contact import ContactPolicy
from processors.domain.model import EMITTED, SUPPRESSED, CustomerState, Event, parse_time
from processors.domain.policy import DAY, Policy
from processors.domain.read_model import (
    coupons_key,
    entitlement_key,
    offers_key,
    profile_key,
    project,
)
from processors.domain.step import StepContext, step
from processors.rulebook import load_ruleset
from processors.settings import DEFAULT_RULES_DIR, Settings

NOW = parse_time("2026-11-22T12:00:00Z")
POLICY = Policy()
RULES = load_ruleset(DEFAULT_RULES_DIR, Settings().rule_delays())
# No quiet hours here: these tests are about the rules, not the time of day.
CONTACT = ContactPolicy(quiet_start="00:00", quiet_end="00:00")


def context(policy: Policy = POLICY) -> StepContext:
    return StepContext(policy, CONTACT, RULES, b"test-key")


CTX = context()


def event(
    type_: str,
    payload: dict[str, Any],
    *,
    event_id: str = "e1",
    at: float = NOW - 10,
    channel: str = "mobile",
    customer: str = "c1",
) -> Event:
    return Event(event_id, type_, channel, customer, at, payload, produced_at=at)


def profile(**traits: Any) -> Event:
    return event("profile.updated", traits, event_id="p-" + "-".join(traits))


def attach(country: str, event_id: str, at: float = NOW - 10) -> Event:
    return event(
        "telco.network_attached", {"country": country}, event_id=event_id, at=at, channel="telco"
    )


def overdraft(event_id: str = "o1", at: float = NOW - 10, **extra: Any) -> Event:
    payload = {
        "offer_id": "OD-1",
        "offer_type": "overdraft",
        "limit": 500,
        "currency": "EUR",
        **extra,
    }
    return event("offer.accepted", payload, event_id=event_id, at=at)


class TestOverdraft:
    def test_accepted_overdraft_emits_atm_trigger_and_keeps_entitlement(self) -> None:
        state, out = step(None, [overdraft(valid_hours=2)], CTX, NOW)
        [trigger] = out.triggers
        assert (trigger.type, trigger.channel) == ("overdraft_entitlement", "atm")
        assert trigger.payload["limit"] == 500 and trigger.payload["currency"] == "EUR"
        assert trigger.expires_at == pytest.approx(NOW - 10 + 2 * 3600)
        assert state.entitlements["overdraft"]["offer_id"] == "OD-1"
        [decision] = out.decisions
        assert decision.outcome == EMITTED and decision.trigger_id == trigger.trigger_id

    def test_default_validity_is_24_hours(self) -> None:
        _, out = step(None, [overdraft()], CTX, NOW)
        assert out.triggers[0].expires_at == pytest.approx(NOW - 10 + 24 * 3600)

    def test_already_expired_acceptance_is_suppressed(self) -> None:
        old = NOW - 3 * 3600
        state, out = step(None, [overdraft(at=old, valid_hours=1)], CTX, NOW)
        assert out.triggers == []
        assert out.decisions[0].outcome == SUPPRESSED
        assert out.decisions[0].reasons == ("expired",)
        assert "overdraft" not in state.entitlements

    def test_service_trigger_ignores_marketing_consent(self) -> None:
        withdrawn = event(
            "consent.updated",
            {"channel": "sms", "purpose": "marketing", "granted": False},
            event_id="c1",
            at=NOW - 20,
        )
        _, out = step(None, [withdrawn, overdraft()], CTX, NOW)
        assert [t.type for t in out.triggers] == ["overdraft_entitlement"]

    def test_other_offer_types_do_not_match(self) -> None:
        accepted = event("offer.accepted", {"offer_id": "X", "offer_type": "travel_card"})
        _, out = step(None, [accepted], CTX, NOW)
        assert out.decisions == [] and out.changed


class TestRoaming:
    def home(self, country: str = "DE") -> CustomerState:
        state, _ = step(None, [profile(home_country=country)], CTX, NOW)
        return state

    def test_new_foreign_country_emits_sms_offer(self) -> None:
        state, out = step(self.home(), [attach("FR", "a1")], CTX, NOW)
        [trigger] = out.triggers
        assert (trigger.type, trigger.channel, trigger.payload) == (
            "roaming_offer",
            "sms",
            {"country": "FR"},
        )
        assert "FR" in trigger.reason and state.last_country == "FR"

    def test_home_country_and_same_country_do_not_match(self) -> None:
        _, out = step(
            self.home(), [attach("DE", "a1"), attach("FR", "a2"), attach("FR", "a3")], CTX, NOW
        )
        assert [d.source_event_id for d in out.decisions] == ["a2"]

    def test_unknown_home_country_offers_nothing(self) -> None:
        _, out = step(None, [attach("FR", "a1")], CTX, NOW)
        assert out.decisions == []

    def test_withdrawn_sms_marketing_consent_suppresses(self) -> None:
        withdrawn = event(
            "consent.updated",
            {"channel": "sms", "purpose": "marketing", "granted": False},
            event_id="c1",
            channel="web",
            at=NOW - 20,
        )
        _, out = step(self.home(), [withdrawn, attach("FR", "a1")], CTX, NOW)
        assert out.triggers == []
        assert out.decisions[0].reasons == ("consent",)

    def test_consent_default_is_a_setting(self) -> None:
        policy = Policy(marketing_consent_default=False)
        _, out = step(self.home(), [attach("FR", "a1")], context(policy), NOW)
        assert out.decisions[0].reasons == ("consent",)

    def test_older_consent_event_does_not_override_newer(self) -> None:
        newer = event(
            "consent.updated",
            {"channel": "sms", "purpose": "marketing", "granted": False},
            event_id="c2",
            at=NOW - 5,
        )
        older = event(
            "consent.updated",
            {"channel": "sms", "purpose": "marketing", "granted": True},
            event_id="c1",
            at=NOW - 50,
        )
        state, _ = step(self.home(), [newer, older], CTX, NOW)
        assert state.consents["sms:marketing"]["granted"] is False

    def test_stale_attachments_set_no_cooldown(self) -> None:
        day = NOW - 40 * 3600
        events = [
            attach("FR", "a1", day),
            attach("ES", "a2", day + 1),
            attach("FR", "a3", NOW - 10),
        ]
        _, out = step(self.home(), events, CTX, NOW + 0)
        outcomes = [(d.source_event_id, d.reasons) for d in out.decisions]
        assert outcomes == [("a1", ("stale",)), ("a2", ("stale",)), ("a3", ())]
        assert [t.source_event_id for t in out.triggers] == ["a3"]

    def test_cooldown_after_emission(self) -> None:
        state, out = step(self.home(), [attach("FR", "a1", NOW - 100)], CTX, NOW)
        assert len(out.triggers) == 1
        state, out = step(
            state, [attach("ES", "a2", NOW - 50), attach("FR", "a3", NOW - 10)], CTX, NOW
        )
        assert [(d.source_event_id, d.reasons) for d in out.decisions] == [
            ("a2", ()),
            ("a3", ("cooldown",)),
        ]

    def test_cooldown_expires_after_30_days(self) -> None:
        first = NOW - 31 * DAY
        state, _ = step(self.home(), [attach("FR", "a1", first)], CTX, first + 1)
        state, out = step(
            state, [attach("ES", "a2", NOW - 20), attach("FR", "a3", NOW - 10)], CTX, NOW
        )
        assert [t.source_event_id for t in out.triggers] == ["a2", "a3"]

    def test_stale_event_updates_state_but_sends_nothing(self) -> None:
        old = NOW - 2 * 3600
        state, out = step(self.home(), [attach("FR", "a1", old)], CTX, NOW)
        assert out.triggers == [] and out.decisions[0].reasons == ("stale",)
        assert state.last_country == "FR"


class TestDedupAndIds:
    def test_duplicate_event_has_no_effect(self) -> None:
        state, _ = step(None, [profile(home_country="DE")], CTX, NOW)
        state, out = step(state, [attach("FR", "a1")], CTX, NOW)
        # A deep copy: a copy sharing lists and dicts with state would change with it.
        before = copy.deepcopy(state)
        state, out = step(state, [attach("FR", "a1")], CTX, NOW)
        assert out.duplicates == 1 and not out.changed
        assert out.triggers == [] and out.decisions == []
        assert state == before

    def test_duplicate_within_one_batch(self) -> None:
        _, out = step(None, [overdraft("o1"), overdraft("o1")], CTX, NOW)
        assert out.duplicates == 1 and len(out.triggers) == 1

    def test_ids_are_deterministic(self) -> None:
        _, first = step(None, [overdraft()], CTX, NOW)
        _, again = step(None, [overdraft()], CTX, NOW + 60)
        assert first.triggers[0].trigger_id == again.triggers[0].trigger_id
        assert first.decisions[0].decision_id == again.decisions[0].decision_id
        assert len(first.triggers[0].trigger_id) == 32

    def test_ring_is_bounded_and_reports_early_eviction(self) -> None:
        policy = Policy(dedup_capacity=16)
        events = [event("profile.updated", {"language": "en"}, event_id=f"x{i}") for i in range(20)]
        state, out = step(None, events, context(policy), NOW)
        assert len(state.seen_ids) == 16 == len(state.seen_days)
        assert out.dedup_early_evictions == 4
        _, again = step(state, [events[-1]], context(policy), NOW)
        assert again.duplicates == 1


class TestProfileAndReadModel:
    def test_profile_traits_products_and_last_seen(self) -> None:
        events = [
            event(
                "profile.updated",
                {
                    "marital_status": "married",
                    "children": 2,
                    "products_add": ["platinum_card", "ld_plan"],
                },
                event_id="p1",
                channel="crm",
                at=NOW - 30,
            ),
            event(
                "profile.updated",
                {"products_remove": ["ld_plan"]},
                event_id="p2",
                channel="web",
                at=NOW - 20,
            ),
        ]
        state, _ = step(None, events, CTX, NOW)
        assert state.traits == {
            "marital_status": "married",
            "children": 2,
            "funnel_stage": "awareness",
        }
        assert state.products == ["platinum_card"]
        assert set(state.last_seen) == {"crm", "web"}

    def test_projection_writes_profile_and_entitlement_with_expiry(self) -> None:
        state, _ = step(None, [profile(home_country="DE"), overdraft(valid_hours=1)], CTX, NOW)
        writes = {w.key: w for w in project(state, NOW)}
        assert set(writes) == {
            profile_key("c1"),
            entitlement_key("c1", "overdraft"),
            offers_key("c1"),
            coupons_key("c1"),
        }
        assert writes[entitlement_key("c1", "overdraft")].expire_at == pytest.approx(
            NOW - 10 + 3600
        )
        assert writes[profile_key("c1")].expire_at is None
        assert b'"home_country":"DE"' in writes[profile_key("c1")].value

    def test_expired_entitlement_is_pruned_and_not_projected(self) -> None:
        state, _ = step(None, [overdraft(valid_hours=1)], CTX, NOW)
        later = NOW + 2 * 3600
        state, _ = step(state, [profile(language="en")], CTX, later)
        assert state.entitlements == {}
        assert [w.key for w in project(state, later)] == [
            profile_key("c1"),
            offers_key("c1"),
            coupons_key("c1"),
        ]


def test_state_round_trips_through_json() -> None:
    import orjson

    state, _ = step(None, [profile(home_country="DE"), overdraft(), attach("FR", "a1")], CTX, NOW)
    assert CustomerState.from_dict(orjson.loads(orjson.dumps(state))) == state
