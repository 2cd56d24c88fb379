"""The Redis read model: an outage delays it without stopping triggers; it can be rebuilt."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from devstack.ports import free_port
from devstack.provision import Provided
from devstack.redis import LocalRedis
from processors.settings import Settings
from processors.topics import ensure_topics
from producers.sdk import TouchpointProducer
from producers.simulator import make_event
from tests.integration.harness import (
    ROOT,
    TopicReader,
    WorkerProcess,
    committed_to_end,
    make_settings,
    settings_env,
    wait_for,
)

pytestmark = pytest.mark.integration


def metric(worker: WorkerProcess, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", worker.metrics(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(free_port(), tmp_path / "redis")
    server.start()
    server.wait_ready()
    yield server
    server.stop()


def test_redis_outage_delays_read_model_but_not_triggers(
    kafka: Provided, own_redis: LocalRedis, tmp_path: Path
) -> None:
    settings = make_settings(
        kafka.address, own_redis.url, tmp_path / "worker", redis_retry_max_seconds=0.5
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    atm = TopicReader(settings, settings.trigger_topic("atm"))
    try:
        own_redis.stop()
        cid = f"outage-{uuid.uuid4().hex[:8]}"
        with TouchpointProducer(settings) as producer:
            producer.publish(
                make_event(
                    cid,
                    "mobile",
                    "offer.accepted",
                    {
                        "offer_id": "OD-9",
                        "offer_type": "overdraft",
                        "limit": 300,
                        "currency": "EUR",
                    },
                )
            )
        # Triggers keep flowing while Redis is down.
        atm.wait_for(lambda t: t["customer_id"] == cid, timeout=30)
        wait_for(
            lambda: metric(worker, "omni_redis_write_errors_total") > 0,
            20,
            "Redis write errors to be counted",
        )
        wait_for(
            lambda: metric(worker, "omni_read_model_lag_seconds") > 0,
            20,
            "the read-model lag to show",
        )

        own_redis.start()
        own_redis.wait_ready()
        client = redis.Redis.from_url(own_redis.url)
        raw = wait_for(
            lambda: client.get(f"omni:entitlement:{cid}:overdraft"),
            30,
            "the entitlement to reach Redis after the outage",
        )
        assert orjson.loads(raw)["limit"] == 300
        wait_for(
            lambda: metric(worker, "omni_read_model_lag_seconds") == 0,
            20,
            "the read-model lag to return to 0",
        )
    finally:
        atm.close()
        worker.stop()


def test_omni_redis_rebuild_restores_deleted_keys(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = f"rebuild-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    # Offer counters (S11): one hash field per channel and partition; the session's Redis
    # holds earlier tests' fields too, so only the fields this worker changed count.
    stats_key = "omni:stats:roaming_offer"
    stats_before = client.hgetall(stats_key)
    profile_key = f"omni:profile:{cid}"

    def changed_stats() -> dict[bytes, bytes]:
        return {f: v for f, v in client.hgetall(stats_key).items() if stats_before.get(f) != v}

    with TouchpointProducer(settings) as producer:
        producer.publish(
            make_event(cid, "crm", "profile.updated", {"language": "pt", "home_country": "DE"})
        )
        # Channels are separate topics: the attach must come after the home country.
        wait_for(lambda: client.get(profile_key), 20, "the profile")
        producer.publish(make_event(cid, "telco", "telco.network_attached", {"country": "FR"}))
    stats = wait_for(changed_stats, 20, "the roaming offer counted in omni:stats:roaming_offer")
    before = client.get(profile_key)
    # The rebuild restores committed state only: the commit follows the Redis write.
    topic = settings.customer_events_topic
    wait_for(lambda: committed_to_end(settings, topic), 30, f"the commit of {topic}")
    client.delete(profile_key, stats_key)

    result = subprocess.run(
        [sys.executable, "-m", "processors.tools.cli", "redis", "rebuild"],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "rebuilt" in result.stderr
    assert orjson.loads(client.get(profile_key) or b"{}") == orjson.loads(before)
    rebuilt = client.hgetall(stats_key)
    assert {f: rebuilt.get(f) for f in stats} == stats
