"""The Redis read-model writer: batches coalesced per key into one pipeline, acks only
once their writes are in Redis, retries with backoff while Redis fails, and never loses
a newer value to an older one. The Redis client is a fake (tests/unit/processors/
fake_redis.py); the unit under test is the writer's logic."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import processors.projection as projection
from processors.domain.read_model import ReadModelWrite
from processors.metrics import Metrics
from processors.projection import MSET_CHUNK, ReadModelWriter, queue_writes
from tests.unit.processors.fake_redis import FakePipeline, FakeRedis


def writer_on(fake: FakeRedis, **kwargs: Any) -> tuple[ReadModelWriter, Metrics]:
    metrics = Metrics(CollectorRegistry())
    writer = ReadModelWriter("redis://127.0.0.1:1/0", metrics, **kwargs)
    writer._redis = fake  # type: ignore[assignment]
    return writer, metrics


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.002)


def recorder(log: list[str], name: str, fake: FakeRedis) -> Callable[[], Awaitable[None]]:
    """An ack that notes its name and what Redis held when it ran."""

    async def ack() -> None:
        log.append(f"{name}:{sorted(fake.data)}")

    return ack


def run(coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coroutine())


def test_a_batch_is_written_in_one_pipeline_and_acked_after_it_landed() -> None:
    fake = FakeRedis()
    acks: list[str] = []

    async def scenario() -> None:
        writer, _ = writer_on(fake)
        writer.start()
        writes = [ReadModelWrite(f"omni:profile:c{n}", b"{}") for n in range(3)]
        writes.append(ReadModelWrite("omni:stats:r1", b"{}", field="sms|p0"))
        writer.submit(writes, recorder(acks, "b1", fake))
        await until(lambda: bool(acks))
        await writer.stop()

    run(scenario)
    assert fake.pipelines == [["hset", "mset"]]  # the plain SETs as one MSET, last
    assert acks == ["b1:['omni:profile:c0', 'omni:profile:c1', 'omni:profile:c2']"]
    assert fake.hashes == {"omni:stats:r1": {"sms|p0": b"{}"}}
    assert fake.closed


def test_batches_queued_together_are_coalesced_and_the_newest_value_wins() -> None:
    fake = FakeRedis()
    acks: list[str] = []

    async def scenario() -> None:
        writer, _ = writer_on(fake)
        # Both batches queue before the writer task runs: one pipeline carries both.
        writer.submit([ReadModelWrite("omni:profile:c1", b"old")], recorder(acks, "b1", fake))
        writer.submit(
            [ReadModelWrite("omni:profile:c1", b"new"), ReadModelWrite("omni:profile:c2", b"x")],
            recorder(acks, "b2", fake),
        )
        writer.start()
        await until(lambda: len(acks) == 2)
        await writer.stop()

    run(scenario)
    assert fake.pipelines == [["mset"]]
    assert fake.data == {"omni:profile:c1": b"new", "omni:profile:c2": b"x"}
    assert [a.split(":")[0] for a in acks] == ["b1", "b2"]  # in submission order


def test_while_redis_fails_writes_and_acks_wait_and_are_retried() -> None:
    fake = FakeRedis()
    fake.failures = 2
    acks: list[str] = []
    lag_during_outage: list[float] = []

    async def scenario() -> None:
        writer, metrics = writer_on(fake)
        writer.submit([ReadModelWrite("omni:profile:c1", b"v1")], recorder(acks, "b1", fake))
        writer.start()
        await until(lambda: fake.attempts >= 1)
        assert acks == [], "a batch was acked before its writes were in Redis"
        lag_during_outage.append(writer.lag_seconds)
        await until(lambda: bool(acks))
        assert metrics.redis_write_errors._value.get() == 2
        await writer.stop()
        assert writer.lag_seconds == 0.0

    run(scenario)
    assert fake.attempts == 3
    assert fake.data == {"omni:profile:c1": b"v1"}
    assert acks == ["b1:['omni:profile:c1']"]
    assert lag_during_outage[0] > 0.0


def test_a_value_submitted_during_an_outage_wins_over_the_failed_one() -> None:
    fake = FakeRedis()
    fake.failures = 1
    acks: list[str] = []

    async def scenario() -> None:
        writer, _ = writer_on(fake)
        writer.submit([ReadModelWrite("omni:profile:c1", b"old")], recorder(acks, "b1", fake))
        writer.start()
        await until(lambda: fake.attempts == 1)
        # The failed pipeline's writes go back to pending; this newer one must win.
        writer.submit([ReadModelWrite("omni:profile:c1", b"new")], recorder(acks, "b2", fake))
        await until(lambda: len(acks) == 2)
        await writer.stop()

    run(scenario)
    assert fake.data == {"omni:profile:c1": b"new"}
    assert [a.split(":")[0] for a in acks] == ["b1", "b2"]
    assert len(fake.pipelines) == 1  # both retried in one pipeline after the failure


def test_a_redis_that_never_answers_times_out_and_the_batch_is_retried() -> None:
    fake = FakeRedis()
    fake.hang = 1
    acks: list[str] = []

    async def scenario() -> None:
        writer, metrics = writer_on(fake, write_timeout_seconds=0.05)
        writer.submit([ReadModelWrite("omni:profile:c1", b"v")], recorder(acks, "b1", fake))
        writer.start()
        await until(lambda: bool(acks))
        assert metrics.redis_write_errors._value.get() == 1
        await writer.stop()

    run(scenario)
    assert fake.attempts == 2 and fake.data == {"omni:profile:c1": b"v"}


def backoffs(monkeypatch: pytest.MonkeyPatch, failures: int, **kwargs: Any) -> list[float]:
    """The waits between retries while Redis fails ``failures`` times in a row."""
    fake = FakeRedis()
    fake.failures = failures
    waits: list[float] = []
    real_sleep = asyncio.sleep

    class Clock:
        @staticmethod
        async def sleep(delay: float) -> None:
            waits.append(delay)
            await real_sleep(0)

    monkeypatch.setattr(projection, "asyncio", _with_sleep(Clock.sleep))

    async def scenario() -> None:
        writer, _ = writer_on(fake, **kwargs)
        done: list[str] = []
        writer.submit([ReadModelWrite("omni:profile:c1", b"v")], recorder(done, "b", fake))
        writer.start()
        await until(lambda: bool(done))
        writer._task.cancel()  # type: ignore[union-attr]

    run(scenario)
    return waits


def _with_sleep(sleep: Callable[[float], Awaitable[None]]) -> Any:
    """The asyncio module as processors.projection sees it, with ``sleep`` replaced."""

    class Patched:
        def __getattr__(self, name: str) -> Any:
            return sleep if name == "sleep" else getattr(asyncio, name)

    return Patched()


def test_the_retry_backoff_doubles_up_to_its_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backoffs(monkeypatch, 6, retry_max_seconds=5.0) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    assert backoffs(monkeypatch, 6, retry_max_seconds=0.2) == [0.05, 0.1, 0.2, 0.2, 0.2, 0.2]


def test_discarded_writes_are_neither_written_nor_acked() -> None:
    fake = FakeRedis()
    acks: list[str] = []

    async def scenario() -> None:
        writer, _ = writer_on(fake)
        writer.submit([ReadModelWrite("omni:profile:c1", b"v")], recorder(acks, "b1", fake))
        writer.discard_pending()
        assert writer.lag_seconds == 0.0
        writer.submit([ReadModelWrite("omni:profile:c2", b"v")], recorder(acks, "b2", fake))
        writer.start()
        await until(lambda: bool(acks))
        await writer.stop()

    run(scenario)
    assert fake.data == {"omni:profile:c2": b"v"}
    assert acks == ["b2:['omni:profile:c2']"]


def test_stop_gives_up_after_its_drain_timeout_while_redis_is_down() -> None:
    fake = FakeRedis()
    fake.failures = 10_000
    acks: list[str] = []

    async def scenario() -> None:
        writer, _ = writer_on(fake)
        writer.submit([ReadModelWrite("omni:profile:c1", b"v")], recorder(acks, "b1", fake))
        writer.start()
        await until(lambda: fake.attempts >= 1)
        await writer.stop(drain_timeout=0.1)

    run(scenario)
    assert acks == [] and fake.data == {} and fake.closed


def queued(writes: list[ReadModelWrite], keys_unique: bool) -> tuple[FakePipeline, list[int]]:
    pipe = FakePipeline(FakeRedis())
    commands = queue_writes(pipe, writes, keys_unique=keys_unique)
    return pipe, [len(c) for c in commands]


def test_plain_sets_of_unique_keys_go_out_as_chunked_msets() -> None:
    writes = [ReadModelWrite(f"k{n}", b"v") for n in range(MSET_CHUNK + 1)]
    pipe, sizes = queued(writes, keys_unique=True)
    assert [c[0] for c in pipe.queued] == ["mset", "mset"]
    assert sizes == [MSET_CHUNK, 1]
    pipe, sizes = queued(writes[:3], keys_unique=False)
    assert [c[0] for c in pipe.queued] == ["set", "set", "set"] and sizes == [1, 1, 1]


def test_expiries_deletes_and_hash_fields_get_their_own_commands() -> None:
    pipe, _ = queued(
        [
            ReadModelWrite("gone", None),
            ReadModelWrite("expires", b"v", expire_at=2_000_000_000.5),
            ReadModelWrite("expired-before-epoch", b"v", expire_at=0.0),
            ReadModelWrite("nan", b"v", expire_at=float("nan")),
            ReadModelWrite("far", b"v", expire_at=1e300),
            ReadModelWrite("h", b"v", field="f"),
        ],
        keys_unique=True,
    )
    assert pipe.queued == [
        ("delete", "gone"),
        ("set", "expires", b"v", 2_000_000_000_500),
        ("delete", "expired-before-epoch"),
        ("delete", "nan"),
        ("set", "far", b"v", 253402300799000),
        ("hset", "h", "f", b"v"),
    ]
