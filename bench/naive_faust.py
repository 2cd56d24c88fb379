"""Variant (d): our logic as a Faust app written the way Faust's documentation shows it.

    python -m bench.naive_faust --group G --expect N --result FILE --ready FILE --done FILE
                                --state-dir DIR [--window SECONDS]

Same CLI and result file as ``bench.loops``. The app (id = the group, data dir
under the run dir, ``rocksdb://`` store, the bench's broker, acks=-1,
``OMNI_PRODUCER_LINGER_MS``, commit every ``OMNI_COMMIT_INTERVAL_SECONDS``) has
one agent over the 13 ``touchpoint.<channel>`` topics that, per event
(``async for key, value in stream.items()``): runs (b)'s work through
:class:`bench.perevent.EventWork`, sets ``customers[key]`` and
``timelines[key]`` (two Faust tables, raw bytes; each set is a changelog
record), ``await``s ``topic.send()`` per output and ``await``s one
``redis.asyncio`` command per read-model write. Faust's own transport and
stream settings: nothing of ``processors/transport.py`` (bulk delivery) or
``processors/batching.py``.

Window: 'ready' when partitions are assigned and the tables recovered (the
condition of the worker's ``/readyz``), polled every 10 ms by an ``app.task``;
if an event arrives first, it opens the window. 'Done' after N events (or
``--window`` seconds): the result file is written and the worker stops the way
an operator stops one, by SIGTERM to itself (Faust then flushes, commits and
closes its tables; none of that is timed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

import faust
import redis.asyncio as aioredis
from faust.types import StreamT, TopicT

from bench.loops import Clock, LoopResult, child_arguments, write_result
from bench.perevent import Consumed, EventWork
from processors.app import RAW_ARGS
from processors.domain.read_model import ReadModelWrite
from processors.projection import queue_writes
from processors.settings import Settings

READY_POLL_S = 0.01


class _OneByOne:
    """Looks like a Redis pipeline to ``queue_writes``, but keeps each command apart.

    The naive way writes the read model with one awaited command per key
    (``await redis.set(...)``), so each write is a round trip.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.calls: list[Awaitable[Any]] = []

    def set(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(self.client.set(*args, **kwargs))

    def hset(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(cast("Awaitable[Any]", self.client.hset(*args, **kwargs)))

    def delete(self, *args: Any) -> None:
        self.calls.append(self.client.delete(*args))


async def write_each(client: aioredis.Redis, writes: list[ReadModelWrite]) -> None:
    commands = _OneByOne(client)
    queue_writes(commands, writes)
    for call in commands.calls:
        await call


def is_ready(app: faust.App) -> bool:
    """Partitions assigned and tables recovered: the worker's ``/readyz`` condition."""
    try:
        return (
            not app.rebalancing
            and cast(Any, app.tables).recovery.completed.is_set()
            and bool(app.consumer.assignment())
        )
    except Exception:  # consumer not started yet
        return False


def build_app(settings: Settings, group: str, datadir: Path) -> faust.App:
    return faust.App(
        group,
        broker="kafka://" + settings.kafka_bootstrap.replace(",", ";"),
        store="rocksdb://",
        datadir=str(datadir),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        # Not needed here, and the default port could be taken by someone's worker.
        web_enabled=False,
        broker_commit_interval=settings.commit_interval_seconds,
        producer_linger_ms=settings.producer_linger_ms,
        producer_acks=-1,
        table_standby_replicas=0,
        # Bytes in and out, as in (b) and the worker: our code decodes.
        key_serializer="raw",
        value_serializer="raw",
    )


class NaiveFaust:
    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        self.args = args
        self.work = EventWork(settings)
        self.result = LoopResult("naive-faust")
        self.clock = Clock(args.ready)
        self.cpu_first = 0.0
        self.finished = False
        self.redis = aioredis.Redis.from_url(settings.redis_url.get_secret_value())
        app = self.app = build_app(settings, args.group, args.state_dir)
        self.customers = app.Table(
            "customers", partitions=settings.partitions, key_type=bytes, value_type=bytes
        )
        self.timelines = app.Table(
            "timelines", partitions=settings.partitions, key_type=bytes, value_type=bytes
        )
        self.outputs: dict[str, TopicT] = {
            name: self._topic(name) for name in self.work.output_topics()
        }
        touchpoints = app.topic(*settings.touchpoint_topics, **RAW_ARGS)
        app.agent(touchpoints, name="touchpoints")(self.agent)
        app.task(self.watch)

    def _topic(self, name: str) -> TopicT:
        return self.app.topic(name, **RAW_ARGS)

    async def agent(self, stream: StreamT[bytes]) -> None:
        try:
            async for key, value in stream.items():
                await self.process(stream, key, value)
                if self.finished:
                    break
        except Exception:
            self.result.error = traceback.format_exc()
            print(f"naive Faust agent failed:\n{self.result.error}", file=sys.stderr, flush=True)
            self.finish()
        await self.redis.aclose()

    async def process(self, stream: StreamT[bytes], key: bytes | None, value: bytes) -> None:
        if self.clock.assigned_at is None:
            self.clock.start()  # the first event came before the readiness poll saw it
        event = stream.current_event
        assert event is not None
        message = event.message
        record = Consumed(
            message.topic,
            message.partition,
            message.offset,
            key,
            value,
            message.timestamp,
        )
        outcome = self.work.handle(record, self.customers.get(key), self.timelines.get(key))
        if outcome.customer is not None:
            self.customers[key] = outcome.customer
        if outcome.timeline is not None:
            self.timelines[key] = outcome.timeline
        for output in outcome.outputs:
            topic = self.outputs.get(output.topic) or self._topic(output.topic)
            await topic.send(key=key, value=output.value)
        await write_each(self.redis, outcome.writes)
        self.work.counts.redis_keys += len(outcome.writes)
        result = self.result
        result.processed += 1
        if result.first_s is None:
            self.cpu_first = self.clock.mark_first(result)
        if (self.args.expect and result.processed >= self.args.expect) or self.clock.window_over(
            self.args.window
        ):
            self.finish()

    async def watch(self) -> None:
        """Open the window once the app can consume; close it if the window passes idle."""
        while not is_ready(self.app) and self.clock.assigned_at is None:
            await asyncio.sleep(READY_POLL_S)
        self.clock.start()
        while not self.finished:
            await asyncio.sleep(0.1)
            if self.result.processed and self.clock.window_over(self.args.window):
                self.finish()

    def finish(self) -> None:
        """N events processed (or the window is over, or an error): note it, then stop."""
        if self.finished:
            return
        self.finished = True
        if self.result.error is None:
            self.clock.mark_done(self.result, self.cpu_first, self.args.done)
        write_result(self.args.result, self.result, self.work.counts)
        os.kill(os.getpid(), signal.SIGTERM)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = child_arguments("python -m bench.naive_faust")
    parser.add_argument("--state-dir", type=Path, required=True, help="Faust data dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    args.state_dir.parent.mkdir(parents=True, exist_ok=True)
    variant = NaiveFaust(Settings(), args)
    worker = faust.Worker(variant.app, loglevel="INFO", redirect_stdouts=False)
    with contextlib.suppress(SystemExit):  # how a Faust worker ends, even a clean stop
        worker.execute_from_commandline()
    if not variant.finished:  # stopped from outside (SIGTERM) before N events
        write_result(args.result, variant.result, variant.work.counts)
    return 1 if variant.result.error else 0


if __name__ == "__main__":
    sys.exit(main())
