"""Health on a real worker: per-partition gauges are exported, and a worker that has
processed everything (before or after a restart) is never reported stalled."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from devstack.provision import Provided
from processors.topics import ensure_topics
from producers.sdk import TouchpointProducer
from producers.simulator import make_event
from tests.integration.harness import WorkerProcess, make_settings, wait_for

pytestmark = pytest.mark.integration

#: Short, so the test sees several stall windows go by.
STALL_SECONDS = 3.0
#: Gauges are updated every 2 s.
GAUGE_TICK = 2.0


def partition_gauges(worker: WorkerProcess, name: str) -> dict[tuple[str, str], float]:
    """``{(topic, partition): value}`` of a per-partition gauge."""
    found = {}
    for labels, value in re.findall(rf"^{name}\{{(.*?)\}} (\S+)$", worker.metrics(), re.MULTILINE):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        found[(fields["topic"], fields["partition"])] = float(value)
    return found


def livez(worker: WorkerProcess) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{worker.settings.web_port}/livez"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())


def assert_healthy_and_idle(worker: WorkerProcess, topic: str) -> None:
    """Everything processed and committed; several stall windows later still live."""

    def committed() -> dict[tuple[str, str], float] | None:
        lag = partition_gauges(worker, "omni_consumer_committed_lag_messages")
        ours = {tp: v for tp, v in lag.items() if tp[0] == topic}
        return ours if len(ours) == 3 and not any(ours.values()) else None

    wait_for(committed, 60, f"committed lag 0 on every partition of {topic}")
    time.sleep(STALL_SECONDS + 2 * GAUGE_TICK)
    status, body = livez(worker)
    assert (status, body) == (200, {"live": True}), worker.log_tail()
    stalled = partition_gauges(worker, "omni_partition_stalled")
    assert {tp for tp in stalled if tp[0] == topic} == {(topic, str(p)) for p in range(3)}
    assert not any(stalled.values()), stalled
    assert not any(partition_gauges(worker, "omni_partition_stall_seconds").values())


def test_idle_worker_is_live_before_and_after_a_restart(
    kafka: Provided, redis_service: Provided, tmp_path: Path
) -> None:
    settings = make_settings(
        kafka.address, redis_service.address, tmp_path / "worker", stall_seconds=STALL_SECONDS
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        with TouchpointProducer(settings) as producer:
            for n in range(60):  # spread over the 3 partitions by key
                customer = f"health-{n}-{uuid.uuid4().hex[:6]}"
                producer.publish(make_event(customer, "web", "page.viewed", {"url": "/x"}))
        assert_healthy_and_idle(worker, settings.customer_events_topic)

        # After a restart nothing is processed (nothing new arrives): the committed
        # offsets read at assignment are the baseline, so idle partitions are not lag.
        worker.stop()
        worker.start()
        assert_healthy_and_idle(worker, settings.customer_events_topic)
        assert_healthy_and_idle(worker, settings.touchpoint_topic("web"))
    finally:
        worker.stop()
