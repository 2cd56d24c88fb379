"""Faust's Monitor sensor without its per-event bookkeeping.

Faust calls the monitor for every message and event (counters per topic,
stream and task, a timing dict per event, a deque of run times) to feed its
web ``/stats`` page, which this worker does not serve: SREs read our own
Prometheus metrics (:mod:`processors.metrics`). The bench profile showed that
bookkeeping as a few per cent of the worker's CPU. Kept: the per-partition
"last event in" time, which Faust's slow-processing warnings read.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from faust.sensors import Monitor
from faust.types import TP, EventT, Message, StreamT

from processors.faust_adapter import note_stream_inbound


class LeanMonitor(Monitor):
    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        return None

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT, event: EventT
    ) -> dict[str, Any] | None:
        note_stream_inbound(self, tp, monotonic())
        return None

    def on_stream_event_out(
        self,
        tp: TP,
        offset: int,
        stream: StreamT,
        event: EventT,
        state: dict[str, Any] | None = None,
    ) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        return None
