"""Test harness: a worker subprocess, topic readers and waiting helpers.

Every test gets its own topic namespace and consumer group (``Settings`` with a
unique ``topic_namespace`` and ``app_id``), so tests never see each other's
messages and can run beside a ``make up`` stack.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from devstack.ports import free_port
from processors.settings import Settings
from producers.actions import new_action_token_key

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def make_settings(kafka: str, redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "kafka_bootstrap": kafka,
        "redis_url": redis_url,
        "topic_namespace": f"t{tag}",
        "app_id": f"omni-test-{tag}",
        "partitions": 3,
        "data_dir": str(data_dir),
        "web_port": free_port(),
        "metrics_port": free_port(),
        # No quiet hours unless a test asks: outcomes must not depend on the time of day.
        "quiet_hours_start": "00:00",
        "quiet_hours_end": "00:00",
        "timer_tick_seconds": 0.2,
        # The worker refuses to start without a secret key: a random one per test's stack.
        "action_token_key": new_action_token_key(),
        **overrides,
    }
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings()`` in a child equal ``settings``."""
    return settings.as_env(os.environ)


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """``python -m processors worker`` as a real subprocess, like production."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "processors", "worker"],
            cwd=ROOT,
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self._ready, timeout, "the worker to become ready")
        except AssertionError:
            raise AssertionError(f"worker not ready; log tail:\n{self.log_tail()}") from None

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited early; log tail:\n{self.log_tail()}")
        return http_status(f"http://127.0.0.1:{self.settings.web_port}/readyz") == 200

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def diagnose(self) -> str:
        """What a failing test reports: lag and checkpoint gauges; task stacks go to the log.

        (SIGUSR1 makes mode's worker log every task's stack.)
        """
        if self.process is None or self.process.poll() is not None:
            return "worker not running"
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(2)  # the dump is written while this test fails
        try:
            lines = self.metrics().splitlines()
        except OSError as exc:
            return f"metrics unreadable: {exc}"
        wanted = (
            "omni_consumer_lag",
            "omni_consumer_committed_lag",
            "omni_checkpoint_pending",
            "omni_events_duplicate_total",
            "omni_events_processed_total",
            "omni_changelog_records_skipped_total",
        )
        return "\n".join(
            line for line in lines if line.startswith(wanted) and not line.endswith(" 0.0")
        )

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.settings.metrics_port}/metrics", timeout=5
        ) as response:
            return str(response.read().decode())


def committed_positions(settings: Settings, topic: str) -> list[tuple[TopicPartition, int]]:
    """The worker group's committed position (with metadata) and the end of each
    partition of ``topic``. (Asks for offsets only: the client never joins the group.)"""
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": settings.app_id, "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        wanted = [TopicPartition(topic, p) for p in partitions]
        return [
            (tp, consumer.get_watermark_offsets(tp, timeout=10)[1])
            for tp in consumer.committed(wanted, timeout=10)
        ]
    finally:
        consumer.close()


def committed_to_end(settings: Settings, topic: str) -> bool:
    """Whether the worker's group has committed every record of ``topic``."""
    return all(high == 0 or tp.offset >= high for tp, high in committed_positions(settings, topic))


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class TopicReader:
    """Reads a topic from the beginning and keeps every JSON record it saw."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.records: list[dict[str, Any]] = []
        self.keys: list[bytes | None] = []
        self._consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self._consumer.subscribe([topic])

    def poll(self, seconds: float = 0.2) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self._consumer.consume(500, timeout=0.05):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"reading {self.topic}: {error.str()}")
                self.records.append(orjson.loads(message.value()))
                self.keys.append(message.key())
        return self.records

    def raw(self, seconds: float) -> list[Message]:
        """Every message (undecoded) read within ``seconds``."""
        deadline = time.monotonic() + seconds
        got: list[Message] = []
        while time.monotonic() < deadline:
            got.extend(m for m in self._consumer.consume(500, timeout=0.05) if not m.error())
        return got

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], count: int = 1, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        def matches() -> list[dict[str, Any]] | None:
            found = [r for r in self.poll() if predicate(r)]
            return found if len(found) >= count else None

        return wait_for(matches, timeout, f"{count} matching record(s) on {self.topic}")

    def close(self) -> None:
        self._consumer.close()
