"""Variants (a) and (b): hand-written confluent-kafka loops, run as their own process.

``python -m bench.loops ceiling|hand --group G --expect N --result FILE``
reads the touchpoint topics of the namespace in ``OMNI_*`` (same env as the
worker), processes until ``N`` events are done (or ``--window`` seconds have
passed, or SIGTERM when ``N`` is 0) and writes its timings to ``FILE`` as JSON.
A separate process keeps its CPU and peak RSS apart from the benchmark driver,
exactly like the worker's.

Both loops are at-least-once like the worker: a batch is fully processed
(outputs queued, Redis written) before its offsets can be committed, and every
commit first flushes the producer. Commits happen every
``OMNI_COMMIT_INTERVAL_SECONDS``, the worker's commit interval.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import orjson
import redis
from confluent_kafka import Consumer, Message, Producer
from rocksdict import Options, Rdict

from bench.kafkaio import loop_consumer, loop_producer, next_batch, send
from bench.procstats import cpu_seconds, peak_rss_mb
from processors.app import step_context
from processors.deadletter import PROCESSING_ERROR, deadletter_record
from processors.domain.model import CustomerState, Event, StepOutputs
from processors.domain.read_model import ReadModelWrite, project, timeline_write
from processors.domain.step import step
from processors.projection import queue_writes
from processors.rulebook import load_ruleset
from processors.settings import Settings
from schemas import EventValidator, Rejection


class Work(Protocol):
    def process(self, messages: list[Message]) -> None: ...


@dataclass
class Counts:
    triggers: int = 0
    decisions: int = 0
    deadletters: int = 0
    redis_keys: int = 0


class CeilingWork:
    """(a): decode each event and forward one small record; no state, no validation."""

    def __init__(self, producer: Producer, out_topic: str) -> None:
        self.producer = producer
        self.out_topic = out_topic
        self.counts = Counts()

    def process(self, messages: list[Message]) -> None:
        for message in messages:
            record = orjson.loads(message.value() or b"")
            # The source id lets the latency probe match the output to its event.
            send(
                self.producer,
                self.out_topic,
                orjson.dumps({"source_event_id": record["event_id"]}),
                message.key(),
            )


class HandWork:
    """(b): the worker's work without Faust, in one loop.

    Validate -> group by customer -> ``step`` over RocksDB state -> changelog,
    triggers, decisions -> one Redis pipeline per batch. The changelog record
    per changed customer is what the worker's table writes too, so state is
    as durable as the worker's.
    """

    def __init__(
        self, settings: Settings, producer: Producer, state_dir: Path, changelog_topic: str
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.changelog_topic = changelog_topic
        self.validator = EventValidator()
        self.ctx = step_context(
            settings, load_ruleset(Path(settings.rules_dir), settings.rule_delays())
        )
        self.channel_of = settings.touchpoint_topics
        # Raw mode: bytes in, bytes out, like Faust's rocksdict store.
        self.db = Rdict(str(state_dir), Options(raw_mode=True))
        self.redis = redis.Redis.from_url(settings.redis_url.get_secret_value())
        self.counts = Counts()

    def close(self) -> None:
        self.db.close()
        self.redis.close()

    def process(self, messages: list[Message]) -> None:
        now = time.time()
        by_customer: dict[bytes, list[tuple[Message, Event]]] = {}
        for message in messages:
            event = self._validate(message)
            if event is not None:
                by_customer.setdefault(message.key() or b"", []).append((message, event))
        writes: list[ReadModelWrite] = []
        for key, items in by_customer.items():
            writes.extend(self._customer(key, items, now))
        if writes:
            pipe = self.redis.pipeline(transaction=False)
            # One projection per customer per batch: no key twice, as in the worker.
            queue_writes(pipe, writes, keys_unique=True)
            pipe.execute()
            self.counts.redis_keys += len(writes)

    def _validate(self, message: Message) -> Event | None:
        topic = message.topic() or ""
        channel = self.channel_of.get(topic, "")
        result = self.validator.check(
            channel, message.key(), message.value(), self.settings.max_event_bytes
        )
        if isinstance(result, Rejection):
            self._deadletter(message, result.reason, result.errors)
            return None
        # The validator already parsed the value: no second orjson.loads.
        return Event.from_record(result, message.timestamp()[1] / 1000.0)

    def _customer(
        self, key: bytes, items: list[tuple[Message, Event]], now: float
    ) -> list[ReadModelWrite]:
        try:
            stored = self.db.get(key)
            state = None if stored is None else CustomerState.from_dict(orjson.loads(stored))
            timeline_key = b"\x00timeline:" + key
            stored_timeline = self.db.get(timeline_key)
            timeline = [] if stored_timeline is None else orjson.loads(stored_timeline)
            state, out = step(state, [event for _, event in items], self.ctx, now, timeline)
        except Exception as exc:  # same isolation as the worker: one customer, not the loop
            for message, _ in items:
                self._deadletter(
                    message,
                    PROCESSING_ERROR,
                    (f"step failed: {exc!r}", *traceback.format_exception_only(exc)),
                )
            return []
        if out.changed:
            value = orjson.dumps(state)
            self.db[key] = value
            send(self.producer, self.changelog_topic, value, key)
            if out.timeline is not None and out.timeline != timeline:
                # The worker keeps timelines in a second table: the same work here.
                encoded = orjson.dumps(out.timeline)
                self.db[timeline_key] = encoded
                send(self.producer, self.changelog_topic, encoded, timeline_key)
        self._send(key, out)
        writes = project(state, now)
        if out.timeline:
            writes.append(timeline_write(state.customer_id, out.timeline))
        return writes

    def _send(self, key: bytes, out: StepOutputs) -> None:
        settings = self.settings
        for trigger in out.triggers:
            send(
                self.producer,
                settings.trigger_topic(trigger.channel),
                orjson.dumps(trigger.to_record()),
                key,
            )
        for decision in out.decisions:
            send(self.producer, settings.decision_topic, orjson.dumps(decision.to_record()), key)
        self.counts.triggers += len(out.triggers)
        self.counts.decisions += len(out.decisions)

    def _deadletter(self, message: Message, reason: str, errors: tuple[str, ...]) -> None:
        value = deadletter_record(
            reason,
            errors,
            message.topic() or "",
            message.partition() or 0,
            message.offset() or 0,
            message.value(),
            self.settings.deadletter_raw_max_bytes,
        )
        send(self.producer, self.settings.deadletter_topic, value, message.key())
        self.counts.deadletters += 1


@dataclass
class LoopResult:
    """Timings on this process's monotonic clock, relative to partition assignment."""

    variant: str
    processed: int = 0
    #: Seconds from assignment to the first processed batch and to the N-th event.
    first_s: float | None = None
    done_s: float | None = None
    cpu_s: float | None = None
    cpu_first_to_done_s: float | None = None
    peak_rss_mb: float = 0.0
    triggers: int = 0
    decisions: int = 0
    deadletters: int = 0
    redis_keys: int = 0
    error: str | None = None


class Clock:
    """Wall and CPU time at assignment (the start of the measured window)."""

    def __init__(self, ready_file: Path | None) -> None:
        self.ready_file = ready_file
        self.assigned_at: float | None = None
        self.cpu_at_assign = 0.0

    def on_assign(self, _consumer: Consumer, _partitions: list[Any]) -> None:
        self.start()

    def start(self) -> None:
        """Open the window (once): the variant can consume from here on."""
        if self.assigned_at is None:
            self.assigned_at = time.monotonic()
            self.cpu_at_assign = cpu_seconds()
            if self.ready_file is not None:
                self.ready_file.write_text("ready\n")

    def since_assign(self) -> float:
        return time.monotonic() - (self.assigned_at or time.monotonic())

    def window_over(self, window: float) -> bool:
        """``window`` seconds (0: no limit) have passed since the window opened."""
        return bool(window) and self.assigned_at is not None and self.since_assign() >= window

    def mark_first(self, result: LoopResult) -> float:
        """Note the first processed event or batch; returns the CPU seconds at that moment."""
        result.first_s = self.since_assign()
        return cpu_seconds()

    def mark_done(self, result: LoopResult, cpu_first: float, done_file: Path | None) -> None:
        """Close the window: N events processed (or the window is over)."""
        result.done_s = self.since_assign()
        cpu_now = cpu_seconds()
        result.cpu_s = cpu_now - self.cpu_at_assign
        result.cpu_first_to_done_s = cpu_now - cpu_first
        if done_file is not None:
            done_file.write_text("done\n")


class Committer:
    """Flush the outputs, then commit what was consumed, at most every ``interval`` s."""

    def __init__(self, consumer: Consumer, producer: Producer, interval: float) -> None:
        self.consumer = consumer
        self.producer = producer
        self.interval = interval
        self.pending = False
        self.last = time.monotonic()

    def maybe(self, force: bool = False) -> None:
        if not self.pending or (not force and time.monotonic() - self.last < self.interval):
            return
        remaining = self.producer.flush(60)
        if remaining:
            raise RuntimeError(f"{remaining} output records not delivered within 60 s")
        self.consumer.commit(asynchronous=False)
        self.pending = False
        self.last = time.monotonic()


@dataclass
class Limits:
    #: Stop after this many events (0: run until SIGTERM).
    expect: int
    batch_size: int
    commit_interval: float
    #: Written when ``expect`` events are done, so the driver can close its windows.
    done_file: Path | None = None
    #: Stop after this many seconds from assignment even if ``expect`` is not reached (0: no
    #: limit); the result then covers the events processed so far (``processed``).
    window: float = 0.0


def run_loop(
    work: Work,
    consumer: Consumer,
    producer: Producer,
    clock: Clock,
    result: LoopResult,
    limits: Limits,
    stop: threading.Event,
) -> None:
    committer = Committer(consumer, producer, limits.commit_interval)
    cpu_first = 0.0
    expect, done_file = limits.expect, limits.done_file
    while not stop.is_set():
        messages = next_batch(consumer, limits.batch_size, timeout=0.2)
        if messages:
            work.process(messages)
            producer.poll(0)
            result.processed += len(messages)
            committer.pending = True
            if result.first_s is None:
                cpu_first = clock.mark_first(result)
        if (expect and result.processed >= expect) or (
            result.processed and clock.window_over(limits.window)
        ):
            # Stop the clock where the worker's counter would say "processed":
            # outputs queued, state and Redis written; the final flush is not timed.
            clock.mark_done(result, cpu_first, done_file)
            break
        committer.maybe()
    committer.maybe(force=True)


def child_arguments(prog: str) -> argparse.ArgumentParser:
    """The command line every throughput child (b..e) shares with the harness."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--group", required=True, help="consumer group")
    parser.add_argument("--expect", type=int, default=0, help="stop after N events (0: SIGTERM)")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--ready", type=Path, help="file written once it can consume")
    parser.add_argument("--done", type=Path, help="file written once N events are processed")
    parser.add_argument(
        "--window", type=float, default=0.0, help="stop after this many seconds (0: no limit)"
    )
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = child_arguments("python -m bench.loops")
    parser.add_argument("variant", choices=["ceiling", "hand"])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--out-topic", help="(ceiling) where the records go")
    parser.add_argument("--changelog-topic", help="(hand) state changelog topic")
    parser.add_argument("--state-dir", type=Path, help="(hand) RocksDB directory")
    return parser.parse_args(argv)


def _build_work(
    args: argparse.Namespace, settings: Settings, producer: Producer
) -> CeilingWork | HandWork:
    if args.variant == "ceiling":
        return CeilingWork(producer, args.out_topic)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    return HandWork(settings, producer, args.state_dir, args.changelog_topic)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = Settings()
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    result = LoopResult(args.variant)
    clock = Clock(args.ready)
    producer = loop_producer(settings)
    work = _build_work(args, settings, producer)
    consumer = loop_consumer(settings, args.group, on_assign=clock.on_assign)
    try:
        limits = Limits(
            args.expect, args.batch, settings.commit_interval_seconds, args.done, args.window
        )
        run_loop(work, consumer, producer, clock, result, limits, stop)
    except Exception:
        result.error = traceback.format_exc()
    finally:
        consumer.close()
        if isinstance(work, HandWork):
            work.close()
    write_result(args.result, result, work.counts)
    return 1 if result.error else 0


def write_result(path: Path, result: LoopResult, counts: Counts) -> None:
    """The result file the driver reads (``run_loop_variant``): timings, counts, peak RSS."""
    result.triggers, result.decisions = counts.triggers, counts.decisions
    result.deadletters, result.redis_keys = counts.deadletters, counts.redis_keys
    result.peak_rss_mb = peak_rss_mb()
    path.write_bytes(orjson.dumps(asdict(result)))


if __name__ == "__main__":
    sys.exit(main())
