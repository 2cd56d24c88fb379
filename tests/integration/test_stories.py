"""End to end on the real broker and Redis: S1, S5, duplicates, restart."""

from __future__ import annotations

import shutil
import time
import uuid
from typing import Any

import orjson
import pytest
import redis

from processors.settings import Settings
from producers.sdk import TouchpointProducer
from producers.simulator import make_event
from schemas import validate_record
from tests.integration.harness import TopicReader, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def customer(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def publish(settings: Settings, *events: dict[str, Any]) -> None:
    with TouchpointProducer(settings) as producer:
        for event in events:
            producer.publish(event)


def given_profile(settings: Settings, cid: str, **traits: Any) -> None:
    """Publish a profile and wait until it is processed.

    Events on different touchpoint topics have no order between them until the
    ingest agent forwards them, so a test that needs the profile first waits.
    """
    publish(settings, make_event(cid, "crm", "profile.updated", traits))
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())

    def applied() -> bool:
        raw = client.get(f"omni:profile:{cid}")
        if raw is None:
            return False
        profile = orjson.loads(raw)
        products = profile.get("products", [])
        return all(
            all(p in products for p in v) if k == "products_add" else profile.get(k) == v
            for k, v in traits.items()
        )

    wait_for(applied, 30, f"the profile of {cid} in Redis")


def decisions_of(
    reader: TopicReader, customer_id: str, rule: str = "roaming_offer"
) -> list[tuple[str, str, list[str]]]:
    return [
        (d["source_event_id"], d["outcome"], d["reasons"])
        for d in reader.poll()
        if d["customer_id"] == customer_id and d["rule"] == rule
    ]


def test_s1_overdraft_reaches_atm_trigger_and_redis_with_ttl(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = customer("alice")
    accepted = make_event(
        cid,
        "mobile",
        "offer.accepted",
        {
            "offer_id": "OD-1",
            "offer_type": "overdraft",
            "limit": 500,
            "currency": "EUR",
            "valid_hours": 2,
        },
    )
    sent = time.time()
    publish(settings, accepted)

    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    key = f"omni:entitlement:{cid}:overdraft"
    raw = wait_for(lambda: client.get(key), 20, "the ATM entitlement in Redis")
    seen_in_redis = time.time() - sent
    entitlement = orjson.loads(raw)
    assert entitlement["limit"] == 500 and entitlement["currency"] == "EUR"
    assert entitlement["offer_id"] == "OD-1"
    ttl = client.ttl(key)
    assert 2 * 3600 - 60 < ttl <= 2 * 3600, ttl
    print(f"entitlement visible in Redis {seen_in_redis * 1000:.0f} ms after publish")

    [trigger] = readers[settings.trigger_topic("atm")].wait_for(lambda t: t["customer_id"] == cid)
    assert validate_record("trigger", trigger) == []
    assert trigger["type"] == "overdraft_entitlement"
    assert trigger["source_event_id"] == accepted["event_id"]
    assert trigger["payload"] == entitlement
    assert readers[settings.trigger_topic("atm")].keys[-1] == cid.encode()

    profile = orjson.loads(wait_for(lambda: client.get(f"omni:profile:{cid}"), 10, "profile"))
    assert "mobile" in profile["last_seen"]


def test_s5_roaming_offer_consent_and_cooldown(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = customer("maria")

    def attached(country: str) -> dict[str, Any]:
        return make_event(cid, "telco", "telco.network_attached", {"country": country})

    given_profile(settings, cid, home_country="DE")
    fr, es, fr_again = attached("FR"), attached("ES"), attached("FR")
    publish(settings, fr, attached("FR"), es, fr_again)
    decisions = readers[settings.decision_topic]
    decisions.wait_for(lambda d: d["customer_id"] == cid and d["rule"] == "roaming_offer", count=3)

    # Consent withdrawn on the web holds for SMS: the next new country gets nothing.
    publish(
        settings,
        make_event(
            cid,
            "web",
            "consent.updated",
            {"channel": "sms", "purpose": "marketing", "granted": False},
        ),
    )
    given_consent_applied = wait_for(
        lambda: orjson.loads(
            redis.Redis.from_url(settings.redis_url.get_secret_value()).get(f"omni:profile:{cid}")
            or b"{}"
        )
        .get("consents", {})
        .get("sms:marketing")
        is False,
        30,
        "the consent in Redis",
    )
    assert given_consent_applied
    italy = attached("IT")
    publish(settings, italy)
    decisions.wait_for(lambda d: d["customer_id"] == cid and d["rule"] == "roaming_offer", count=4)
    assert decisions_of(decisions, cid) == [
        (fr["event_id"], "emitted", []),
        (es["event_id"], "emitted", []),
        (fr_again["event_id"], "suppressed", ["cooldown"]),
        (italy["event_id"], "suppressed", ["consent"]),
    ]
    for record in decisions.records:
        assert validate_record("decision", record) == []
    sms = readers[settings.trigger_topic("sms")]
    offers = sms.wait_for(lambda t: t["customer_id"] == cid, count=2)
    assert [(t["type"], t["payload"]["country"]) for t in offers] == [
        ("roaming_offer", "FR"),
        ("roaming_offer", "ES"),
    ]
    assert all(t["expires_at"] is not None for t in offers)


def test_duplicates_have_no_effect(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = customer("dup")
    given_profile(settings, cid, home_country="DE")
    profile = make_event(
        cid,
        "telco",
        "telco.call_started",
        {"destination_country": "FR", "call_type": "international"},
    )
    fr = make_event(cid, "telco", "telco.network_attached", {"country": "FR"})
    publish(settings, profile, fr, fr, profile)
    marker = make_event(cid, "telco", "telco.network_attached", {"country": "ES"})
    publish(settings, fr, marker)  # the duplicate again, later, then something new
    decisions = readers[settings.decision_topic]
    decisions.wait_for(lambda d: d["source_event_id"] == marker["event_id"])
    # The call (S4) decided once, whatever the duplicates.
    assert len(decisions_of(decisions, cid, "long_distance_plan_offer")) == 1
    assert [d[0] for d in decisions_of(decisions, cid)] == [fr["event_id"], marker["event_id"]]
    offers = readers[settings.trigger_topic("sms")].wait_for(
        lambda t: t["customer_id"] == cid and t["type"] == "roaming_offer", count=2
    )
    assert [t["payload"]["country"] for t in offers] == ["FR", "ES"]
    wait_for(
        lambda: "omni_events_duplicate_total 3.0" in worker.metrics(),
        10,
        "three duplicates counted",
    )


@pytest.mark.parametrize("local_state", ["kept", "lost"])
def test_restart_keeps_state(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader], local_state: str
) -> None:
    cid = customer("restart")
    given_profile(settings, cid, home_country="DE")
    publish(settings, make_event(cid, "telco", "telco.network_attached", {"country": "FR"}))
    sms = readers[settings.trigger_topic("sms")]
    sms.wait_for(lambda t: t["customer_id"] == cid)

    worker.stop()
    if local_state == "lost":  # a new machine: RocksDB is rebuilt from the changelog
        shutil.rmtree(settings.data_dir)
    worker.start()

    # Home, then France again: the restored state knows the cooldown, so there
    # is no second offer for France.
    back = make_event(cid, "telco", "telco.network_attached", {"country": "DE"})
    fr = make_event(cid, "telco", "telco.network_attached", {"country": "FR"})
    publish(settings, back, fr)
    decisions = readers[settings.decision_topic]
    [decision] = decisions.wait_for(
        lambda d: d["source_event_id"] == fr["event_id"] and d["rule"] == "roaming_offer"
    )
    assert decision["outcome"] == "suppressed" and decision["reasons"] == ["cooldown"]
    assert len([t for t in sms.poll(1.0) if t["customer_id"] == cid]) == 1
