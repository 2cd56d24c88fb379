"""Poison containment in the customer step: an event that raises is dead-lettered, its
customer's state stays as before it, and everything else in the batch goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import processors.customer as customer_module
from processors.customer import CustomerProcessor
from producers.simulator import make_event
from tests.unit.processors.doubles import Event, Message, customer_processor, stored_state


@pytest.fixture
def processor(tmp_path: Path) -> CustomerProcessor:
    return customer_processor(tmp_path, partitions=[0])


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
    # Not a channel's fault: counted under channel "none", so no channel's spike alert fires.
    assert processor.metrics.deadlettered_by_channel("none", "processing_error")._value.get() == 1
    alice_state = stored_state(processor.records, b"alice", 0) or {}
    # Before the bad event DE, after it the language: the bad event left no trace.
    assert alice_state["traits"]["home_country"] == "DE"
    assert alice_state["traits"]["language"] == "de"
    bob_state = stored_state(processor.records, b"bob", 0) or {}
    assert bob_state["traits"]["home_country"] == "FR"
