"""End to end on the real broker and Redis: the decisioning stories (S1 branch, S2, S3,
S4, S6, S9), every suppression reason, deferral and release, and rule reloads."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from processors.settings import DEFAULT_RULES_DIR, Settings
from processors.topics import ensure_topics
from producers.actions import verify_action_token
from producers.simulator import make_event
from schemas import validate_record
from tests.integration.conftest import Provided
from tests.integration.harness import TopicReader, WorkerProcess, make_settings, wait_for
from tests.integration.test_stories import customer, given_profile, publish

pytestmark = pytest.mark.integration


def decided(
    readers: dict[str, TopicReader], settings: Settings, event: dict[str, Any], rule: str
) -> dict[str, Any]:
    """The decision ``rule`` logged for ``event`` (waits for it)."""
    [decision] = readers[settings.decision_topic].wait_for(
        lambda d: d["source_event_id"] == event["event_id"] and d["rule"] == rule
    )
    assert validate_record("decision", decision) == []
    return decision


def trigger_for(
    readers: dict[str, TopicReader], settings: Settings, channel: str, event: dict[str, Any]
) -> dict[str, Any]:
    [trigger] = readers[settings.trigger_topic(channel)].wait_for(
        lambda t: t["source_event_id"] == event["event_id"]
    )
    assert validate_record("trigger", trigger) == []
    return trigger


def call(cid: str, call_type: str = "international", country: str = "US") -> dict[str, Any]:
    return make_event(
        cid, "telco", "telco.call_started", {"destination_country": country, "call_type": call_type}
    )


def attached(cid: str, country: str, **extra: Any) -> dict[str, Any]:
    return make_event(cid, "telco", "telco.network_attached", {"country": country}, **extra)


def airport(cid: str, atm_id: str, country: str) -> dict[str, Any]:
    return make_event(
        cid,
        "atm",
        "atm.withdrawal",
        {
            "amount": 100,
            "currency": "EUR",
            "country": country,
            "atm_id": atm_id,
            "location_type": "airport",
        },
    )


def campaign(cid: str, campaign_id: str, offer_type: str = "wedding") -> dict[str, Any]:
    return make_event(
        cid, "crm", "campaign.requested", {"campaign_id": campaign_id, "offer_type": offer_type}
    )


# --- stories ---------------------------------------------------------------------------------


def test_s2_travel_card_after_second_foreign_airport(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = customer("tom")
    given_profile(settings, cid, home_country="GB", preferred_channel="email")
    first, same_atm, second = airport(cid, "MAD-1", "ES"), airport(cid, "MAD-1", "ES"), None
    publish(settings, first, same_atm)
    second = airport(cid, "LIS-2", "PT")
    publish(settings, second)
    trigger = trigger_for(readers, settings, "email", second)
    assert trigger["type"] == "travel_card_offer"
    assert {a["kind"] for a in trigger["actions"]} == {"accept", "decline", "unsubscribe"}
    # The first withdrawal and the repeat at the same ATM were no transition.
    decision = decided(readers, settings, second, "travel_card_offer")
    mine = [d for d in readers[settings.decision_topic].poll() if d["customer_id"] == cid]
    assert mine == [decision]

    holder = customer("holder")
    given_profile(settings, holder, home_country="GB", products_add=["travel_card"])
    publish(settings, airport(holder, "MAD-1", "ES"))
    again = airport(holder, "LIS-2", "PT")
    publish(settings, again)
    decision = decided(readers, settings, again, "travel_card_offer")
    assert (decision["outcome"], decision["reasons"]) == ("suppressed", ["profile"])


def test_s3_no_wedding_offers_to_the_married(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    married, parent, single = customer("john"), customer("pat"), customer("ana")
    given_profile(settings, married, marital_status="married", preferred_channel="email")
    given_profile(settings, parent, marital_status="divorced", children=1)
    given_profile(settings, single, marital_status="single", preferred_channel="push")
    asks = {cid: campaign(cid, "WED-2026") for cid in (married, parent, single)}
    publish(settings, *asks.values())
    for cid in (married, parent):
        decision = decided(readers, settings, asks[cid], "wedding_offers")
        assert (decision["outcome"], decision["reasons"]) == ("suppressed", ["profile"])
    trigger = trigger_for(readers, settings, "push", asks[single])
    assert trigger["type"] == "campaign_offer"
    assert trigger["payload"] == {"campaign_id": "WED-2026", "offer_type": "wedding"}


def test_s4_long_distance_plan_with_one_tap_actions(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid, holder = customer("lena"), customer("ldholder")
    given_profile(settings, holder, products_add=["ld_plan"])
    local, ld = call(cid, "local"), call(cid, "long_distance")
    sent = time.time()
    publish(settings, local, ld)
    trigger = trigger_for(readers, settings, "sms", ld)
    print(f"S4 offer on trigger.sms {1000 * (time.time() - sent):.0f} ms after publish")
    assert trigger["type"] == "long_distance_plan_offer"
    assert trigger["message_class"] == "marketing"
    key = settings.action_token_keys()  # what a channel backend verifies with
    kinds = [
        verify_action_token(key, a["token"], trigger["trigger_id"], cid, time.time())
        for a in trigger["actions"]
    ]
    assert kinds == ["accept", "decline", "unsubscribe"]
    with pytest.raises(ValueError, match="does not match"):
        verify_action_token(
            key, trigger["actions"][0]["token"], trigger["trigger_id"], "mallory", time.time()
        )
    holder_call = call(holder)
    publish(settings, holder_call)
    decision = decided(readers, settings, holder_call, "long_distance_plan_offer")
    assert decision["reasons"] == ["profile"]
    assert not [
        d
        for d in readers[settings.decision_topic].poll()
        if d["source_event_id"] == local["event_id"]
    ]


def test_s1_branch_briefing_with_cross_channel_history(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = customer("alice")
    accepted = make_event(
        cid,
        "mobile",
        "offer.accepted",
        {"offer_id": "OD-9", "offer_type": "overdraft", "limit": 300, "currency": "GBP"},
    )
    withdrawal = make_event(
        cid,
        "atm",
        "atm.withdrawal",
        {
            "amount": 50,
            "currency": "GBP",
            "country": "GB",
            "atm_id": "A1",
            "location_type": "street",
        },
    )
    publish(settings, accepted)
    readers[settings.trigger_topic("atm")].wait_for(lambda t: t["customer_id"] == cid)
    publish(settings, withdrawal)
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    wait_for(
        lambda: len(orjson.loads(client.get(f"omni:timeline:{cid}") or b"[]")) == 2,
        20,
        "two interactions in the Redis timeline",
    )
    visit = make_event(cid, "branch", "branch.visit", {"branch_id": "LDN-1"})
    publish(settings, visit)
    briefing = trigger_for(readers, settings, "branch", visit)
    assert briefing["type"] == "customer_briefing"
    assert briefing["message_class"] == "service"
    history = briefing["payload"]["history"]
    assert [h["type"] for h in history] == ["atm.withdrawal", "offer.accepted"]
    assert history[1]["channel"] == "mobile" and "overdraft" in history[1]["summary"]
    assert [e["offer_id"] for e in briefing["payload"]["entitlements"]] == ["OD-9"]
    timeline = wait_for(
        lambda: (t := orjson.loads(client.get(f"omni:timeline:{cid}") or b"[]"))
        and len(t) == 3
        and t,
        20,
        "the visit in the Redis timeline",
    )
    assert [entry["type"] for entry in timeline] == [
        "branch.visit",
        "atm.withdrawal",
        "offer.accepted",
    ]


def test_s6_s9_responses_learn_channel_and_pause_declined_offers(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = customer("sam")
    given_profile(settings, cid, marital_status="single")
    first = campaign(cid, "WED-A")
    publish(settings, first)
    offer = trigger_for(readers, settings, "email", first)  # no preference yet: fallback email

    def decline_by_sms(trigger: dict[str, Any]) -> None:
        payload = {"trigger_id": trigger["trigger_id"], "offer_type": "wedding"}
        publish(settings, make_event(cid, "sms", "offer.declined", payload))

    # She declines from her SMS app: she answers on sms, so sms is her channel now.
    decline_by_sms(offer)
    second = campaign(cid, "WED-B")
    publish(settings, second)
    decline_by_sms(trigger_for(readers, settings, "sms", second))
    third = campaign(cid, "WED-C")
    publish(settings, third)
    decision = decided(readers, settings, third, "wedding_offers")
    assert (decision["outcome"], decision["reasons"]) == ("suppressed", ["paused"])


# --- suppressions ----------------------------------------------------------------------------


def test_consent_withdrawn_anywhere_and_daily_frequency_cap(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = customer("cap")
    given_profile(settings, cid, home_country="DE")
    trips = [attached(cid, c) for c in ("FR", "ES", "IT", "PT")]
    publish(settings, *trips)
    outcomes = [
        (d["outcome"], d["reasons"])
        for d in (decided(readers, settings, e, "roaming_offer") for e in trips)
    ]
    assert outcomes == [("emitted", [])] * 3 + [("suppressed", ["frequency_cap"])]

    other = customer("consent")
    given_profile(settings, other, home_country="DE")
    publish(
        settings,
        make_event(
            other,
            "mobile",
            "consent.updated",
            {"channel": "sms", "purpose": "marketing", "granted": False},
        ),
    )
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    wait_for(
        lambda: orjson.loads(client.get(f"omni:profile:{other}") or b"{}")
        .get("consents", {})
        .get("sms:marketing")
        is False,
        20,
        "consent in Redis",
    )
    ld = call(other)
    publish(settings, ld)
    assert decided(readers, settings, ld, "long_distance_plan_offer")["reasons"] == ["consent"]


@pytest.fixture
def week_settings(kafka: Provided, redis_service: Provided, tmp_path: Path) -> Settings:
    # A day cap out of the way, so the weekly cap is what stops the fourth.
    settings = make_settings(
        kafka.address,
        redis_service.address,
        tmp_path / "worker",
        frequency_cap_day=10,
        frequency_cap_week=3,
    )
    ensure_topics(settings)
    return settings


def test_weekly_frequency_cap(week_settings: Settings, tmp_path: Path) -> None:
    settings = week_settings
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    decisions = TopicReader(settings, settings.decision_topic)
    try:
        cid = customer("week")
        given_profile(settings, cid, home_country="DE")
        trips = [attached(cid, country) for country in ("FR", "ES", "IT", "PT")]
        publish(settings, *trips)
        decisions.wait_for(lambda d: d["customer_id"] == cid, count=4)
        outcomes = [
            (d["outcome"], d["reasons"])
            for e in trips
            for d in decisions.records
            if d["source_event_id"] == e["event_id"]
        ]
        assert outcomes == [("emitted", [])] * 3 + [("suppressed", ["frequency_cap"])]
    finally:
        decisions.close()
        worker.stop()


# --- rules directory: arbitration, ignored offers, reload ------------------------------------

EXTRA_RULES = """
rules:
  - id: call_bundle_offer
    description: A test rule that competes with the long-distance plan for the same call.
    on: [telco.call_started]
    transition: every long-distance call (a test rule)
    when: event.payload.call_type == "long_distance"
    trigger:
      type: call_bundle_offer
      channel: sms
      class: marketing
      priority: 10
      value: 1.0
      expires_in: 2s
      reason: '"test: bundle for a long-distance call"'
      payload:
        destination: event.payload.destination_country
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    shutil.copytree(DEFAULT_RULES_DIR, folder)
    return folder


@pytest.fixture
def rules_settings(
    kafka: Provided, redis_service: Provided, tmp_path: Path, rules_dir: Path
) -> Settings:
    settings = make_settings(
        kafka.address, redis_service.address, tmp_path / "worker", rules_dir=str(rules_dir)
    )
    ensure_topics(settings)
    return settings


@pytest.fixture
def rules_worker(rules_settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(rules_settings, tmp_path / "worker.log")
    worker.start()
    yield worker
    worker.stop()


def reload(worker: WorkerProcess, result: str, count: int) -> None:
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGHUP)
    wait_for(
        lambda: f'omni_ruleset_reloads_total{{result="{result}"}} {count}.0' in worker.metrics(),
        20,
        f"reload {result} #{count}",
    )


def test_reload_arbitration_and_ignored_offers_pause(
    rules_settings: Settings, rules_worker: WorkerProcess, rules_dir: Path
) -> None:
    settings = rules_settings
    decisions = TopicReader(settings, settings.decision_topic)
    try:
        cid = customer("arb")
        before = call(cid, "long_distance", "CA")
        publish(settings, before)
        [d] = decisions.wait_for(lambda d: d["source_event_id"] == before["event_id"])
        old_ruleset = d["ruleset"]

        # A bad file is refused; the old rules keep running.
        (rules_dir / "broken.yaml").write_text("rules:\n  - id: Broken Rule\n    on: []\n")
        reload(rules_worker, "refused", 1)
        assert "broken.yaml" in rules_worker.log_tail(200)
        (rules_dir / "broken.yaml").unlink()

        # A good one is swapped in without a restart: two rules now match a call.
        (rules_dir / "extra.yaml").write_text(EXTRA_RULES)
        reload(rules_worker, "ok", 1)
        other = customer("arb2")
        contested = call(other, "long_distance", "CA")
        publish(settings, contested)
        found = decisions.wait_for(lambda d: d["source_event_id"] == contested["event_id"], 2)
        by_rule = {d["rule"]: (d["outcome"], d["reasons"], d["ruleset"]) for d in found}
        new_ruleset = by_rule["call_bundle_offer"][2]
        assert new_ruleset != old_ruleset
        assert by_rule == {
            "long_distance_plan_offer": ("emitted", [], new_ruleset),
            "call_bundle_offer": ("suppressed", ["arbitration"], new_ruleset),
        }

        # Offers nobody answers before they expire count as ignored: two ignores pause.
        shutil.move(rules_dir / "telco.yaml", rules_dir.parent / "telco.yaml")
        reload(rules_worker, "ok", 2)
        for country in ("MX", "BR"):
            bundle = call(other, "long_distance", country)
            publish(settings, bundle)
            decisions.wait_for(lambda d, b=bundle: d["source_event_id"] == b["event_id"])
        time.sleep(2.5)  # both offers expire unanswered (expires_in: 2s); the ticks notice
        wait_for(
            lambda: "omni_timers_fired_total 2.0" in rules_worker.metrics(),
            20,
            "two ignored checks fired",
        )
        third = call(other, "long_distance", "AR")
        publish(settings, third)
        [last] = decisions.wait_for(lambda d: d["source_event_id"] == third["event_id"])
        assert (last["outcome"], last["reasons"]) == ("suppressed", ["paused"])
    finally:
        decisions.close()


# --- quiet hours: deferral, release after a restart, expiry ----------------------------------


def _quiet_window_ending_soon() -> tuple[str, str]:
    """Quiet hours (UTC) from a minute ago to the next minute boundary at least 20 s away."""
    now = datetime.now(UTC)
    end = (now + timedelta(seconds=20)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = now - timedelta(minutes=1)
    return start.strftime("%H:%M"), end.strftime("%H:%M")


def test_quiet_hours_defer_and_release_after_restart(
    kafka: Provided, redis_service: Provided, tmp_path: Path
) -> None:
    start, end = _quiet_window_ending_soon()
    settings = make_settings(
        kafka.address,
        redis_service.address,
        tmp_path / "worker",
        quiet_hours_start=start,
        quiet_hours_end=end,
        release_spread_seconds=3,
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    decisions = TopicReader(settings, settings.decision_topic)
    sms = TopicReader(settings, settings.trigger_topic("sms"))
    try:
        cid = customer("night")
        given_profile(settings, cid, home_country="DE", timezone="UTC")
        trip = attached(cid, "FR")
        publish(settings, trip)
        [deferred] = decisions.wait_for(lambda d: d["source_event_id"] == trip["event_id"])
        assert deferred["outcome"] == "deferred" and deferred["release_at"] is not None
        assert validate_record("decision", deferred) == []
        assert not [t for t in sms.poll() if t["customer_id"] == cid]

        worker.stop()  # the timer lives in the customer's state: it survives
        worker.start()
        [released] = decisions.wait_for(
            lambda d: d["source_event_id"] == trip["event_id"] and d["outcome"] == "released",
            timeout=120,
        )
        [offer] = sms.wait_for(lambda t: t["customer_id"] == cid)
        assert offer["trigger_id"] == deferred["trigger_id"] == released["trigger_id"]
        assert offer["payload"] == {"country": "FR"}
        time.sleep(1.0)  # never twice
        assert len([t for t in sms.poll() if t["customer_id"] == cid]) == 1
    finally:
        decisions.close()
        sms.close()
        worker.stop()


def test_quiet_hours_expiry_suppresses(
    kafka: Provided, redis_service: Provided, tmp_path: Path
) -> None:
    # Quiet almost all day: the 1 h long-distance offer would expire before morning.
    now = datetime.now(UTC)
    start = (now - timedelta(minutes=1)).strftime("%H:%M")
    end = (now - timedelta(minutes=2)).strftime("%H:%M")
    settings = make_settings(
        kafka.address,
        redis_service.address,
        tmp_path / "worker",
        quiet_hours_start=start,
        quiet_hours_end=end,
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    decisions = TopicReader(settings, settings.decision_topic)
    try:
        cid = customer("late")
        ld = call(cid)
        publish(settings, ld)
        [decision] = decisions.wait_for(lambda d: d["source_event_id"] == ld["event_id"])
        assert (decision["outcome"], decision["reasons"]) == ("suppressed", ["quiet_hours"])
    finally:
        decisions.close()
        worker.stop()
