"""The benchmark's own Kafka broker and Redis, on free loopback ports, and cleanup.

Nothing shared is touched: a probe broker or a ``make up`` stack may run on the
machine, so we start fresh processes in a temp dir and remove them at the end,
also on Ctrl-C, SIGTERM or an error (:func:`terminate_as_interrupt` turns
SIGTERM into KeyboardInterrupt so ``with`` blocks unwind).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from devstack.kafka import KAFKA_VERSION, LocalKafka
from devstack.ports import free_port
from devstack.redis import LocalRedis
from processors.settings import Settings
from processors.topics import ensure_topics
from producers.actions import new_action_token_key

__all__ = ["KAFKA_VERSION", "BenchStack", "bench_stack", "terminate_as_interrupt"]


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def terminate_as_interrupt() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``finally`` stops what we started."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


@dataclass
class BenchStack:
    kafka: LocalKafka
    redis_server: LocalRedis
    workdir: Path

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    def settings(self, label: str, **overrides: Any) -> Settings:
        """Settings for one run: its own topic namespace, group, data dir and ports."""
        tag = f"{label}-{uuid.uuid4().hex[:8]}"
        # Faust creates the data dir but not its parents.
        self.scratch(tag)
        values: dict[str, Any] = {
            "kafka_bootstrap": self.bootstrap,
            "redis_url": self.redis_url,
            "topic_namespace": f"bench-{tag}",
            "app_id": f"omni-bench-{tag}",
            "partitions": 8,
            "data_dir": str(self.workdir / tag / "worker"),
            "web_port": free_port(),
            "metrics_port": free_port(),
            # The worker refuses to run without a secret key; each run gets its own.
            "action_token_key": new_action_token_key(),
            **overrides,
        }
        return Settings(**values)

    def scratch(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create_topics(self, settings: Settings, extra: list[str]) -> None:
        """The contract topics plus ``extra`` (benchmark outputs), same partition count."""
        ensure_topics(settings)
        if not extra:
            return
        admin = AdminClient(settings.kafka_client_config())
        futures = admin.create_topics(
            [NewTopic(name, settings.partitions, settings.replication_factor) for name in extra]
        )
        for future in futures.values():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise

    def flush_redis(self) -> None:
        """Each variant starts from an empty read model, so SETs cost the same for all."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            client.flushdb()
        finally:
            client.close()


@contextmanager
def bench_stack(keep_workdir: bool = False) -> Iterator[BenchStack]:
    """Start a broker and Redis in a temp dir; stop them and delete it on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix="omni-bench-"))
    with ExitStack() as stack:
        if not keep_workdir:
            stack.callback(shutil.rmtree, workdir, True)
        kafka = LocalKafka(free_port(), free_port(), workdir / "kafka")
        stack.callback(kafka.stop)  # registered before start: a half-started JVM is stopped too
        kafka.start()
        redis_server = LocalRedis(free_port(), workdir / "redis")
        stack.callback(redis_server.stop)
        redis_server.start()
        kafka.wait_ready(timeout=120)
        redis_server.wait_ready()
        yield BenchStack(kafka, redis_server, workdir)
