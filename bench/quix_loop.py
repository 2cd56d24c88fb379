"""Variant (e): our logic as a Quix Streams application, the way Quix's docs show it.

    .cache/bench-venv-quix/bin/python -m bench.quix_loop --group G --expect N
        --result FILE --ready FILE --done FILE --state-dir DIR [--window SECONDS]

Runs in its own venv (``bench/quixenv.py``: quixstreams pins older
confluent-kafka and pydantic than ``.venv``), with the same CLI and result file
as ``bench.loops``. The pipeline, as a ``StreamingDataFrame``:

- the 13 ``touchpoint.<channel>`` topics (bytes deserializers), one
  ``app.dataframe`` each, joined with ``concat`` so they share one state store,
  per customer key (all are keyed by customer id with the same partitioner);
- ``apply(..., stateful=True, metadata=True)``: (b)'s work for one event through
  :class:`bench.perevent.EventWork`, with ``state.get_bytes/set_bytes`` holding
  the customer record and the timeline (Quix writes the changelog);
- a branch ``apply(outputs, expand=True).to_topic(route)``: triggers, decisions
  and dead letters, each to its topic (a topic callback; a serializer that
  takes the record's bytes);
- a branch ``apply(writes, expand=True).sink(ReadModelSink)``: a
  ``BatchingSink`` that writes each checkpoint's read-model writes in one
  Redis pipeline (Quix's own ``RedisSink`` only SETs whole values; ours need
  expiries, HSETs and DELs).

``Application``: the bench's broker, consumer group = ``--group``,
``auto_offset_reset='earliest'``, ``commit_interval`` =
``OMNI_COMMIT_INTERVAL_SECONDS``, ``state_dir`` under the run dir, and the
producer settings of the other variants (acks=all, linger
``OMNI_PRODUCER_LINGER_MS``, no idempotence, murmur2 partitioner).

Two departures from the plain docs, both because Quix 3.28 leaves no other way:
Quix names a concatenated stream by joining its topics' names, and its
changelog topic after the stream, which for 13 topics is far over Kafka's 249
characters (the broker refuses it), so :class:`ShortStreamIds` (passed as
``topic_manager``) names it by a digest instead; and Quix has no public
on-assign hook, so :class:`BenchApplication` extends ``_on_assign`` to open the
window at assignment, where the loops open theirs (Quix then recovers the empty
changelog inside the window).

'Done' = the first checkpoint after N events were processed (Quix's
``on_message_processed``): its sink flush has written their read model, as (b)
has when it counts a batch; then the app stops (final producer flush, changelog
and offset commit: not timed).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from quixstreams import Application, State, message_context
from quixstreams.models import Topic
from quixstreams.models.serializers import SerializationContext, Serializer
from quixstreams.models.topics import TopicAdmin, TopicManager
from quixstreams.sinks import BatchingSink, SinkBatch

from bench.loops import Clock, LoopResult, child_arguments, write_result
from bench.perevent import Consumed, EventWork, Outcome, Output
from processors.domain.read_model import ReadModelWrite
from processors.projection import queue_writes
from processors.settings import Settings

CUSTOMER = "customer"
TIMELINE = "timeline"
#: A stream id this long or longer (13 joined topic names) is replaced by a digest.
MAX_STREAM_ID = 100


class ShortStreamIds(TopicManager):
    """Names a stream of many concatenated topics by a digest of their names.

    Quix joins the topics' names into the stream id and puts the stream id into
    the changelog topic's name; 13 touchpoint topics make that name too long
    for Kafka. The digest is stable, so the same topics find the same changelog.
    """

    def stream_id_from_topics(self, topics: Sequence[Topic]) -> str:
        stream_id: str = super().stream_id_from_topics(topics)
        if len(stream_id) < MAX_STREAM_ID:
            return stream_id
        return "concat-" + hashlib.sha256(stream_id.encode()).hexdigest()[:16]


class BenchApplication(Application):
    """``Application`` that tells the bench when partitions are assigned."""

    on_assigned: Callable[[], None] | None = None

    def _on_assign(self, consumer: Any, topic_partitions: list[Any]) -> None:
        super()._on_assign(consumer, topic_partitions)
        if topic_partitions and self.on_assigned is not None:
            self.on_assigned()


class OutputSerializer(Serializer):
    """An :class:`Output`'s bytes: the route picked its topic, the value is ready-made."""

    def __call__(self, value: Output, ctx: SerializationContext) -> bytes:
        return value.value


class ReadModelSink(BatchingSink):
    """Read-model writes, batched by Quix per topic partition; one pipeline per checkpoint."""

    def __init__(self, url: str, on_flushed: Callable[[int], None]) -> None:
        super().__init__()
        self.url = url
        self.on_flushed = on_flushed
        self.client: redis.Redis | None = None
        self.pipe: Any = None

    def setup(self) -> None:
        self.client = redis.Redis.from_url(self.url)
        self.client.ping()

    def write(self, batch: SinkBatch) -> None:
        writes: list[ReadModelWrite] = [item.value for item in batch]
        queue_writes(self.pipe, writes)

    def flush(self) -> None:
        """All topic partitions' batches (``write`` each) into one pipeline, then execute."""
        assert self.client is not None
        self.pipe = self.client.pipeline(transaction=False)
        try:
            super().flush()
            written = len(self.pipe)
            if written:
                self.pipe.execute()
        finally:
            self.pipe = None
        self.on_flushed(written)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class QuixVariant:
    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        self.args = args
        self.work = EventWork(settings)
        self.result = LoopResult("quix")
        self.clock = Clock(args.ready)
        self.cpu_first = 0.0
        self.reached = False
        self.finished = False
        broker = settings.kafka_bootstrap
        app = self.app = BenchApplication(
            broker_address=broker,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            commit_interval=settings.commit_interval_seconds,
            state_dir=args.state_dir,
            # The other variants' producer: acks=all, linger, no idempotence, murmur2.
            producer_extra_config={
                "acks": "all",
                "linger.ms": settings.producer_linger_ms,
                "enable.idempotence": False,
                "partitioner": "murmur2_random",
            },
            on_message_processed=self.on_processed,
            topic_manager=ShortStreamIds(TopicAdmin(broker_address=broker), args.group),
        )
        app.on_assigned = self.clock.start
        self.sink = ReadModelSink(settings.redis_url.get_secret_value(), self.on_flushed)
        self.serializer = OutputSerializer()
        self.outputs = {name: self._output_topic(name) for name in self.work.output_topics()}
        inputs = [
            app.dataframe(app.topic(name, key_deserializer="bytes", value_deserializer="bytes"))
            for name in settings.touchpoint_topics
        ]
        sdf = functools.reduce(lambda left, right: left.concat(right), inputs)
        outcomes = sdf.apply(self.process, stateful=True, metadata=True)
        outcomes.apply(lambda outcome: outcome.outputs, expand=True).to_topic(self.route)
        outcomes.apply(lambda outcome: outcome.writes, expand=True).sink(self.sink)

    def _output_topic(self, name: str) -> Topic:
        return self.app.topic(name, key_serializer="bytes", value_serializer=self.serializer)

    def process(
        self, value: bytes, key: bytes, timestamp: int, _headers: Any, state: State
    ) -> Outcome:
        context = message_context()
        record = Consumed(
            context.topic, context.partition, context.offset, key, value, timestamp / 1000.0
        )
        outcome = self.work.handle(record, state.get_bytes(CUSTOMER), state.get_bytes(TIMELINE))
        if outcome.customer is not None:
            state.set_bytes(CUSTOMER, outcome.customer)
        if outcome.timeline is not None:
            state.set_bytes(TIMELINE, outcome.timeline)
        return outcome

    def route(self, value: Output, _key: Any, _timestamp: int, _headers: Any) -> Topic:
        return self.outputs.get(value.topic) or self._output_topic(value.topic)

    def on_processed(self, _topic: str, _partition: int, _offset: int) -> None:
        result = self.result
        result.processed += 1
        if result.first_s is None:
            self.cpu_first = self.clock.mark_first(result)
        if not self.reached and (
            (self.args.expect and result.processed >= self.args.expect)
            or self.clock.window_over(self.args.window)
        ):
            self.reached = True
            self.app.stop()  # the run loop ends after this message, with a final checkpoint

    def on_flushed(self, written: int) -> None:
        self.work.counts.redis_keys += written
        if self.reached and not self.finished:
            self.finished = True
            self.clock.mark_done(self.result, self.cpu_first, self.args.done)

    def run(self) -> None:
        try:
            self.app.run()
        except Exception:
            self.result.error = traceback.format_exc()
            print(f"Quix app failed:\n{self.result.error}", file=sys.stderr, flush=True)
        finally:
            self.sink.close()
        if self.reached and not self.finished and self.result.error is None:
            # No sink flush came after the N-th event (nothing to write): close the window now.
            self.finished = True
            self.clock.mark_done(self.result, self.cpu_first, self.args.done)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = child_arguments("python -m bench.quix_loop")
    parser.add_argument("--state-dir", type=Path, required=True, help="Quix state dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    variant = QuixVariant(Settings(), args)
    variant.run()
    write_result(args.result, variant.result, variant.work.counts)
    return 1 if variant.result.error else 0


if __name__ == "__main__":
    sys.exit(main())
