"""A read-model write the real Redis refuses for its key is dropped and counted; the
other writes of the batch land, and the batch is acknowledged (not retried forever)."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from prometheus_client import CollectorRegistry

from devstack.provision import Provided
from processors.domain.read_model import ReadModelWrite
from processors.metrics import Metrics
from processors.projection import ReadModelWriter

pytestmark = pytest.mark.integration


def dropped(metrics: Metrics, reason: str) -> float:
    return metrics.read_model_writes_dropped(reason)._value.get()


async def write_and_wait(writer: ReadModelWriter, writes: list[ReadModelWrite]) -> None:
    """Submit like the customer agent does and wait for the ack (the commit's signal)."""
    acked = asyncio.Event()

    async def on_written() -> None:
        acked.set()

    writer.start()
    try:
        writer.submit(writes, on_written)
        await asyncio.wait_for(acked.wait(), 10)
    finally:
        await writer.stop()


def test_a_wrong_type_key_is_dropped_and_the_others_land(redis_service: Provided) -> None:
    ns = f"refusal-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_service.address)
    client.set(f"{ns}:stats", b"a string, where the worker keeps a hash")
    client.hset(f"{ns}:profile:holds-a-hash", "f", "v")
    metrics = Metrics(CollectorRegistry())
    writer = ReadModelWriter(redis_service.address, metrics, retry_max_seconds=0.2)
    writes = [
        ReadModelWrite(f"{ns}:profile:a", b'{"a":1}'),
        ReadModelWrite(f"{ns}:stats", b'{"emitted":1}', field="sms|p0"),  # WRONGTYPE
        ReadModelWrite(f"{ns}:profile:b", b'{"b":2}'),
        # SET replaces any type: a hash there is overwritten, not refused.
        ReadModelWrite(f"{ns}:profile:holds-a-hash", b'{"c":3}'),
        ReadModelWrite(f"{ns}:coupon:old", b"{}", expire_at=-2208988800.0),  # 1900: a DEL
        ReadModelWrite(f"{ns}:entitlement:a", b"{}", expire_at=4102444800.0),
    ]
    try:
        asyncio.run(write_and_wait(writer, writes))
        assert client.get(f"{ns}:profile:a") == b'{"a":1}'
        assert client.get(f"{ns}:profile:b") == b'{"b":2}'
        assert client.get(f"{ns}:profile:holds-a-hash") == b'{"c":3}'
        assert client.exists(f"{ns}:coupon:old") == 0
        assert client.pexpiretime(f"{ns}:entitlement:a") == 4102444800000
        assert client.get(f"{ns}:stats") == b"a string, where the worker keeps a hash"
        assert dropped(metrics, "wrong_type") == 1
        assert metrics.redis_write_errors._value.get() == 0  # nothing retried
    finally:
        client.delete(*client.keys(f"{ns}:*"))
        client.close()


def test_a_refused_mset_chunk_drops_only_the_refused_key(redis_service: Provided) -> None:
    """An ACL that does not cover one key makes Redis refuse the whole MSET: the writer
    redoes that chunk one SET per key, so only that key is dropped."""
    ns = f"acl-{uuid.uuid4().hex[:8]}"
    user, password = f"omni-{ns}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_service.address)
    try:
        admin.acl_setuser(
            user,
            enabled=True,
            passwords=[f"+{password}"],
            keys=[f"{ns}:ok*"],
            commands=["+@all"],
        )
    except redis.RedisError as exc:  # a skipped test would hide a missing check: fail
        admin.close()
        pytest.fail(f"cannot create an ACL user on the test Redis (needs Redis 6+ ACLs): {exc}")
    url = urlsplit(redis_service.address)
    limited = urlunsplit(url._replace(netloc=f"{user}:{password}@{url.hostname}:{url.port}"))
    metrics = Metrics(CollectorRegistry())
    writer = ReadModelWriter(limited, metrics, retry_max_seconds=0.2)
    writes = [ReadModelWrite(f"{ns}:ok{n}", f"v{n}".encode()) for n in range(3)]
    writes.insert(2, ReadModelWrite(f"{ns}:forbidden", b"x"))
    try:
        asyncio.run(write_and_wait(writer, writes))
        assert [admin.get(f"{ns}:ok{n}") for n in range(3)] == [b"v0", b"v1", b"v2"]
        assert admin.exists(f"{ns}:forbidden") == 0
        assert dropped(metrics, "no_permission") == 1
    finally:
        admin.acl_deluser(user)
        keys = admin.keys(f"{ns}:*")
        if keys:
            admin.delete(*keys)
        admin.close()
