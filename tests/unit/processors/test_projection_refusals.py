"""The Redis writer drops a write Redis refuses for its key (counted, logged without the
value) and retries the whole batch when Redis refuses everything (OOM, READONLY...)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import (
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from processors.domain.read_model import ReadModelWrite
from processors.metrics import Metrics
from processors.projection import ReadModelWriter, drop_reason, refuses_every_key

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


class FakePipeline:
    """Answers like redis-py's pipeline with ``raise_on_error=False``."""

    def __init__(self, server: FakeRedis) -> None:
        self.server = server
        self.queued: list[tuple[str, Any]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def mset(self, mapping: dict[str, bytes]) -> None:
        self.queued.append(("mset", dict(mapping)))

    def set(self, key: str, value: bytes, pxat: int | None = None) -> None:
        self.queued.append(("set", {key: value}))

    def hset(self, key: str, field: str, value: bytes) -> None:
        self.queued.append(("hset", {key: value}))

    def delete(self, key: str) -> None:
        self.queued.append(("delete", {key: None}))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        assert raise_on_error is False
        self.server.pipelines.append([command for command, _ in self.queued])
        out: list[Any] = []
        for _command, keys in self.queued:
            refusal = next((self.server.refuse[k] for k in keys if k in self.server.refuse), None)
            if refusal is not None:
                out.append(refusal)
                continue
            for key, value in keys.items():
                self.server.data[key] = value
            out.append(True)
        return out


class FakeRedis:
    def __init__(self, refuse: dict[str, ResponseError]) -> None:
        self.refuse = refuse
        self.data: dict[str, bytes | None] = {}
        self.pipelines: list[list[str]] = []

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


def writer_with(refuse: dict[str, ResponseError]) -> tuple[ReadModelWriter, FakeRedis, Metrics]:
    metrics = Metrics(CollectorRegistry())
    writer = ReadModelWriter("redis://127.0.0.1:1/0", metrics)
    fake = FakeRedis(refuse)
    writer._redis = fake  # type: ignore[assignment]
    return writer, fake, metrics


def dropped(metrics: Metrics, reason: str) -> float:
    return metrics.read_model_writes_dropped(reason)._value.get()


def test_a_refused_mset_chunk_is_redone_key_by_key(caplog: pytest.LogCaptureFixture) -> None:
    writer, fake, metrics = writer_with({"omni:profile:bad": ResponseError(WRONGTYPE)})
    writes = [ReadModelWrite(f"omni:profile:c{n}", b"secret-value") for n in range(3)]
    writes.insert(1, ReadModelWrite("omni:profile:bad", b"secret-value"))
    with caplog.at_level(logging.WARNING):
        asyncio.run(writer._write(writes))
    assert fake.pipelines == [["mset"], ["set", "set", "set", "set"]]
    assert sorted(fake.data) == ["omni:profile:c0", "omni:profile:c1", "omni:profile:c2"]
    assert dropped(metrics, "wrong_type") == 1
    # What kind of key and why, never whose (the id is personal data) nor the value.
    assert "1 x omni:profile:*: WRONGTYPE" in caplog.text
    assert "omni:profile:bad" not in caplog.text and "secret-value" not in caplog.text


def test_the_refused_keys_themselves_are_logged_only_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer, _, _ = writer_with({"omni:profile:bad": ResponseError(WRONGTYPE)})
    with caplog.at_level(logging.DEBUG):
        asyncio.run(writer._write([ReadModelWrite("omni:profile:bad", b"secret-value")]))
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("omni:profile:bad: WRONGTYPE" in message for message in debug)
    assert "secret-value" not in caplog.text


def test_refused_single_commands_are_dropped_with_their_reason() -> None:
    writer, fake, metrics = writer_with(
        {
            "omni:stats:r": ResponseError(WRONGTYPE),
            "omni:coupon:k": ResponseError("invalid expire time in 'set' command"),
            "omni:x": NoPermissionError("this user has no permissions to access one of the keys"),
        }
    )
    asyncio.run(
        writer._write(
            [
                ReadModelWrite("omni:stats:r", b"{}", field="sms|p0"),
                ReadModelWrite("omni:coupon:k", b"{}", expire_at=1e9),
                ReadModelWrite("omni:x", b"{}", expire_at=1e9),
                ReadModelWrite("omni:entitlement:c:overdraft", b"{}", expire_at=2e9),
            ]
        )
    )
    assert fake.pipelines == [["hset", "set", "set", "set"]]  # no second pipeline
    assert list(fake.data) == ["omni:entitlement:c:overdraft"]
    assert [dropped(metrics, r) for r in ("wrong_type", "invalid_expire", "no_permission")] == [
        1,
        1,
        1,
    ]


@pytest.mark.parametrize(
    "error",
    [
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        ReadOnlyError("You can't write against a read only replica."),
        ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's unable"),
        ResponseError("BUSY Redis is busy running a script."),
    ],
    ids=["oom", "readonly", "misconf", "busy"],
)
def test_a_refusal_of_every_key_raises_to_retry_the_batch(error: ResponseError) -> None:
    writer, _, metrics = writer_with({"omni:profile:c0": error})
    with pytest.raises(ResponseError):
        asyncio.run(writer._write([ReadModelWrite("omni:profile:c0", b"{}")]))
    assert refuses_every_key(error)
    assert dropped(metrics, "refused") == 0


def test_reasons_are_few() -> None:
    assert drop_reason(ResponseError(WRONGTYPE)) == "wrong_type"
    assert drop_reason(ResponseError("invalid expire time in 'set' command")) == "invalid_expire"
    assert drop_reason(ResponseError("value is out of range")) == "refused"
    assert not refuses_every_key(ResponseError(WRONGTYPE))
    assert not refuses_every_key(NoPermissionError("no permissions to access one of the keys"))
