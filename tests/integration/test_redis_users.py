"""Redis with users and TLS: each role can do what it needs and nothing more.

One secured ``redis-server`` for the module (``LocalRedis(secure=True)``: the
default user off, the ACL users of ``devstack.redis.REDIS_USERS``, TLS only with a
CA made for it), separate from the session's open Redis.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from devstack.ports import free_port
from devstack.redis import CHANNEL_USER, TILL_USER, WORKER_USER, LocalRedis
from devstack.stack import StackPaths, down_redis, stack_redis_env, up_secure_redis
from processors.domain.read_model import ReadModelWrite, stats_key
from processors.metrics import Metrics
from processors.projection import ReadModelWriter, queue_writes
from processors.settings import Settings
from processors.tools.stats import read_stats
from producers.claims import CouponClaims, coupon_claim_key
from producers.config import ProducerSettings
from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    with LocalRedis(free_port(), tmp_path_factory.mktemp("secure-redis"), secure=True) as server:
        yield server


def client_as(server: LocalRedis, role: str) -> redis.Redis:
    return redis.Redis.from_url(server.url_for(role), ssl_ca_certs=str(server.ca_file))


def refused(call: Callable[[], Any]) -> str:
    """Redis's NOPERM message for ``call``; fails the test if Redis allowed it."""
    with pytest.raises(redis.exceptions.NoPermissionError) as caught:
        call()
    return str(caught.value)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_the_worker_user_writes_the_read_model_and_nothing_else(secure_redis: LocalRedis) -> None:
    worker = client_as(secure_redis, WORKER_USER.role)
    customer, rule = unique("c-"), unique("rule-")
    writes = [
        ReadModelWrite(f"omni:profile:{customer}", b'{"segment":"gold"}'),
        ReadModelWrite(f"omni:timeline:{customer}", b"[]"),
        ReadModelWrite(f"omni:entitlement:{customer}:overdraft", b"{}", expire_at=time.time() + 60),
        ReadModelWrite(f"omni:coupon:{customer}", None),  # DEL
        ReadModelWrite(stats_key(rule), b'{"emitted":2}', field="sms|p0"),
    ]
    # What the worker's writer and `omni redis rebuild` send: MSET, SET PXAT, DEL, HSET.
    pipe = worker.pipeline(transaction=False)
    queue_writes(pipe, writes, keys_unique=True)
    pipe.execute()
    assert worker.get(f"omni:profile:{customer}") == b'{"segment":"gold"}'
    assert 0 < worker.ttl(f"omni:entitlement:{customer}:overdraft") <= 60
    # `omni stats`: SCAN + HGETALL.
    assert read_stats(worker)[(rule, "sms")]["emitted"] == 2

    assert "keys" in refused(lambda: worker.set("session:1", b"x"))
    assert "keys" in refused(lambda: worker.get("session:1"))
    for admin in (worker.flushall, lambda: worker.config_get("*"), lambda: worker.keys("*")):
        assert "command" in refused(admin)


def test_a_channel_user_reads_the_read_model_and_writes_nothing(secure_redis: LocalRedis) -> None:
    worker = client_as(secure_redis, WORKER_USER.role)
    customer = unique("c-")
    worker.set(f"omni:profile:{customer}", b'{"segment":"gold"}')
    worker.hset(f"omni:stats:{customer}", "atm|p0", b"{}")
    atm = client_as(secure_redis, CHANNEL_USER.role)

    assert atm.get(f"omni:profile:{customer}") == b'{"segment":"gold"}'
    assert atm.hgetall(f"omni:stats:{customer}") == {b"atm|p0": b"{}"}
    assert atm.ttl(f"omni:profile:{customer}") == -1

    refused(lambda: atm.set(f"omni:profile:{customer}", b"{}"))
    refused(lambda: atm.delete(f"omni:profile:{customer}"))
    refused(lambda: atm.set(coupon_claim_key(customer), "atm", nx=True))
    refused(lambda: atm.get("session:1"))
    refused(atm.flushdb)
    assert worker.get(f"omni:profile:{customer}") == b'{"segment":"gold"}'


def test_the_till_user_claims_coupons_and_writes_nothing_else(secure_redis: LocalRedis) -> None:
    settings = ProducerSettings(
        redis_url=secure_redis.url_for(TILL_USER.role), redis_ca_file=str(secure_redis.ca_file)
    )
    claims = CouponClaims.from_settings(settings)  # S7, as a till's backend builds it
    coupon = unique("cp-")
    assert claims.claim(coupon, "pos", valid_seconds=60)
    assert not claims.claim(coupon, "web", valid_seconds=60)
    assert claims.claimed_by(coupon) == "pos"

    till = client_as(secure_redis, TILL_USER.role)
    refused(lambda: till.set(f"omni:coupon:{coupon}", b"{}"))
    refused(lambda: till.set(f"omni:profile:{coupon}", b"{}"))
    refused(lambda: till.delete(coupon_claim_key(coupon)))
    refused(lambda: till.hset(coupon_claim_key(coupon), "f", "v"))
    refused(lambda: till.set(f"claims:{coupon}:claim", "pos"))
    # The limit an ACL has: it cannot require NX, so SET without it is allowed on a claim key.
    assert till.set(coupon_claim_key(coupon), "web")


def test_no_one_gets_in_without_a_user_tls_and_the_ca(secure_redis: LocalRedis) -> None:
    port, ca_file = secure_redis.port, str(secure_redis.ca_file)
    anonymous = redis.Redis(port=port, ssl=True, ssl_ca_certs=ca_file)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()  # the default user is off
    wrong = f"rediss://{WORKER_USER.name}:not-the-password@127.0.0.1:{port}/0"
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(wrong, ssl_ca_certs=ca_file).ping()
    plain = secure_redis.url_for(WORKER_USER.role).replace("rediss://", "redis://")
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=2).ping()  # no clear-text port
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(secure_redis.url_for(WORKER_USER.role)).ping()  # system CAs


def test_the_workers_read_model_writer_runs_as_the_worker_user(secure_redis: LocalRedis) -> None:
    settings = Settings(redis_url=secure_redis.url, redis_ca_file=str(secure_redis.ca_file))
    metrics = Metrics(CollectorRegistry())
    writer = ReadModelWriter(
        settings.redis_url.get_secret_value(),
        metrics,
        retry_max_seconds=0.2,
        client_options=settings.redis_client_options(),
    )
    customer = unique("c-")
    writes = [
        ReadModelWrite(f"omni:profile:{customer}", b'{"a":1}'),
        ReadModelWrite(f"omni:entitlement:{customer}:overdraft", b"{}", expire_at=time.time() + 60),
        ReadModelWrite(f"elsewhere:{customer}", b"{}"),  # outside omni:*: NOPERM, dropped
    ]

    async def write_and_wait() -> None:
        acked = asyncio.Event()

        async def on_written() -> None:
            acked.set()

        writer.start()
        try:
            writer.submit(writes, on_written)
            await asyncio.wait_for(acked.wait(), 10)
        finally:
            await writer.stop()

    asyncio.run(write_and_wait())
    atm = client_as(secure_redis, CHANNEL_USER.role)
    assert atm.get(f"omni:profile:{customer}") == b'{"a":1}'
    assert atm.exists(f"omni:entitlement:{customer}:overdraft") == 1
    assert metrics.read_model_writes_dropped("no_permission")._value.get() == 1


def test_omni_stats_connects_with_the_user_and_ca_from_the_environment(
    secure_redis: LocalRedis,
) -> None:
    rule = unique("rule-")
    client_as(secure_redis, WORKER_USER.role).hset(
        stats_key(rule), "email|p0", orjson.dumps({"emitted": 4, "accepted": 1})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNI_")}
    env.update(OMNI_REDIS_URL=secure_redis.url, OMNI_REDIS_CA_FILE=str(secure_redis.ca_file))
    done = subprocess.run(
        [sys.executable, "-m", "processors.tools.cli", "stats"],
        env={**env, "COLUMNS": "250"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert rule in done.stdout


def test_the_secure_stack_starts_redis_with_users_and_hands_the_worker_its_own(
    tmp_path: Path,
) -> None:
    paths = StackPaths(tmp_path / "stack")
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    said: list[str] = []
    try:
        worker_env = up_secure_redis(settings, paths, said.append)
        assert worker_env["OMNI_REDIS_URL"].startswith(f"rediss://{WORKER_USER.name}:")
        worker = Settings(
            redis_url=worker_env["OMNI_REDIS_URL"], redis_ca_file=worker_env["OMNI_REDIS_CA_FILE"]
        ).redis_client()
        assert worker.ping()
        # Idempotent: a second `up` finds it and hands out the same credentials.
        assert up_secure_redis(settings, paths, said.append) == worker_env
        assert [s.split()[1] for s in said if s.startswith("redis ")][:1] == ["started"]
        assert "running" in said[-1]
        channel_env = (paths.redis_dir / "channel.env").read_text()
        assert f"rediss://{CHANNEL_USER.name}:" in channel_env
        # What `make demo` reads the ATM's view with.
        channel = stack_redis_env(CHANNEL_USER.role, paths)
        assert channel["OMNI_REDIS_URL"] in channel_env
        atm = Settings(
            redis_url=channel["OMNI_REDIS_URL"], redis_ca_file=channel["OMNI_REDIS_CA_FILE"]
        ).redis_client()
        assert atm.get("omni:profile:nobody") is None
        refused(lambda: atm.set("omni:profile:nobody", b"{}"))
        assert (paths.redis_dir / "access.json").stat().st_mode & 0o077 == 0
        acl = (paths.redis_dir / "users.acl").read_text()
        assert "user default off" in acl
        assert worker_env["OMNI_REDIS_URL"].split(":")[2].split("@")[0] not in acl
    finally:
        down_redis(paths, said.append)
