"""The ingest step: validate each touchpoint message, dead-letter the bad ones, and
forward the good ones unchanged to the customer-events topic, keyed by customer id.

Everything per message is synchronous (validation, ``send_soon``); Faust's commit
flushes the producer before it commits the acked offsets, so forwarding is
at-least-once.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from faust.types import EventT, TopicT

from processors.deadletter import PROCESSING_ERROR, deadletter_record
from processors.metrics import Metrics
from processors.settings import Settings
from schemas import EventValidator, Rejection

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Ingest:
    settings: Settings
    validator: EventValidator
    metrics: Metrics
    customer_events: TopicT
    deadletters: TopicT

    def process(self, events: list[EventT]) -> None:
        channel_of: Callable[[str], str | None] = self.settings.touchpoint_topics.get
        for event in events:
            message = event.message
            try:
                channel = channel_of(message.topic)
                if channel is None:  # a topic we subscribed to but do not know: config bug
                    self._deadletter(
                        event,
                        Rejection(
                            "channel_mismatch",
                            (
                                f"topic {message.topic!r} is not a touchpoint.<channel> topic; "
                                "publish to one of the contract topics",
                            ),
                        ),
                    )
                    continue
                result = self.validator.check(
                    channel, message.key, message.value, self.settings.max_event_bytes
                )
                if isinstance(result, Rejection):
                    self._deadletter(event, result)
                    continue
                self.customer_events.send_soon(
                    key=message.key, value=message.value, timestamp=message.timestamp
                )
                self.metrics.ingested(channel, result["type"]).inc()
            except Exception as exc:  # one bad message must never stop the partition
                log.exception(
                    "Ingest failed for %s[%d]@%d", message.topic, message.partition, message.offset
                )
                self._deadletter(
                    event,
                    Rejection(
                        PROCESSING_ERROR,
                        (
                            f"the pipeline failed on this message ({type(exc).__name__}: {exc}); "
                            "this is a pipeline bug: report it with this record",
                            *traceback.format_exception_only(exc),
                        ),
                    ),
                )

    def _deadletter(self, event: EventT, rejection: Rejection) -> None:
        message = event.message
        self.deadletters.send_soon(
            key=message.key,
            value=deadletter_record(
                rejection.reason,
                rejection.errors,
                message.topic,
                message.partition,
                message.offset,
                message.value,
                self.settings.deadletter_raw_max_bytes,
            ),
        )
        self.metrics.deadlettered(rejection.reason).inc()
