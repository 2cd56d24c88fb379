"""provide_kafka/provide_redis choose their source without starting anything here."""

from __future__ import annotations

import pytest

from devstack import provision
from devstack.provision import Provided, provide_kafka, provide_redis


def test_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(provision.KAFKA_ENV, "kafka.ci:9092")
    monkeypatch.setenv(provision.REDIS_ENV, "redis://redis.ci:6379/0")
    with provide_kafka() as kafka, provide_redis() as redis:
        assert kafka == Provided("kafka.ci:9092", "env")
        assert redis == Provided("redis://redis.ci:6379/0", "env")


def test_docker_probe_swallows_every_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import docker

    def broken(**_: object) -> None:
        raise RuntimeError("no engine")

    provision.docker_available.cache_clear()
    monkeypatch.setattr(docker, "from_env", broken)
    try:
        assert provision.docker_available() is False
    finally:
        provision.docker_available.cache_clear()


def test_apache_kafka_container_accepts_kraft(monkeypatch: pytest.MonkeyPatch) -> None:
    # Building a container object opens a Docker client; none is needed to check config.
    import testcontainers.core.container as tc_container

    monkeypatch.setattr(tc_container, "DockerClient", lambda **_: object())
    # testcontainers' own with_kraft() rejects "3.9.1" (it expects cp-kafka tags).
    container = provision._apache_kafka_container(provision.KAFKA_IMAGE)
    assert container.kraft_enabled
    container.configure()
    assert container.env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert container.env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@localhost:9094"
