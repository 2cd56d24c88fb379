"""One broker and one Redis per test session; a fresh namespace and worker per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.provision import Provided, provide_kafka, provide_redis
from processors.settings import Settings
from processors.topics import ensure_topics
from tests.integration.harness import TopicReader, WorkerProcess, make_settings


@pytest.fixture(scope="session")
def kafka() -> Iterator[Provided]:
    with provide_kafka() as provided:
        print(f"\n[integration] Kafka via {provided.path}: {provided.address}")
        yield provided


@pytest.fixture(scope="session")
def redis_service() -> Iterator[Provided]:
    with provide_redis() as provided:
        print(f"\n[integration] Redis via {provided.path}: {provided.address}")
        yield provided


def pytest_report_header(config: pytest.Config) -> list[str]:
    return ["integration services: see the '[integration] ... via <path>' lines (-s shows them)"]


@pytest.fixture
def settings(kafka: Provided, redis_service: Provided, tmp_path: Path) -> Settings:
    settings = make_settings(kafka.address, redis_service.address, tmp_path / "worker")
    ensure_topics(settings)
    return settings


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(settings, tmp_path / "worker.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def readers(settings: Settings) -> Iterator[dict[str, TopicReader]]:
    opened: dict[str, TopicReader] = {}

    class Readers(dict[str, TopicReader]):
        def __missing__(self, topic: str) -> TopicReader:
            reader = opened[topic] = TopicReader(settings, topic)
            self[topic] = reader
            return reader

    yield Readers()
    for reader in opened.values():
        reader.close()
