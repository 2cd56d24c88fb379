"""Publish a JSON Lines stream, keeping every rejected line with its reason."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from processors.settings import Settings
from producers.sdk import DeliveryHandler, EventRejected, TouchpointProducer


@dataclass
class PublishReport:
    accepted: int = 0
    #: (line number, reason code, errors), in line order.
    rejected: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)


def publish_lines(
    lines: Iterable[bytes],
    settings: Settings,
    on_line: Callable[[int], None] | None = None,
) -> PublishReport:
    """Validate and publish each non-blank line; a bad line never stops the others."""
    report = PublishReport()

    def delivery_of(line_no: int) -> DeliveryHandler:
        def delivered(error: KafkaError | None, _: Message) -> None:
            if error is None:
                report.accepted += 1
            else:
                report.rejected.append(
                    (
                        line_no,
                        "delivery_failed",
                        (f"Kafka did not take it: {error.str()}; publish this line again",),
                    )
                )

        return delivered

    with TouchpointProducer(settings) as producer:
        for line_no, line in enumerate(lines, start=1):
            if on_line is not None:
                on_line(len(line))
            text = line.strip()
            if not text:
                continue
            try:
                producer.publish(text, on_delivery=delivery_of(line_no))
            except EventRejected as rejected:
                report.rejected.append((line_no, rejected.reason, rejected.errors))
    report.rejected.sort()
    return report
