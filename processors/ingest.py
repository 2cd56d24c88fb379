"""The ingest step: validate each touchpoint message, dead-letter the bad ones, and
forward the good ones unchanged to the customer-events topic, keyed by customer id.

Everything per message is synchronous (validation, a librdkafka ``produce``); the
consumer flushes the producer before it commits the acked offsets
(:mod:`processors.transport`), so forwarding is at-least-once.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faust.types import EventT

from processors.deadletter import PROCESSING_ERROR, deadletter_key, deadletter_record
from processors.domain.identity import IDENTIFY, IdentityPolicy, split_key
from processors.identity import kind_header
from processors.metrics import Metrics
from processors.output import Headers, OutputProducer
from processors.settings import Settings
from schemas import UNIDENTIFIED, EventValidator, Rejection
from schemas.identity import identity_key
from schemas.messages import show

#: Headers of an identified event forwarded to its identifier's record.
IDENTIFY_HEADERS: Headers = kind_header(IDENTIFY)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Ingest:
    settings: Settings
    validator: EventValidator
    metrics: Metrics
    producer: OutputProducer
    customer_events_topic: str
    deadletter_topic: str
    identity: IdentityPolicy = field(default_factory=IdentityPolicy)

    def process(self, events: list[EventT]) -> None:
        channel_of: Callable[[str], str | None] = self.settings.touchpoint_topics.get
        send = self.producer.send
        forward_to = self.customer_events_topic
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
                    channel,
                    message.key,
                    message.value,
                    self.settings.max_event_bytes,
                    max_future_skew=self.settings.max_future_skew_seconds,
                )
                if isinstance(result, Rejection):
                    self._deadletter(event, result)
                    continue
                headers: Headers | None = None
                if "customer_id" not in result:
                    # An identified event: its identifier's record resolves it (the key is
                    # the identifier, checked by the validator).
                    blocked = self._blocked_identifier(result)
                    if blocked is not None:
                        self._deadletter(event, blocked)
                        continue
                    headers = IDENTIFY_HEADERS
                # The producer time travels with the event: it is what latency counts from.
                send(
                    forward_to,
                    message.key,
                    message.value,
                    timestamp_ms=int(message.timestamp * 1000),
                    headers=headers,
                )
                self.metrics.ingested(channel, result["type"]).inc()
            except Exception as exc:  # one bad message must never stop the partition
                # Where, the exception's class and the stack, not its text: that may quote
                # the message (personal data); the dead letter below keeps the record.
                log.error(
                    "Ingest failed for %s[%d]@%d with %s; dead-lettered (processing_error), "
                    "the partition goes on. A pipeline bug: report it with the dead letter. "
                    "Stack:\n%s",
                    message.topic,
                    message.partition,
                    message.offset,
                    type(exc).__name__,
                    "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
                )
                # The class and a short message only: an exception's text may quote data.
                self._deadletter(
                    event,
                    Rejection(
                        PROCESSING_ERROR,
                        (
                            f"value: the pipeline failed on this message ({type(exc).__name__}: "
                            f"{str(exc)[:200]}) — this is a pipeline bug: report it with this "
                            "record",
                        ),
                    ),
                )

    def _blocked_identifier(self, event: dict[str, Any]) -> Rejection | None:
        """An identified event keyed by a junk value (``unknown``, ``0``...) names nobody."""
        key = identity_key(event["identifiers"])
        identifier_type, value = split_key(key)
        if not self.identity.is_blocked(value):
            return None
        return Rejection(
            UNIDENTIFIED,
            (
                f"identifiers.{identifier_type}: {show(value)} is a blocked value "
                "(OMNI_IDENTITY_BLOCKED_VALUES: it names nobody) — send the customer_id or "
                "a real identifier, or do not send the event",
            ),
        )

    def _deadletter(self, event: EventT, rejection: Rejection) -> None:
        message = event.message
        self.producer.send(
            self.deadletter_topic,
            # A key over 1 KiB is hashed: librdkafka refuses a huge key (MSG_SIZE_TOO_LARGE).
            deadletter_key(message.key),
            deadletter_record(
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
        channel = self.settings.touchpoint_topics.get(message.topic) or "none"
        self.metrics.deadlettered_by_channel(channel, rejection.reason).inc()
