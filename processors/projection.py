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
  agent re-projects the customer, and the read model converges;
- a write Redis refuses *for its key* (``WRONGTYPE``: something else stored another
  type there; an invalid expiry) is logged without its value, counted in
  ``omni_read_model_writes_dropped_total{reason}`` and dropped: retrying it could
  never succeed and would hold back every offset commit. A refused MSET chunk is
  redone as one SET per key, so only the refused key is dropped. Refusals that
  describe Redis rather than the key (OOM, READONLY, LOADING, MISCONF, ...) and
  connection errors and timeouts are retried as a whole, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

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
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        # No per-reply socket timeout: redis-py wraps every reply of a pipeline in an
        # asyncio timeout of its own (a measurable share of the worker's CPU); one
        # deadline for the whole pipeline (``_write``) finds a hung Redis as well.
        # ``client_options``: the TLS CA (``Settings.redis_client_options``); user and
        # password travel in the URL.
        self._redis = aioredis.Redis.from_url(
            redis_url, socket_connect_timeout=2.0, **(client_options or {})
        )
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

    def discard_pending(self) -> None:
        """Drop queued writes and their acks: their batches were discarded at a revocation.

        Every queued write belongs to an uncommitted batch (a batch is acked, and so
        committed, only once its writes are in Redis), which the partition's next owner
        processes and projects again.
        """
        self._pending = {}
        self._on_written = []
        self._oldest_pending = None

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
        """One pipeline; raises (to retry it all) unless every refusal is about its key."""
        # Coalesced per (key, field) in ``submit``: every key appears once.
        refused: list[tuple[ReadModelWrite, ResponseError]] = []
        one_by_one: list[ReadModelWrite] = []
        for covered, result in await self._execute(writes, keys_unique=True):
            if isinstance(result, ResponseError):
                if refuses_every_key(result):
                    raise result  # Redis itself is unwell: retry the whole batch later
                if len(covered) > 1:  # an MSET chunk: find its refused key(s) with SETs
                    one_by_one.extend(covered)
                else:
                    refused.extend((write, result) for write in covered)
        if one_by_one:
            for covered, result in await self._execute(one_by_one, keys_unique=False):
                if isinstance(result, ResponseError):
                    refused.extend((write, result) for write in covered)
        for _, error in refused:
            if refuses_every_key(error):
                raise error  # Redis itself is unwell: retry the whole batch later
        if refused:
            self._drop(refused)

    async def _execute(
        self, writes: Iterable[ReadModelWrite], keys_unique: bool
    ) -> list[tuple[list[ReadModelWrite], Any]]:
        """Run the writes in one pipeline: (writes of a command, its reply or error)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            commands = queue_writes(pipe, writes, keys_unique=keys_unique)
            # A timeout cancels the pipeline; redis-py then drops the connection.
            async with asyncio.timeout(self._write_timeout):
                # Per-command errors come back as values; connection errors still raise.
                results = await pipe.execute(raise_on_error=False)
        return list(zip(commands, results, strict=False))

    def _drop(self, refused: list[tuple[ReadModelWrite, ResponseError]]) -> None:
        for _, error in refused:
            self._metrics.read_model_writes_dropped(drop_reason(error)).inc()
        # Kinds of key and Redis's words only: a key names a customer (personal data, kept
        # out of logs at the default level) and a value holds customer data (never logged).
        kinds = Counter(f"{key_kind(write.key)}: {error}" for write, error in refused)
        log.warning(
            "Redis refused %d read-model write(s) for their key; dropped, not retried: %s. "
            "Remove or fix what holds those keys (an ACL that does not cover them? another "
            "writer? a wrong type?), then `omni redis rebuild` rewrites them; "
            "OMNI_LOG_LEVEL=debug logs the keys themselves.",
            len(refused),
            "; ".join(f"{count} x {kind}" for kind, count in kinds.most_common(5)),
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "Refused read-model keys: %s",
                "; ".join(
                    f"{write.key}{'' if write.field is None else f' field {write.field}'}: {error}"
                    for write, error in refused
                ),
            )


def key_kind(key: str) -> str:
    """``omni:profile:*`` for ``omni:profile:<customer id>``: what a key is, not whose."""
    prefix, sep, _ = key.rpartition(":")
    return f"{prefix}:*" if sep else "*"


#: Refusals that say something about Redis (memory, replica role, loading, persistence,
#: our credentials), not about one key: retried like a connection error. NOPERM is
#: not among them: an ACL refuses keys (or every key: then all writes are counted).
_EVERY_KEY_ERRORS = (OutOfMemoryError, ReadOnlyError, ClusterDownError, TryAgainError, AskError)
_EVERY_KEY_PREFIXES = (
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MISCONF",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "NOREPLICAS",
    "NOAUTH",
    "WRONGPASS",
)


def refuses_every_key(error: ResponseError) -> bool:
    """True when Redis would refuse any write now (retry later), False when it refused
    this write for its key or its arguments (retrying cannot help)."""
    status = getattr(error, "status_code", None) or str(error).split(" ", 1)[0]
    return isinstance(error, _EVERY_KEY_ERRORS) or status in _EVERY_KEY_PREFIXES


def drop_reason(error: ResponseError) -> str:
    """The low-cardinality ``reason`` label of a dropped write."""
    text = str(error)
    if text.startswith("WRONGTYPE"):
        return "wrong_type"
    if isinstance(error, NoPermissionError):  # an ACL that does not cover this key
        return "no_permission"
    if "expire" in text:
        return "invalid_expire"
    return "refused"


#: Keys per MSET: big enough to amortise the per-command cost, small enough that one
#: command never holds Redis for long.
MSET_CHUNK = 500
#: 9999-12-31T23:59:59Z: expiries beyond it (never stored by a bounded domain) are cut.
_MAX_EXPIRE = 253402300799.0


def queue_writes(
    pipe: Any, writes: Iterable[ReadModelWrite], keys_unique: bool = False
) -> list[list[ReadModelWrite]]:
    """Add whole-value writes (with their absolute expiry) to a sync or async pipeline.

    With ``keys_unique`` (no key appears twice, so order does not matter) the plain
    SETs go out as a few MSETs: redis-py's cost is per command (packing, reply
    parsing), and most of a batch's writes are plain profile and timeline values.

    Returns, per command queued, the writes it carries (an MSET carries many), so a
    caller can tell which writes a refused command held. An expiry at or before the
    epoch (Redis refuses a PXAT <= 0) becomes a DEL: such a key must not exist.
    """
    commands: list[list[ReadModelWrite]] = []
    plain: dict[str, bytes] = {}
    in_mset: list[ReadModelWrite] = []
    for write in writes:
        is_plain_set = write.field is None and write.value is not None and write.expire_at is None
        if keys_unique and is_plain_set:
            plain[write.key] = write.value  # type: ignore[assignment]
            in_mset.append(write)
            if len(plain) >= MSET_CHUNK:
                pipe.mset(plain)
                commands.append(in_mset)
                plain, in_mset = {}, []
            continue
        if write.field is not None:
            pipe.hset(write.key, write.field, write.value)
        elif write.value is None:
            pipe.delete(write.key)
        elif write.expire_at is None:
            pipe.set(write.key, write.value)
        elif not write.expire_at * 1000 >= 1:  # also NaN
            pipe.delete(write.key)
        else:
            pipe.set(write.key, write.value, pxat=int(min(write.expire_at, _MAX_EXPIRE) * 1000))
        commands.append([write])
    if plain:
        pipe.mset(plain)
        commands.append(in_mset)
    return commands
