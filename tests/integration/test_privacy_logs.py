"""No personal data in the worker's log or metrics at the default log level.

A real worker (real broker, real Redis) takes a few customers' events: stories that
emit triggers and decisions, events that are dead-lettered (bad JSON, schema
violations, a key that is not the event's customer, an unknown type), and read-model
writes Redis refuses (an ACL that does not cover one customer's keys: the writer logs
what it dropped). Then every customer id used must be absent from the worker's whole
log and from ``/metrics``: an operator's log pipeline and Prometheus are not the place
for personal data, whatever goes wrong.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import redis
from confluent_kafka import Producer

from devstack.provision import Provided
from processors.topics import ensure_topics
from producers.simulator import make_event, story_s1, story_s5
from tests.integration.harness import TopicReader, WorkerProcess, make_settings, wait_for

pytestmark = pytest.mark.integration


def test_customer_ids_never_reach_the_log_or_the_metrics(
    kafka: Provided, redis_service: Provided, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Written through: its keys are covered by the worker's ACL.
    alice, maria = f"keep-alice-{tag}", f"keep-maria-{tag}"
    # Its read-model writes are refused by the ACL (dropped and logged by the writer).
    refused = f"pii-refused-{tag}"
    # Only ever in dead letters: as the key, as the event's customer, or in the raw value.
    dead_keyed, dead_named = f"pii-deadkey-{tag}", f"pii-deadname-{tag}"
    customers = [alice, maria, refused, dead_keyed, dead_named]

    # A Redis user for the worker that may write every key but the refused customer's.
    user, password = f"omni-privacy-{tag}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_service.address)
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["omni:stats:*", "omni:*:keep-*"],
        commands=["+@all"],
    )
    address = urlsplit(redis_service.address)
    limited = urlunsplit(
        address._replace(netloc=f"{user}:{password}@{address.hostname}:{address.port}")
    )
    # The default log level (info), as deployed.
    settings = make_settings(kafka.address, limited, tmp_path / "worker", log_level="info")
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    deadletters = TopicReader(settings, settings.deadletter_topic)
    decisions = TopicReader(settings, settings.decision_topic)
    producer = Producer({**settings.kafka_client_config(), "partitioner": "murmur2_random"})
    try:
        worker.start()
        events = [e for _, e in story_s1(alice)] + [e for _, e in story_s5(maria)]
        events += [e for _, e in story_s5(refused)]
        for event in events:
            key = event["customer_id"].encode()
            producer.produce(settings.touchpoint_topic(event["channel"]), orjson.dumps(event), key)
        good = make_event(dead_named, "web", "profile.updated", {"email": f"{dead_named}@x.org"})
        web = settings.touchpoint_topic("web")
        bad = [
            (web, dead_keyed.encode(), b'{"customer_id": "' + dead_keyed.encode() + b'", oops'),
            (web, dead_keyed.encode(), orjson.dumps({**good, "customer_id": dead_keyed, "x": 1})),
            (web, dead_keyed.encode(), orjson.dumps(good)),  # key_mismatch
            (web, dead_named.encode(), orjson.dumps({**good, "type": f"{dead_named}.typed"})),
            (web, dead_named.encode(), orjson.dumps({**good, "occurred_at": dead_named})),
            (settings.touchpoint_topic("mobile"), dead_named.encode(), orjson.dumps(good)),
        ]
        for topic, key, value in bad:
            producer.produce(topic, value, key)
        assert producer.flush(10) == 0

        deadletters.wait_for(lambda r: True, count=len(bad), timeout=60)
        decisions.wait_for(lambda r: r["customer_id"] == maria, timeout=60)
        decisions.wait_for(lambda r: r["customer_id"] == refused, timeout=60)
        # The refused writes were attempted, dropped and logged before we look.
        wait_for(
            lambda: "omni_read_model_writes_dropped_total{" in worker.metrics()
            and admin.get(f"omni:profile:{alice}") is not None,
            timeout=60,
            what="the refused customer's writes to be dropped and alice's to land",
        )
        assert admin.get(f"omni:profile:{refused}") is None
        metrics = worker.metrics()
    finally:
        worker.stop()
        deadletters.close()
        decisions.close()
        admin.acl_deluser(user)
        admin.close()

    log = worker.log_path.read_text(errors="replace")
    assert "Redis refused" in log, "the refused writes were not logged: nothing was tested"
    for customer in customers:
        assert customer not in log, (
            f"customer id {customer} is in the worker's log:\n"
            + "\n".join(line for line in log.splitlines() if customer in line)[:2000]
        )
        assert customer not in metrics, f"customer id {customer} is in a metric label"
    assert tag not in log and tag not in metrics  # not even a fragment of one
