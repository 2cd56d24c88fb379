"""Writes the Redis read model in pipelines, off the processing path.

The customer agent hands each batch's whole-value writes to :class:`ReadModelWriter`
and goes on; the writer coalesces them per key (the newest value wins) and
writes them in one pipeline. The batch's events are acknowledged to Kafka only
once their writes are in Redis, so:

- a Redis outage never stops triggers: processing goes on, pending writes are
  kept (one value per key, so memory is bounded by the customers touched) and
  retried with backoff, and ``omni_read_model_lag_seconds`` shows how far
  behind the read model is;
- a worker that dies during an outage has not committed those offsets, so the
  events come back after restart; as duplicates they change no state but the
  agent re-projects the customer, and the read model converges.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from processors.domain.read_model import ReadModelWrite
from processors.metrics import Metrics

log = logging.getLogger(__name__)

OnWritten = Callable[[], Awaitable[None]]


class ReadModelWriter:
    def __init__(
        self,
        redis_url: str,
        metrics: Metrics,
        retry_max_seconds: float = 5.0,
        write_timeout_seconds: float = 5.0,
    ) -> None:
        # No per-reply socket timeout: redis-py wraps every reply of a pipeline in an
        # asyncio timeout of its own (a measurable share of the worker's CPU); one
        # deadline for the whole pipeline (``_write``) finds a hung Redis as well.
        self._redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2.0)
        self._write_timeout = write_timeout_seconds
        self._metrics = metrics
        self._retry_max = retry_max_seconds
        #: (key, hash field or None) -> the newest write of it.
        self._pending: dict[tuple[str, str | None], ReadModelWrite] = {}
        self._on_written: list[OnWritten] = []
        self._oldest_pending: float | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def submit(self, writes: Iterable[ReadModelWrite], on_written: OnWritten) -> None:
        """Queue whole-value writes; ``on_written`` runs once they are in Redis."""
        for write in writes:
            self._pending[(write.key, write.field)] = write
        self._on_written.append(on_written)
        if self._oldest_pending is None:
            self._oldest_pending = time.monotonic()
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="read-model")

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Try to write what is pending, then stop; undone writes are replayed after restart."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._drained(), drain_timeout)
        except TimeoutError:
            log.warning(
                "Stopping with %d read-model writes not in Redis; they are redone from "
                "Kafka when the worker restarts (offsets were not committed).",
                len(self._pending),
            )
        self._task.cancel()
        self._task = None
        await self._redis.aclose()

    async def _drained(self) -> None:
        while self._pending or self._on_written:
            await asyncio.sleep(0.01)

    @property
    def lag_seconds(self) -> float:
        return 0.0 if self._oldest_pending is None else time.monotonic() - self._oldest_pending

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            writes, callbacks, since = self._pending, self._on_written, self._oldest_pending
            self._pending, self._on_written, self._oldest_pending = {}, [], None
            try:
                await self._write(writes.values())
            except (RedisError, OSError, TimeoutError) as exc:
                self._metrics.redis_write_errors.inc()
                # Newer values submitted meanwhile win over the ones we failed to write.
                writes.update(self._pending)
                self._pending = writes
                self._on_written = callbacks + self._on_written
                self._oldest_pending = since
                self._metrics.read_model_lag.set(self.lag_seconds)
                log.warning(
                    "Redis write of %d keys failed (%s); retrying in %.2fs. Triggers keep "
                    "flowing; check that Redis is up and reachable at OMNI_REDIS_URL.",
                    len(writes),
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max)
                self._wakeup.set()
                continue
            backoff = 0.05
            for callback in callbacks:
                await callback()
            self._metrics.read_model_lag.set(self.lag_seconds)

    async def _write(self, writes: Iterable[ReadModelWrite]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            # Coalesced per (key, field) in ``submit``: every key appears once.
            queue_writes(pipe, writes, keys_unique=True)
            # A timeout cancels the pipeline; redis-py then drops the connection.
            async with asyncio.timeout(self._write_timeout):
                await pipe.execute()


#: Keys per MSET: big enough to amortise the per-command cost, small enough that one
#: command never holds Redis for long.
MSET_CHUNK = 500


def queue_writes(pipe: Any, writes: Iterable[ReadModelWrite], keys_unique: bool = False) -> None:
    """Add whole-value writes (with their absolute expiry) to a sync or async pipeline.

    With ``keys_unique`` (no key appears twice, so order does not matter) the plain
    SETs go out as a few MSETs: redis-py's cost is per command (packing, reply
    parsing), and most of a batch's writes are plain profile and timeline values.
    """
    plain: dict[str, bytes] = {}
    for write in writes:
        is_plain_set = write.field is None and write.value is not None and write.expire_at is None
        if keys_unique and is_plain_set:
            plain[write.key] = write.value  # type: ignore[assignment]
            if len(plain) >= MSET_CHUNK:
                pipe.mset(plain)
                plain = {}
            continue
        if write.field is not None:
            pipe.hset(write.key, write.field, write.value)
        elif write.value is None:
            pipe.delete(write.key)
        elif write.expire_at is None:
            pipe.set(write.key, write.value)
        else:
            pipe.set(write.key, write.value, pxat=int(write.expire_at * 1000))
    if plain:
        pipe.mset(plain)
