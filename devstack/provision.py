"""Kafka and Redis for the test suite, from the cheapest source available.

Order, for each service:

1. ``env``: ``OMNI_TEST_KAFKA_BOOTSTRAP`` / ``OMNI_TEST_REDIS_URL`` point at
   something already running (CI service containers, a shared dev stack);
2. ``testcontainers``: a Docker engine answers;
3. ``local-process``: a broker JVM / ``redis-server`` on free loopback ports
   in a temp dir, stopped and deleted on exit. The Kafka jars stay cached
   in ``<repo>/.cache`` so they are downloaded once.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from devstack.kafka import LocalKafka
from devstack.kafka_security import BrokerSecurity
from devstack.ports import free_port
from devstack.redis import LocalRedis

ProvisionPath = Literal["env", "testcontainers", "local-process"]

KAFKA_ENV = "OMNI_TEST_KAFKA_BOOTSTRAP"
REDIS_ENV = "OMNI_TEST_REDIS_URL"
#: Image for the Docker path; same Kafka minor as the local broker (3.9).
KAFKA_IMAGE = "apache/kafka:3.9.1"
REDIS_IMAGE = "redis:7"


@dataclass(frozen=True)
class Provided:
    """Where a service is: ``address`` is a bootstrap (Kafka) or a URL (Redis)."""

    address: str
    path: ProvisionPath


@functools.cache
def docker_available() -> bool:
    """True if a Docker engine answers a ping (asked once per process)."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        # No SDK, no socket, no permission, remote host down: all mean "no Docker".
        return False


def _apache_kafka_container(image: str) -> Any:
    """A testcontainers KafkaContainer that runs the ``apache/kafka`` image in KRaft mode.

    testcontainers 4.x's ``KafkaContainer`` only knows Confluent's cp-kafka
    image: ``with_kraft()`` rejects tag 3.9.1 (it compares it with cp 7.0.0)
    and its start script sources ``/etc/confluent/docker``. So, like
    testcontainers-java does for apache/kafka, we configure the image through
    its KAFKA_* environment and only inject the advertised listener (the
    mapped host port is known after the container starts).
    """
    from testcontainers.community.kafka import KafkaContainer

    class ApacheKafkaContainer(KafkaContainer):
        def _verify_min_kraft_version(self) -> None:
            # The check is about Confluent Platform version numbers.
            return None

        def _configure_kraft(self) -> None:
            self.wait_for = re.compile(r".*Kafka Server started.*")
            env = {
                "CLUSTER_ID": self.cluster_id,
                "KAFKA_NODE_ID": "1",
                "KAFKA_PROCESS_ROLES": "broker,controller",
                "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
                "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
                "KAFKA_LISTENERS": f"{self.listeners},CONTROLLER://0.0.0.0:9094",
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
                    f"{self.security_protocol_map},CONTROLLER:PLAINTEXT"
                ),
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
                "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
                "KAFKA_NUM_PARTITIONS": "8",
                # Same reason as deploy/kafka/server.properties: no 3 s join delay.
                "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            }
            for key, value in env.items():
                self.with_env(key, value)

        def tc_start(self) -> None:
            host = self.get_container_host_ip()
            port = self.get_exposed_port(self.port)
            script = (
                "#!/bin/sh\n"
                f"export KAFKA_ADVERTISED_LISTENERS={self.listener_name}://{host}:{port},"
                "BROKER://$(hostname -i | cut -d' ' -f1):9092\n"
                "exec /etc/kafka/docker/run\n"
            )
            self.create_file(script.encode(), KafkaContainer.TC_START_SCRIPT)

    return ApacheKafkaContainer(image).with_kraft()


@contextmanager
def provide_kafka() -> Iterator[Provided]:
    """Yield a reachable Kafka bootstrap; tear down whatever we started."""
    from_env = os.environ.get(KAFKA_ENV)
    if from_env:
        yield Provided(from_env, "env")
        return
    if docker_available():
        container = _apache_kafka_container(KAFKA_IMAGE)
        container.start(timeout=120)
        try:
            yield Provided(container.get_bootstrap_server(), "testcontainers")
        finally:
            container.stop()
        return
    workdir = Path(tempfile.mkdtemp(prefix="omni-test-kafka-"))
    kafka = LocalKafka(free_port(), free_port(), workdir)
    try:
        kafka.start()
        kafka.wait_ready(timeout=120)
        yield Provided(kafka.bootstrap, "local-process")
    finally:
        kafka.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class SecuredKafka:
    """A broker with SASL_SSL (SCRAM-SHA-512), the StandardAuthorizer and its users."""

    bootstrap: str
    security: BrokerSecurity


@contextmanager
def provide_secured_kafka() -> Iterator[SecuredKafka]:
    """Start a secured local broker on free ports (always a local process: its users
    and certificates are made here); stopped and deleted on exit. ACLs are the
    caller's (``devstack.kafka_security.create_acls``): they name the topics."""
    workdir = Path(tempfile.mkdtemp(prefix="omni-test-kafka-secure-"))
    security = BrokerSecurity.create(workdir / "tls")
    kafka = LocalKafka(free_port(), free_port(), workdir / "kafka", security=security)
    try:
        kafka.start()
        kafka.wait_ready(timeout=120)
        yield SecuredKafka(kafka.bootstrap, security)
    finally:
        kafka.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def provide_redis() -> Iterator[Provided]:
    """Yield a reachable Redis URL; tear down whatever we started."""
    from_env = os.environ.get(REDIS_ENV)
    if from_env:
        yield Provided(from_env, "env")
        return
    if docker_available():
        from testcontainers.community.redis import RedisContainer

        container = RedisContainer(REDIS_IMAGE)
        container.start()
        try:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(container.port)
            yield Provided(f"redis://{host}:{port}/0", "testcontainers")
        finally:
            container.stop()
        return
    workdir = Path(tempfile.mkdtemp(prefix="omni-test-redis-"))
    server = LocalRedis(free_port(), workdir)
    try:
        server.start()
        server.wait_ready()
        yield Provided(server.url, "local-process")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
