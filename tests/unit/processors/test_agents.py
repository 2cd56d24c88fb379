"""The thin agents, driven by Faust's own test context (``agent.test_context()``) on the
app ``create_app`` builds: no broker, no Redis.

Only librdkafka's ``produce`` (what the worker sends) and the Redis client (a fake, see
fake_redis.py) are replaced; the agents, batching, ingest, customer step, checkpoint
and read-model writer are the production ones.

``AgentTestWrapper.put`` labels messages of an agent reading several topics
``<internal>``, so messages for the ingest agent are built here on the real touchpoint
topic names and put on the test context's channel the way ``put`` does it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
from faust.agents.agent import AgentTestWrapper
from faust.types import ChannelT, EventT, Message
from prometheus_client import CollectorRegistry

from processors.app import OmniApp, create_app
from processors.settings import Settings
from producers.simulator import make_event
from tests.unit.processors.doubles import stored_state
from tests.unit.processors.fake_redis import FakeRedis


@dataclass
class Worker:
    app: OmniApp
    redis: FakeRedis
    #: (topic, key, value, partition, timestamp_ms, headers) of every record produced.
    produced: list[tuple[Any, ...]]
    registry: CollectorRegistry

    def sent_to(self, topic: str) -> list[tuple[Any, ...]]:
        return [record for record in self.produced if record[0] == topic]

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@asynccontextmanager
async def worker(tmp_path: Path, **overrides: Any) -> AsyncIterator[Worker]:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=str(tmp_path), **overrides)
    registry = CollectorRegistry()
    app = create_app(settings, registry)
    produced: list[tuple[Any, ...]] = []

    def produce(
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        on_delivery: Any,
        callback: Any,
        timestamp_ms: int,
        headers: Any,
    ) -> None:
        produced.append((topic, key, value, partition, timestamp_ms, headers))

    app.pipeline.producer._produce = produce  # type: ignore[assignment]
    redis = FakeRedis()
    app.pipeline.writer._redis = redis  # type: ignore[assignment]
    app.pipeline.writer.start()
    app.pipeline.checkpoint.on_assigned([0, 1], generation=1)
    try:
        yield Worker(app, redis, produced, registry)
    finally:
        await app.pipeline.writer.stop(drain_timeout=0.5)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.002)


async def deliver(
    agent: AgentTestWrapper, topic: str, key: bytes | None, value: bytes, offset: int
) -> EventT:
    """What ``AgentTestWrapper.put(wait=False)`` does, with the message on ``topic``."""
    message = Message(
        topic, 0, offset, 1_700_000_000.25, 0, None, key, value, b"",
        generation_id=agent.app.consumer_generation_id,
    )  # fmt: skip
    channel = cast(ChannelT[Any], agent.stream().channel)
    event: EventT = await channel.decode(message)
    await channel.put(event)
    return event


def record(customer: str, channel: str, type_: str, payload: dict[str, Any]) -> bytes:
    return orjson.dumps(make_event(customer, channel, type_, payload))


# --- ingest ---------------------------------------------------------------------------------


def test_ingest_forwards_a_valid_event_and_dead_letters_a_bad_one_then_goes_on(
    tmp_path: Path,
) -> None:
    async def scenario() -> Worker:
        async with worker(tmp_path) as w:
            settings = w.app.pipeline.settings
            web = settings.touchpoint_topic("web")
            async with w.app.agents["ingest"].test_context() as agent:
                tester = cast(AgentTestWrapper, agent)
                events = [
                    await deliver(
                        tester, web, b"c1", record("c1", "web", "page.viewed", {"url": "/home"}), 0
                    ),
                    await deliver(tester, web, b"c2", b'{"type": "page.viewed"}', 1),
                    await deliver(
                        tester, web, b"c3", record("c3", "web", "page.viewed", {"url": "/home"}), 2
                    ),
                ]
                await until(lambda: all(e.message.acked for e in events))
            return w

    w = asyncio.run(scenario())
    settings = w.app.pipeline.settings
    forwarded = w.sent_to(settings.customer_events_topic)
    assert [(r[1], orjson.loads(r[2])["customer_id"]) for r in forwarded] == [
        (b"c1", "c1"),
        (b"c3", "c3"),
    ]
    assert forwarded[0][4] == 1_700_000_000_250  # the producer's time travels with it
    [dead] = w.sent_to(settings.deadletter_topic)
    letter = orjson.loads(dead[2])
    assert dead[1] == b"c2" and letter["reason"] == "schema_violation"
    assert letter["source"] == {
        "topic": settings.touchpoint_topic("web"),
        "partition": 0,
        "offset": 1,
    }
    assert w.sample("omni_events_deadlettered_total", reason="schema_violation") == 1


def batch_sizes(tmp_path: Path, **overrides: Any) -> tuple[float, float, int]:
    """(batches, events, forwarded) of the ingest agent for five events queued at once."""

    async def scenario() -> Worker:
        async with worker(tmp_path, **overrides) as w:
            web = w.app.pipeline.settings.touchpoint_topic("web")
            async with w.app.agents["ingest"].test_context() as agent:
                tester = cast(AgentTestWrapper, agent)
                events = [
                    await deliver(
                        tester, web, b"c1", record("c1", "web", "page.viewed", {"url": "/home"}), n
                    )
                    for n in range(5)
                ]
                await until(lambda: all(e.message.acked for e in events))
            return w

    w = asyncio.run(scenario())
    count = w.sample("omni_batch_events_count", agent="ingest")
    total = w.sample("omni_batch_events_sum", agent="ingest")
    return count, total, len(w.sent_to(w.app.pipeline.settings.customer_events_topic))


def test_ingest_batches_hold_at_most_batch_max_events(tmp_path: Path) -> None:
    assert batch_sizes(tmp_path / "a") == (1.0, 5.0, 5)
    assert batch_sizes(tmp_path / "b", batch_max_events=2) == (3.0, 5.0, 5)


# --- customer -------------------------------------------------------------------------------


def test_customer_agent_folds_an_event_into_state_outputs_and_read_model(tmp_path: Path) -> None:
    async def scenario() -> tuple[Worker, EventT]:
        async with worker(tmp_path) as w:
            async with w.app.agents["customer"].test_context() as agent:
                event = await agent.put(
                    record("c1", "kiosk", "kiosk.checked_in", {"appointment_id": "A1"}),
                    key=b"c1",
                    partition=0,
                )
                await until(lambda: event.message.acked)
            return w, event

    w, event = asyncio.run(scenario())
    pipeline = w.app.pipeline
    state = stored_state(pipeline.customer.records, b"c1", 0)
    assert state["customer_id"] == "c1" and state["last_seen"]["kiosk"] > 0
    # Outputs: the two rules on a check-in, one trigger each, and their decisions.
    triggers = {r[0]: orjson.loads(r[2])["type"] for r in w.produced if r[0].startswith("trigger.")}
    assert triggers == {"trigger.push": "queue_ticket", "trigger.crm": "appointment_unknown"}
    assert len(w.sent_to(pipeline.settings.decision_topic)) == 2
    # The state went to the changelog, stamped with the batch's input offset.
    [changelog] = w.sent_to("omni-pipeline-customers-changelog")
    assert changelog[1] == b"c1" and dict(changelog[5])["omni-src"].endswith(b":0")
    # Acked only once the read model had it.
    assert "omni:profile:c1" in w.redis.data and event.message.acked


def test_customer_agent_dead_letters_an_undecodable_event_and_goes_on(tmp_path: Path) -> None:
    async def scenario() -> Worker:
        async with worker(tmp_path) as w:
            async with w.app.agents["customer"].test_context() as agent:
                events = [
                    await agent.put(record("c1", "crm", "profile.updated", {"language": "de"}),
                                    key=b"c1", partition=0),
                    await agent.put(b"{not json", key=b"c2", partition=0),
                    await agent.put(record("c3", "crm", "profile.updated", {"language": "fr"}),
                                    key=b"c3", partition=0),
                ]  # fmt: skip
                await until(lambda: all(e.message.acked for e in events))
            return w

    w = asyncio.run(scenario())
    pipeline = w.app.pipeline
    [dead] = w.sent_to(pipeline.settings.deadletter_topic)
    letter = orjson.loads(dead[2])
    assert dead[1] == b"c2" and letter["reason"] == "processing_error"
    assert letter["source"]["offset"] == 1 and "JSONDecodeError" in letter["errors"][0]
    assert letter["raw"] == "{not json"
    assert pipeline.customer.records.get(b"c2", 0) is None
    for key, language in ((b"c1", "de"), (b"c3", "fr")):
        assert (stored_state(pipeline.customer.records, key, 0) or {})["traits"][
            "language"
        ] == language
    assert w.sample("omni_events_deadlettered_total", reason="processing_error") == 1


def test_customer_agent_does_not_ack_while_redis_is_down(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[bool], EventT, Worker]:
        async with worker(tmp_path, redis_retry_max_seconds=0.05) as w:
            w.redis.failures = 3
            async with w.app.agents["customer"].test_context() as agent:
                event = await agent.put(
                    record("c1", "crm", "profile.updated", {"language": "de"}),
                    key=b"c1",
                    partition=0,
                )
                await until(lambda: w.redis.attempts >= 2)
                during = [event.message.acked]
                await until(lambda: event.message.acked)
            return during, event, w

    during, event, w = asyncio.run(scenario())
    assert during == [False] and event.message.acked
    assert w.redis.attempts == 4 and "omni:profile:c1" in w.redis.data
