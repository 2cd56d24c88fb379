"""End to end on the real broker and Redis: only authorised grants, keys that cannot collide."""

from __future__ import annotations

import uuid

import orjson
import pytest
import redis

from processors.settings import Settings
from producers.keys import coupon_claim_key, coupon_key, entitlement_key, profile_key
from producers.sdk import CouponClaims, TouchpointProducer
from producers.simulator import make_event
from schemas import validate_record
from tests.integration.harness import TopicReader, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def publish(settings: Settings, *events: dict[str, object]) -> None:
    with TouchpointProducer(settings) as producer:
        for event in events:
            producer.publish(event)


def test_a_forged_overdraft_grants_nothing_and_s1_still_does(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = f"mallory-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    atm = readers[settings.trigger_topic("atm")]
    decisions = readers[settings.decision_topic]
    # The issue: from web, the largest 64-bit limit, answering no offer of ours.
    forged = make_event(
        cid,
        "web",
        "offer.accepted",
        {
            "offer_id": "OD-FORGED",
            "offer_type": "overdraft",
            "limit": 18446744073709551615,
            "currency": "EUR",
        },
    )
    publish(settings, forged)
    [decision] = decisions.wait_for(lambda d: d["source_event_id"] == forged["event_id"])
    assert validate_record("decision", decision) == []
    assert decision["rule"] == "overdraft_entitlement"
    assert decision["outcome"] == "suppressed" and decision["trigger_id"] is None
    assert decision["reasons"] == ["unauthorized", "limit_too_high"]
    # Its projection is written with the profile's: once web is seen there, it is done.
    wait_for(
        lambda: "web" in orjson.loads(client.get(profile_key(cid)) or b"{}").get("last_seen", {}),
        20,
        "the forged acceptance's projection in Redis",
    )
    assert client.get(entitlement_key(cid, "overdraft")) is None

    # S1: the same customer accepts a real overdraft in the app; the ATMs honour that one.
    accepted = make_event(
        cid,
        "mobile",
        "offer.accepted",
        {"offer_id": "OD-1", "offer_type": "overdraft", "limit": 500, "currency": "EUR"},
    )
    publish(settings, accepted)
    raw = wait_for(
        lambda: client.get(entitlement_key(cid, "overdraft")), 20, "the S1 entitlement in Redis"
    )
    assert orjson.loads(raw)["offer_id"] == "OD-1" and orjson.loads(raw)["limit"] == 500
    [trigger] = atm.wait_for(lambda t: t["customer_id"] == cid)
    assert trigger["source_event_id"] == accepted["event_id"]
    # The reader keeps every record it saw: still the one, none for the forged acceptance.
    assert [t["source_event_id"] for t in atm.poll(1.0) if t["customer_id"] == cid] == [
        accepted["event_id"]
    ]


def test_a_coupon_id_with_a_colon_cannot_reach_another_coupons_claim(
    settings: Settings, worker: WorkerProcess
) -> None:
    cid = f"eve-{uuid.uuid4().hex[:8]}"
    victim = f"TV-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    # Before: coupon "<victim>:claim"'s record was written at the victim's claim key,
    # so the victim's first claim was refused.
    issued = make_event(
        cid,
        "tv",
        "coupon.issued",
        {"coupon_id": f"{victim}:claim", "value": 5, "currency": "EUR", "valid_hours": 48},
    )
    publish(settings, issued)
    record = wait_for(
        lambda: client.get(coupon_key(f"{victim}:claim")), 20, "the coupon record in Redis"
    )
    assert orjson.loads(record)["coupon_id"] == f"{victim}:claim"
    assert coupon_key(f"{victim}:claim") == f"omni:coupon:{victim}%3Aclaim"
    assert client.get(coupon_claim_key(victim)) is None
    assert CouponClaims(client).claim(victim, "pos", 3600) is True
