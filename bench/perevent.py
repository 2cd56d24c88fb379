"""The work of variant (b), one event at a time, for the framework variants (d) and (e).

Pure: no Kafka, no Redis, no framework. :class:`EventWork` takes one consumed
record and the customer's two stored byte strings (the compact customer record
and the interaction timeline, as the worker's two tables keep them) and returns
what the framework must do: the new stored values, the output records and the
read-model writes. Each framework variant stores, sends and writes them its own
documented way (a Faust table and ``await topic.send``; Quix state and
``to_topic`` and a sink), so only the framework differs from (b).

Same steps as ``bench.loops.HandWork``: ``EventValidator`` -> ``Event.from_record``
-> ``step(state, [event], ctx, now, timeline)`` -> triggers to
``trigger.<channel>``, decisions to ``decision.log``, ``project()`` writes; a
rejected event or a failing ``step`` is dead-lettered, as the worker does.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.loops import Counts
from processors.app import step_context
from processors.deadletter import PROCESSING_ERROR, deadletter_record
from processors.domain.model import CustomerState, Event
from processors.domain.read_model import ReadModelWrite, project, timeline_write
from processors.domain.step import step
from processors.rulebook import load_ruleset
from processors.settings import TRIGGER_CHANNELS, Settings
from schemas import EventValidator, Rejection


@dataclass(slots=True)
class Output:
    """One record to produce, keyed by the customer id of the event it came from."""

    topic: str
    value: bytes


@dataclass(slots=True)
class Outcome:
    outputs: list[Output] = field(default_factory=list)
    writes: list[ReadModelWrite] = field(default_factory=list)
    #: The new stored customer record, when it changed (None: leave the store alone).
    customer: bytes | None = None
    #: The new stored timeline, when it changed.
    timeline: bytes | None = None


@dataclass(slots=True, frozen=True)
class Consumed:
    """Where a record came from (for the channel and a dead letter) and what it holds."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: The record's timestamp in epoch seconds (the event's ingestion time).
    timestamp_s: float


class EventWork:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.validator = EventValidator()
        self.ctx = step_context(
            settings, load_ruleset(Path(settings.rules_dir), settings.rule_delays())
        )
        self.channel_of = settings.touchpoint_topics
        self.counts = Counts()

    def handle(
        self, record: Consumed, stored: bytes | None, stored_timeline: bytes | None
    ) -> Outcome:
        now = time.time()
        channel = self.channel_of.get(record.topic, "")
        checked = self.validator.check(
            channel, record.key, record.value, self.settings.max_event_bytes
        )
        if isinstance(checked, Rejection):
            return self._deadletter(record, checked.reason, checked.errors)
        event = Event.from_record(checked, record.timestamp_s)
        try:
            state = None if stored is None else CustomerState.from_dict(orjson.loads(stored))
            timeline = [] if stored_timeline is None else orjson.loads(stored_timeline)
            state, out = step(state, [event], self.ctx, now, timeline)
        except Exception as exc:  # same isolation as the worker: one event, not the app
            return self._deadletter(
                record,
                PROCESSING_ERROR,
                (f"step failed: {exc!r}", *traceback.format_exception_only(exc)),
            )
        outcome = Outcome()
        if out.changed:
            outcome.customer = orjson.dumps(state)
            if out.timeline is not None and out.timeline != timeline:
                outcome.timeline = orjson.dumps(out.timeline)
        settings = self.settings
        outcome.outputs = [
            Output(settings.trigger_topic(trigger.channel), orjson.dumps(trigger.to_record()))
            for trigger in out.triggers
        ] + [
            Output(settings.decision_topic, orjson.dumps(decision.to_record()))
            for decision in out.decisions
        ]
        self.counts.triggers += len(out.triggers)
        self.counts.decisions += len(out.decisions)
        outcome.writes = project(state, now)
        if out.timeline:
            outcome.writes.append(timeline_write(state.customer_id, out.timeline))
        return outcome

    def _deadletter(self, record: Consumed, reason: str, errors: tuple[str, ...]) -> Outcome:
        value = deadletter_record(
            reason,
            errors,
            record.topic,
            record.partition,
            record.offset,
            record.value,
            self.settings.deadletter_raw_max_bytes,
        )
        self.counts.deadletters += 1
        return Outcome(outputs=[Output(self.settings.deadletter_topic, value)])

    def output_topics(self) -> list[str]:
        """Every topic :meth:`handle` may name in an :class:`Output`."""
        settings = self.settings
        return [
            *(settings.trigger_topic(channel) for channel in TRIGGER_CHANNELS),
            settings.decision_topic,
            settings.deadletter_topic,
        ]
