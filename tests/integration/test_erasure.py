"""Forgetting a customer on the real broker and Redis: `omni erase` removes her keys,
her changelog records end in tombstones, and neither `omni redis rebuild` nor a worker
recovering from the changelogs brings anything back."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient, ConfigResource

from processors.settings import Settings
from processors.tools.rebuild import changelog_topic, read_changelog
from processors.topics import ensure_topics
from producers.claims import CouponClaims
from producers.sdk import TouchpointProducer
from producers.simulator import make_event
from tests.integration.harness import (
    ROOT,
    TopicReader,
    WorkerProcess,
    committed_to_end,
    settings_env,
    wait_for,
)

pytestmark = pytest.mark.integration


def omni(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "processors.tools.cli", *args],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def topic_config(settings: Settings, topic: str) -> dict[str, str]:
    admin = AdminClient(settings.kafka_client_config())
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    return {name: entry.value for name, entry in future.result().items()}


def test_an_erased_customer_is_gone_from_redis_changelogs_rebuild_and_recovery(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = f"erase-{uuid.uuid4().hex[:8]}"
    coupon = f"CPN-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    keys = [
        f"omni:profile:{cid}",
        f"omni:timeline:{cid}",
        f"omni:entitlement:{cid}:overdraft",
        f"omni:coupon:{coupon}",
    ]
    with TouchpointProducer(settings) as producer:
        producer.publish(
            make_event(cid, "crm", "profile.updated", {"home_country": "DE", "language": "de"})
        )
        producer.publish(
            make_event(
                cid,
                "mobile",
                "offer.accepted",
                {"offer_id": "OD-1", "offer_type": "overdraft", "limit": 300, "currency": "EUR"},
            )
        )
        producer.publish(
            make_event(
                cid,
                "tv",
                "coupon.issued",
                {"coupon_id": coupon, "value": 5, "currency": "EUR", "valid_hours": 48},
            )
        )
    wait_for(lambda: all(client.exists(k) for k in keys), 30, f"{cid}'s read-model keys")
    assert CouponClaims(client).claim(coupon, "pos", 3600)  # a till claimed her coupon
    keys.append(f"omni:coupon:{coupon}:claim")
    topic = settings.customer_events_topic
    wait_for(lambda: committed_to_end(settings, topic), 30, f"the commit of {topic}")

    result = omni(settings, "erase", cid, "--request-id", "DSR-7")
    assert "DSR-7" in result.stderr

    wait_for(lambda: not any(client.exists(k) for k in keys), 30, f"{cid}'s keys to go")
    [decision] = readers[settings.decision_topic].wait_for(
        lambda d: d["customer_id"] == cid and d["outcome"] == "erased"
    )
    assert decision["request_id"] == "DSR-7" and decision["rule"] == "privacy_erasure"
    wait_for(lambda: committed_to_end(settings, topic), 30, f"the commit of {topic}")

    # The changelogs: her last record is a tombstone, in the customers and timelines tables.
    for table in ("customers", "timelines"):
        latest = read_changelog(settings, changelog_topic(settings, table), 10)
        mine = [value for (_, key), value in latest.items() if key == cid.encode()]
        assert mine == [None], f"{table}: her last changelog record is not a tombstone"

    # A rebuild from the changelogs re-creates none of her keys.
    omni(settings, "redis", "rebuild")
    assert [k for k in keys if client.exists(k)] == []

    # A worker that lost its disk recovers from the changelogs with no state for her: a
    # branch visit then briefs about a new customer (no entitlement, one interaction).
    worker.stop()
    shutil.rmtree(settings.data_dir)
    worker.start()
    with TouchpointProducer(settings) as producer:
        producer.publish(make_event(cid, "branch", "branch.visit", {"branch_id": "B1"}))
    [briefing] = readers[settings.trigger_topic("branch")].wait_for(
        lambda t: t["customer_id"] == cid
    )
    payload: dict[str, Any] = briefing["payload"]
    assert not payload.get("entitlements"), payload
    assert payload["history"] == []  # the interactions before the visit: none
    profile = orjson.loads(
        wait_for(lambda: client.get(f"omni:profile:{cid}"), 30, "the new customer's profile")
    )
    assert "home_country" not in profile and "language" not in profile
    assert not client.exists(f"omni:coupon:{coupon}")


def test_changelog_compaction_and_deadletter_retention_follow_the_settings(
    settings: Settings, worker: WorkerProcess
) -> None:
    changelog = topic_config(settings, changelog_topic(settings))
    assert changelog["max.compaction.lag.ms"] == str(7 * 86_400_000)
    assert changelog["delete.retention.ms"] == str(86_400_000)
    assert topic_config(settings, settings.deadletter_topic)["retention.ms"] == str(72 * 3_600_000)
    # Changed settings reach topics that exist already (Faust never alters a changelog).
    changed = settings.model_copy(
        update={
            "deadletter_retention_hours": 6.0,
            "changelog_max_compaction_lag_seconds": 2 * 86_400.0,
        }
    )
    ensure_topics(changed)
    assert topic_config(settings, settings.deadletter_topic)["retention.ms"] == str(6 * 3_600_000)
    changelog = topic_config(settings, changelog_topic(settings, "timelines"))
    assert changelog["max.compaction.lag.ms"] == str(2 * 86_400_000)
