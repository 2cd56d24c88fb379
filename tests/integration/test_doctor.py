"""``omni doctor`` against the real broker, Redis and a worker: a healthy stack exits 0,
and each problem it detects, made for real, fails its own check and exits 1.

One worker for the whole module (starting one takes most of the time); the problems
that must not disturb it use a fresh topic namespace, another rules folder, or change
the session Redis and put it back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from typer.testing import CliRunner

from devstack.ports import free_port
from devstack.provision import Provided
from processors.settings import Settings
from processors.tools.cli import app
from processors.topics import ensure_topics
from tests.integration.harness import ROOT, WorkerProcess, make_settings, settings_env, wait_for

RULES = ROOT / "rules"


@pytest.fixture(scope="module")
def stack(
    kafka: Provided, redis_service: Provided, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """A healthy pipeline: topics ensured and a ready worker."""
    where = tmp_path_factory.mktemp("doctor")
    settings = make_settings(kafka.address, redis_service.address, where / "worker")
    ensure_topics(settings)
    worker = WorkerProcess(settings, where / "worker.log")
    worker.start()
    yield settings
    worker.stop()


def doctor(settings: Settings, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run ``omni doctor --json`` in-process with ``settings`` as the environment."""
    result = CliRunner().invoke(
        app, ["doctor", "--json", "--timeout", "5", *args], env=settings_env(settings)
    )
    checks = {}
    for line in result.stdout.splitlines():
        check = json.loads(line)
        checks[check["name"]] = check
    return result.exit_code, checks


def failing(checks: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, check in checks.items() if check["status"] == "fail"}


def test_a_healthy_stack_exits_0_through_the_omni_command(stack: Settings) -> None:
    # The installed entry point, as an SRE runs it (the table, not --json).
    done = subprocess.run(
        [str(Path(sys.executable).with_name("omni")), "doctor"],
        env=settings_env(stack),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stderr
    code, checks = doctor(stack)
    assert code == 0
    assert {name: c["status"] for name, c in checks.items()} == {
        "kafka broker": "ok",
        "contract topics": "ok",
        "partition counts": "ok",
        "retention / compaction": "ok",
        "consumer group": "ok",
        "consumer lag": "ok",
        "redis": "ok",
        "redis maxmemory-policy": "ok",
        "worker /livez": "ok",
        "worker /readyz": "ok",
        "ruleset": "ok",
    }


def test_a_missing_topic_fails_contract_topics(stack: Settings) -> None:
    # A fresh namespace where every contract topic but the last (trigger.kiosk) exists;
    # the rest of the stack (group, Redis, worker) is the healthy one.
    fresh = variant(stack, topic_namespace=f"m{uuid.uuid4().hex[:10]}")
    create_topics(fresh, {t: fresh.partitions for t in fresh.contract_topics()[:-1]})
    code, checks = doctor(fresh)
    assert code == 1
    assert failing(checks) == {"contract topics"}
    assert fresh.contract_topics()[-1] in checks["contract topics"]["detail"]
    assert checks["contract topics"]["action"]


def test_a_topic_with_another_partition_count_fails_partition_counts(stack: Settings) -> None:
    fresh = variant(stack, topic_namespace=f"p{uuid.uuid4().hex[:10]}")
    odd = fresh.decision_topic
    create_topics(fresh, {t: 1 if t == odd else fresh.partitions for t in fresh.contract_topics()})
    code, checks = doctor(fresh)
    assert code == 1
    assert failing(checks) == {"partition counts"}
    assert f"{odd}=1" in checks["partition counts"]["detail"]


def test_a_deadletter_topic_without_its_retention_fails_retention(stack: Settings) -> None:
    # Made by hand without retention.ms: raw input kept for the broker's default (7 days)
    # instead of OMNI_DEADLETTER_RETENTION_HOURS.
    fresh = variant(stack, topic_namespace=f"r{uuid.uuid4().hex[:10]}")
    create_topics(fresh, dict.fromkeys(fresh.contract_topics(), fresh.partitions), False)
    code, checks = doctor(fresh)
    assert code == 1
    assert failing(checks) == {"retention / compaction"}
    want = int(fresh.deadletter_retention_hours * 3_600_000)
    assert (
        f"{fresh.deadletter_topic} retention.ms=604800000 (want {want})"
        in (checks["retention / compaction"]["detail"])
    )


def test_an_evicting_redis_fails_maxmemory_policy(stack: Settings) -> None:
    client = stack.redis_client()
    before = client.config_get("maxmemory-policy")["maxmemory-policy"]
    assert before == "noeviction"
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        code, checks = doctor(stack)
    finally:
        client.config_set("maxmemory-policy", before)
    assert code == 1
    assert failing(checks) == {"redis maxmemory-policy"}
    assert "allkeys-lru" in checks["redis maxmemory-policy"]["detail"]


def test_no_worker_fails_readyz_and_livez(stack: Settings) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    code, checks = doctor(stack, "--worker-url", nobody)
    assert code == 1
    assert failing(checks) == {"worker /readyz", "worker /livez"}
    assert nobody in checks["worker /readyz"]["detail"]


def test_rules_on_disk_other_than_the_workers_fail_ruleset(stack: Settings, tmp_path: Path) -> None:
    # The shipped rules minus one file: a rule set the worker has not loaded.
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "hotel.yaml").unlink()
    code, checks = doctor(variant(stack, rules_dir=str(rules)))
    assert code == 1
    assert failing(checks) == {"ruleset"}
    assert "SIGHUP" in checks["ruleset"]["action"]


def test_an_unreachable_broker_fails_kafka_broker(stack: Settings) -> None:
    nowhere = variant(stack, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    code, checks = doctor(nowhere, "--timeout", "2")
    assert code == 1
    assert failing(checks) == {"kafka broker"}
    # The checks that need the broker are not run rather than reported as noise.
    assert "contract topics" not in checks


def variant(settings: Settings, **changes: Any) -> Settings:
    # Not model_copy: it would keep cached topic names (cached_property) of the original.
    return Settings(**{**settings.model_dump(), **changes})


def create_topics(
    settings: Settings, partitions: dict[str, int], with_configs: bool = True
) -> None:
    """Topics as an admin makes them by hand (the worker would refuse an odd count)."""
    admin = AdminClient(settings.kafka_client_config())
    configs = settings.topic_configs() if with_configs else {}
    futures = admin.create_topics(
        [
            NewTopic(name, count, settings.replication_factor, config=configs.get(name, {}))
            for name, count in partitions.items()
        ],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result()
    # Created on the controller is not yet in the broker's metadata (KRaft propagates it
    # within moments); the doctor must see the layout made, not a half-made one.
    wait_for(
        lambda: set(partitions) <= set(admin.list_topics(timeout=10).topics),
        timeout=30,
        what="the new topics in the broker's metadata",
    )
