"""Every dead-letter reason on the real broker, and the worker keeps going."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import Producer

from processors.settings import Settings
from producers.simulator import make_event
from schemas import validate_record
from tests.integration.harness import ROOT, TopicReader, WorkerProcess, settings_env, wait_for

pytestmark = pytest.mark.integration


def test_every_reason_is_deadlettered_and_a_good_event_after_them_is_processed(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader]
) -> None:
    cid = f"bad-{uuid.uuid4().hex[:8]}"
    key = cid.encode()
    good = make_event(cid, "web", "profile.updated", {"language": "en"})
    web = settings.touchpoint_topic("web")
    bad: dict[str, tuple[str, bytes | None, bytes]] = {
        "not_json": (web, key, b"{oops"),
        "not_an_object": (web, key, b"[1, 2]"),
        "too_large": (web, key, b'{"pad": "' + b"x" * (settings.max_event_bytes + 1) + b'"}'),
        "unknown_type": (web, key, orjson.dumps({**good, "type": "web.teleported"})),
        "schema_violation": (
            web,
            key,
            orjson.dumps({**good, "occurred_at": "2026-11-22T10:00:00"}),
        ),
        "channel_mismatch": (settings.touchpoint_topic("mobile"), key, orjson.dumps(good)),
        "missing_key": (web, None, orjson.dumps(good)),
        "key_mismatch": (web, b"somebody-else", orjson.dumps(good)),
        # Issue 9: a 1,000,000-byte key once stopped its partition (the dead letter reused it).
        "key_too_large": (web, b"k" * 1_000_000, orjson.dumps(good)),
        "future_event": (web, key, orjson.dumps({**good, "occurred_at": "2099-01-15T09:30:00Z"})),
        "date_out_of_range": (
            web,
            key,
            orjson.dumps({**good, "occurred_at": "1900-01-01T00:00:00Z"}),
        ),
        # Issue 14: neither customer_id nor identifiers.
        "unidentified": (
            web,
            key,
            orjson.dumps({name: value for name, value in good.items() if name != "customer_id"}),
        ),
    }
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "partitioner": "murmur2_random",
            "message.max.bytes": 1_040_000,  # room for the million-byte key
        }
    )
    for topic, message_key, value in bad.values():
        producer.produce(topic, value, message_key)
    producer.produce(web, orjson.dumps(good), key)
    producer.flush(10)

    letters = readers[settings.deadletter_topic].wait_for(lambda r: True, count=len(bad))
    assert sorted(r["reason"] for r in letters) == sorted(bad)
    for letter in letters:
        assert validate_record("deadletter", letter) == [], letter
        assert letter["errors"], letter
        assert letter["source"]["topic"] in (web, settings.touchpoint_topic("mobile"))
    by_reason = {r["reason"]: r for r in letters}
    assert "occurred_at" in " ".join(by_reason["schema_violation"]["errors"])
    assert by_reason["not_json"]["raw"] == "{oops"
    assert len(by_reason["too_large"]["raw"]) <= settings.deadletter_raw_max_bytes

    # The good event after all the bad ones still reached the customer's state.
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    profile = orjson.loads(wait_for(lambda: client.get(f"omni:profile:{cid}"), 20, "profile"))
    assert profile["language"] == "en"

    # `omni deadletters` shows them, filtered by reason.
    shown = subprocess.run(
        [sys.executable, "-m", "processors.tools.cli", "deadletters", "--reason", "key_mismatch"],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "key_mismatch" in shown.stdout and "not_json" not in shown.stdout
    assert "1 dead letters shown" in shown.stderr


def test_omni_publish_reports_rejected_lines(
    settings: Settings, worker: WorkerProcess, readers: dict[str, TopicReader], tmp_path: Path
) -> None:
    cid = f"pub-{uuid.uuid4().hex[:8]}"
    good = [
        make_event(
            cid, "telco", "telco.call_started", {"destination_country": "FR", "call_type": "local"}
        ),
        make_event(cid, "telco", "telco.network_attached", {"country": "FR"}),
    ]
    lines = [
        orjson.dumps(good[0]),
        b"not json at all",
        b"",
        orjson.dumps({**good[0], "event_id": "x", "payload": {}}),  # payload lacks its fields
        orjson.dumps(good[1]),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run(
        [sys.executable, "-m", "processors.tools.cli", "publish", "--file", str(path)],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "line 2: not_json" in result.stderr
    assert "line 4: schema_violation" in result.stderr and "payload" in result.stderr
    assert "accepted: 2  rejected: 2" in result.stderr
    # Both accepted lines reached the worker's state.
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    profile = orjson.loads(wait_for(lambda: client.get(f"omni:profile:{cid}"), 20, "profile"))
    assert profile["last_country"] == "FR" and "telco" in profile["last_seen"]
