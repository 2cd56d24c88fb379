"""Test doubles and builders shared by the unit tests of the worker's agents (no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from processors.app import OmniApp, create_app, step_context
from processors.checkpoint import Checkpoint
from processors.customer import CustomerProcessor
from processors.domain.identity import IdentityPolicy
from processors.domain.record_codec import decode_record
from processors.identity import IdentityProcessor
from processors.metrics import Metrics
from processors.output import TableWriter
from processors.rulebook import load_ruleset
from processors.settings import TRIGGER_CHANNELS, Settings
from tests.unit.processors.test_checkpoint import Producer, Table

CUSTOMER_EVENTS = "omni.customer-events"


@dataclass
class Message:
    key: bytes
    value: bytes
    partition: int
    offset: int
    topic: str = CUSTOMER_EVENTS
    timestamp: float = 0.0
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class Event:
    message: Message


class Writer:
    """The Redis writer: records what it is given."""

    def __init__(self) -> None:
        self.writes: list[Any] = []

    def submit(self, writes: list[Any], ack: Any) -> None:
        self.writes.extend(writes)


class NoCommits:
    """Committed offsets of a group that never committed."""

    def fetch(self, partitions: Any, timeout: float = 10.0) -> dict[int, None]:
        return {}


def customer_processor(
    tmp_path: Path, partitions: Iterable[int] = (0, 1), **overrides: Any
) -> CustomerProcessor:
    """The customer agent's per-batch logic on real RocksDB, with recording doubles."""
    settings = Settings(data_dir=str(tmp_path), **overrides)
    producer = Producer()
    tables = [TableWriter(Table(tmp_path / n), producer) for n in ("c", "t", "s", "i")]  # type: ignore[arg-type]
    checkpoint = Checkpoint(producer, tables, CUSTOMER_EVENTS, NoCommits(), 1000)  # type: ignore[arg-type]
    checkpoint.on_assigned(list(partitions), generation=1)
    ruleset = load_ruleset(Path(settings.rules_dir), settings.rule_delays())
    metrics = Metrics(CollectorRegistry())
    return CustomerProcessor(
        settings=settings,
        ctx=step_context(settings, ruleset),
        metrics=metrics,
        producer=producer,  # type: ignore[arg-type]
        checkpoint=checkpoint,
        records=tables[0],
        timelines=tables[1],
        stats=tables[2],
        trigger_topics={c: settings.trigger_topic(c) for c in TRIGGER_CHANNELS},
        customer_events_topic=CUSTOMER_EVENTS,
        decision_topic="decision.log",
        deadletter_topic="touchpoint.deadletter",
        writer=Writer(),  # type: ignore[arg-type]
        identity=IdentityProcessor(
            policy=IdentityPolicy.from_settings(settings),
            metrics=metrics,
            producer=producer,  # type: ignore[arg-type]
            records=tables[3],
            customer_events_topic=CUSTOMER_EVENTS,
            identity_log_topic="identity.log",
        ),
        identity_log_topic="identity.log",
    )


def stored_state(records: TableWriter, key: bytes, partition: int = 0) -> Any:
    """The state a customer record holds (None: no record), whatever its format."""
    value = records.get(key, partition)
    return None if value is None else orjson.loads(decode_record(value).state)


def stored_timeline(records: TableWriter, key: bytes, partition: int = 0) -> Any:
    """The timeline a customer record holds (None: no record, or a legacy one)."""
    value = records.get(key, partition)
    timeline = None if value is None else decode_record(value).timeline
    return None if timeline is None else orjson.loads(timeline)


@contextmanager
def unconnected_app(tmp_path: Path | None = None, **overrides: Any) -> Iterator[OmniApp]:
    """``create_app`` on its own event loop; nothing connects (the broker port is closed)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        if tmp_path is not None:
            overrides["data_dir"] = str(tmp_path)
        settings = Settings(kafka_bootstrap="127.0.0.1:9", **overrides)
        yield create_app(settings, CollectorRegistry())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
