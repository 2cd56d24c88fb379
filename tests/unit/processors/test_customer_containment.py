"""Poison containment in the customer step: an event that raises is dead-lettered, its
customer's state stays as before it, and everything else in the batch goes on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

import processors.customer as customer_module
from processors.app import step_context
from processors.checkpoint import Checkpoint
from processors.customer import CustomerProcessor
from processors.metrics import Metrics
from processors.output import TableWriter
from processors.rulebook import load_ruleset
from processors.settings import Settings
from producers.simulator import make_event
from tests.unit.processors.test_checkpoint import Producer, Table


@dataclass
class Message:
    key: bytes
    value: bytes
    partition: int
    offset: int
    topic: str = "omni.customer-events"
    timestamp: float = 0.0


@dataclass
class Event:
    message: Message


class Writer:
    def __init__(self) -> None:
        self.writes: list[Any] = []

    def submit(self, writes: list[Any], ack: Any) -> None:
        self.writes.extend(writes)


class NoCommits:
    def fetch(self, partitions: Any, timeout: float = 10.0) -> dict[int, None]:
        return {}


@pytest.fixture
def processor(tmp_path: Path) -> CustomerProcessor:
    settings = Settings(data_dir=str(tmp_path))
    producer = Producer()
    tables = [TableWriter(Table(tmp_path / n), producer) for n in ("c", "t", "s")]  # type: ignore[arg-type]
    checkpoint = Checkpoint(producer, tables, "omni.customer-events", NoCommits(), 1000)  # type: ignore[arg-type]
    checkpoint.on_assigned([0], generation=1)
    ruleset = load_ruleset(Path(settings.rules_dir), settings.rule_delays())
    return CustomerProcessor(
        settings=settings,
        ctx=step_context(settings, ruleset),
        metrics=Metrics(CollectorRegistry()),
        producer=producer,  # type: ignore[arg-type]
        checkpoint=checkpoint,
        records=tables[0],
        timelines=tables[1],
        stats=tables[2],
        trigger_topics={"sms": "trigger.sms"},
        customer_events_topic="omni.customer-events",
        decision_topic="decision.log",
        deadletter_topic="touchpoint.deadletter",
        writer=Writer(),  # type: ignore[arg-type]
    )


def as_event(record: dict[str, Any], offset: int) -> Event:
    key = str(record["customer_id"]).encode()
    return Event(Message(key, orjson.dumps(record), 0, offset))


def test_an_event_that_raises_is_deadlettered_and_the_rest_goes_on(
    processor: CustomerProcessor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = customer_module.step

    def step(state: Any, events: Any, *args: Any) -> Any:
        if any(e.payload.get("home_country") == "XX" for e in events):
            raise ValueError("boom: a bug for this event only")
        return real_step(state, events, *args)

    monkeypatch.setattr(customer_module, "step", step)
    alice = [
        make_event("alice", "crm", "profile.updated", {"home_country": "DE"}),
        make_event("alice", "crm", "profile.updated", {"home_country": "XX"}),  # raises
        make_event("alice", "crm", "profile.updated", {"language": "de"}),
    ]
    bob = [make_event("bob", "crm", "profile.updated", {"home_country": "FR"})]
    batch = [as_event(r, n) for n, r in enumerate([*alice, *bob])]
    processor.process(batch, ack=None)  # type: ignore[arg-type]

    sent = processor.producer.sent  # type: ignore[attr-defined]
    deadletters = [orjson.loads(s[2]) for s in sent if s[0] == "touchpoint.deadletter"]
    assert [d["reason"] for d in deadletters] == ["processing_error"]
    assert deadletters[0]["source"]["offset"] == 1
    assert "ValueError" in deadletters[0]["errors"][0]
    alice_state = orjson.loads(processor.records.get(b"alice", 0) or b"{}")
    # Before the bad event DE, after it the language: the bad event left no trace.
    assert alice_state["traits"]["home_country"] == "DE"
    assert alice_state["traits"]["language"] == "de"
    bob_state = orjson.loads(processor.records.get(b"bob", 0) or b"{}")
    assert bob_state["traits"]["home_country"] == "FR"
