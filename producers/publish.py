"""Publish a JSON Lines stream, keeping every rejected line with its reason.

Both ``omni publish`` (the worker's CLI) and ``python -m producers publish`` (the
contract package alone) run :func:`publish_lines` and print its report the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from producers.config import ProducerTarget
from producers.sdk import DeliveryHandler, EventRejected, TouchpointProducer


def no_such_file(name: str) -> str:
    return f"No such file: {name}. Pass a JSON Lines file or - for stdin."


@dataclass
class PublishReport:
    accepted: int = 0
    #: (line number, reason code, errors), in line order.
    rejected: list[tuple[int, str, tuple[str, ...]]] = field(default_factory=list)

    def rejected_lines(self, mark: Callable[[str], str] = str) -> list[str]:
        """One line per rejected input line; ``mark`` styles the reason (colour in a terminal)."""
        return [
            f"line {line_no}: {mark(reason)}: " + "; ".join(errors)
            for line_no, reason, errors in self.rejected
        ]

    def summary(self) -> str:
        return f"accepted: {self.accepted}  rejected: {len(self.rejected)}"


def publish_lines(
    lines: Iterable[bytes],
    settings: ProducerTarget,
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
