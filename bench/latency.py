"""Event-to-trigger latency under a fixed open-loop rate (story S5 at scale).

An idle processor (the worker, or a hand-written loop) gets ``rate`` roaming
events per second: each is a ``telco.network_attached`` in a country the
customer (home country known) has never been to, so each must yield one
``roaming_offer`` on ``trigger.sms`` (the ceiling loop forwards one record per
event instead). A probe consumer of that topic records when each trigger
arrives; latency = arrival wall time - the event's *scheduled* send time.

Using the schedule rather than the actual send time means a generator that
falls behind (GC, a busy core) does not hide the delay from the result
(no coordinated omission). Events go out with the SDK's producer settings
(acks=all, idempotent, lz4, linger 5 ms), like a channel backend's. The
generator wakes at most once per millisecond and sends every event due by then
in one go, so one Python thread keeps 5,000+ events/s on schedule.

A processor that cannot sustain the rate shows a rising per-second timeline
or missing triggers: :func:`saturated` says so. Once the oldest unanswered
event has waited ``CUT_AFTER_S`` the generator stops early, so a saturated run
does not go on growing a backlog the drain would then wait for.
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from hdrh.histogram import HdrHistogram

from bench.kafkaio import loop_consumer, next_batch, send
from bench.procs import Child, Worker, wait_until
from bench.stack import BenchStack
from bench.throughput import (
    VARIANTS,
    ceiling_topic,
    extra_topics,
    loop_argv,
    loop_interpreter,
    marker_reached,
)
from bench.workload import LANGUAGES, TRAVEL_COUNTRIES, customer_id, home_country, rfc3339_now
from processors.settings import Settings
from producers.sdk import PRODUCER_CONFIG

#: After the last send, wait this long for stragglers before counting them missing.
DRAIN_S = 15.0
#: The generator sleeps at least this long between batches: at high rates each wake-up
#: sends every event due by then (the schedule, and latency's start, stay per event).
TICK_S = 0.001
#: A send more than this behind its schedule counts as late (the generator, not the
#: processor, fell behind; latency still counts from the schedule).
LATE_S = 0.005
#: Stop sending (after the warm-up) once a measured event has waited this long for its
#: trigger: far past any target, the processor is saturated, more would only grow its backlog.
CUT_AFTER_S = 10.0
#: Saturated, rising: over the last quarter of the seconds the (per-second median) latency
#: is above this many times the first quarter's, and SATURATION_MIN_RISE_MS higher (so
#: ms-level noise of a fast processor does not count).
SATURATION_RISE = 3.0
SATURATION_MIN_RISE_MS = 20.0
#: Saturated, standing backlog: the last quarter's latency is still above this. A processor
#: with headroom drains a warm-up backlog within seconds; one at its limit keeps it.
STANDING_BACKLOG_MS = 1000.0
#: ``--rates`` token for half of the worker's (c's) median throughput in the same run.
HALF = "half"
#: Roaming events per latency customer at most (distinct countries, none the home).
#: New countries per customer: at most the contact policy's daily cap (3), so every
#: event's offer is emitted rather than suppressed ``frequency_cap``.
COUNTRIES_PER_CUSTOMER = min(3, len(TRAVEL_COUNTRIES) - 1)


@dataclass
class Plan:
    rate: float
    seconds: float
    warmup: float

    @property
    def total(self) -> int:
        return math.ceil(self.rate * (self.warmup + self.seconds))

    @property
    def customers(self) -> int:
        # Enough customers that each gets only a few events, spread over partitions.
        return max(math.ceil(self.total / COUNTRIES_PER_CUSTOMER), min(self.total, 2000))


@dataclass
class LatencyResult:
    variant: str
    name: str
    rate: float
    seconds: float
    measured: int
    received: int
    missing: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    #: How far the generator fell behind its schedule at worst, and how often > 5 ms.
    send_lag_max_ms: float
    late_sends: int
    #: Per second of the schedule: [second, median ms, max ms]; a rising line means the
    #: processor fell behind the rate (saturated), a flat one a steady delay.
    timeline: list[tuple[int, float, float]]
    #: Seconds planned (``seconds`` is what was sent: less when the run was cut).
    planned_seconds: float = 0.0
    #: Seconds after the warm-up at which the generator stopped because of CUT_AFTER_S.
    cut_at_s: float | None = None
    saturated: bool = False
    #: Why it is saturated (:func:`saturation`), "" when it kept up.
    saturation: str = ""
    #: ``HALF`` when the rate was half of c's throughput in this run, else "".
    rate_label: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def saturation(timeline: list[Any], missing: int, cut: bool = False) -> str:
    """Why the processor could not keep up with the rate, or "" if it did.

    "missing" (triggers still missing after the drain), "cut" (the generator stopped
    early), "rising" or "backlog" (see SATURATION_RISE, STANDING_BACKLOG_MS). ``timeline``
    rows are ``(second, median ms, max ms)``; its first and last quarter (at least one
    second each) are compared, by the median of their per-second medians.
    """
    if cut:
        return "cut"
    if missing > 0:
        return "missing"
    if not timeline:
        return ""
    quarter = max(1, len(timeline) // 4)
    first = statistics.median(float(row[1]) for row in timeline[:quarter])
    last = statistics.median(float(row[1]) for row in timeline[-quarter:])
    rise = last - first
    if len(timeline) >= 2 and last > SATURATION_RISE * first and rise > SATURATION_MIN_RISE_MS:
        return "rising"
    if last > STANDING_BACKLOG_MS:
        return "backlog"
    return ""


def saturated(timeline: list[Any], missing: int, cut: bool = False) -> bool:
    return bool(saturation(timeline, missing, cut))


def parse_rates(text: str) -> list[str]:
    """``"1000,5000,half"`` -> ``["1000", "5000", "half"]``; ValueError on anything else."""
    tokens = [t.strip().lower() for t in text.split(",") if t.strip()]
    for token in tokens:
        if token == HALF:
            continue
        try:
            value = float(token)
        except ValueError:
            raise ValueError(f"rate {token!r}: a number of events/s or {HALF!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"rate {token!r}: must be > 0")
    return tokens


def resolve_rates(
    tokens: list[str], worker_events_per_s: float | None
) -> tuple[list[tuple[float, str]], list[str]]:
    """``(rate, label)`` pairs to run, and notes; ``half`` needs c's throughput of this run."""
    rates: list[tuple[float, str]] = []
    notes: list[str] = []
    for token in tokens:
        if token != HALF:
            rates.append((float(token), ""))
        elif worker_events_per_s and worker_events_per_s > 0:
            rates.append((float(max(1, round(worker_events_per_s / 2))), HALF))
        else:
            notes.append(
                "latency at 'half' of c's max skipped: c's throughput was not measured in "
                "this run (add c to --variants)"
            )
    return rates, notes


def latency_customer(index: int) -> str:
    return f"lat-{customer_id(index)}"


def _event(
    event_id: str, customer: str, type_: str, channel: str, payload: dict[str, Any]
) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "type": type_,
            "occurred_at": rfc3339_now(),
            "channel": channel,
            "customer_id": customer,
            "payload": payload,
        }
    )


def profile_messages(plan: Plan) -> Iterator[tuple[bytes, bytes]]:
    for index in range(plan.customers):
        home, customer = home_country(index), latency_customer(index)
        yield (
            customer.encode(),
            _event(
                f"lat-profile-{index}",
                customer,
                "profile.updated",
                "telco",
                {"home_country": home, "language": LANGUAGES[home]},
            ),
        )


def roaming_message(plan: Plan, seq: int) -> tuple[str, bytes, bytes]:
    """Event ``seq``: the next new foreign country of customer ``seq % customers``."""
    index, visit = seq % plan.customers, seq // plan.customers
    home, customer = home_country(index), latency_customer(index)
    country = [c for c in TRAVEL_COUNTRIES if c != home][visit]
    event_id = f"lat-{seq}"
    value = _event(
        event_id,
        customer,
        "telco.network_attached",
        "telco",
        {"country": country, "network": f"{country}-1"},
    )
    return event_id, customer.encode(), value


class TriggerProbe(threading.Thread):
    """Reads the trigger topic and notes when each awaited source event's trigger arrived."""

    def __init__(self, settings: Settings, topic: str, sent: dict[str, float]) -> None:
        super().__init__(name="trigger-probe", daemon=True)
        self.sent = sent
        self.received: dict[str, float] = {}
        self.assigned = threading.Event()
        self._stop_flag = threading.Event()
        self._consumer = loop_consumer(
            settings,
            f"probe-{uuid.uuid4().hex[:8]}",
            on_assign=lambda *_: self.assigned.set(),
            topics=[topic],
        )

    def run(self) -> None:
        while not self._stop_flag.is_set():
            batch = next_batch(self._consumer, 500, timeout=0.1)
            arrived = time.time()
            for message in batch:
                source = orjson.loads(message.value() or b"{}").get("source_event_id")
                if source in self.sent and source not in self.received:
                    self.received[source] = arrived
        self._consumer.close()

    def close(self) -> None:
        self._stop_flag.set()
        self.join(10)


@dataclass
class Played:
    max_lag_ms: float = 0.0
    late: int = 0
    measured: list[str] = field(default_factory=list)
    #: Seconds after the warm-up at which the run was cut (CUT_AFTER_S), None if not.
    cut_at_s: float | None = None


def play(
    producer: Producer,
    topic: str,
    plan: Plan,
    sent: dict[str, float],
    answered: Mapping[str, float] | None = None,
) -> Played:
    """Send ``plan.total`` events on schedule, a batch per wake-up; stop early if saturated.

    ``answered`` (the probe's arrivals, filled by its thread) lets the generator cut
    the run once a measured event has waited CUT_AFTER_S for its trigger.
    """
    wall_offset = time.time() - time.monotonic()
    start = time.monotonic() + 0.05
    warm = math.ceil(plan.rate * plan.warmup)
    played = Played()
    max_lag, oldest, seq = 0.0, 0, 0
    next_check = start + plan.warmup + 1.0
    while seq < plan.total:
        now = time.monotonic()
        wait = start + seq / plan.rate - now
        if wait > 0:
            time.sleep(max(wait, TICK_S))
            now = time.monotonic()
        while seq < plan.total and (due := start + seq / plan.rate) <= now:
            event_id, key, value = roaming_message(plan, seq)
            sent[event_id] = due + wall_offset  # before produce: the probe may see it at once
            send(producer, topic, value, key)
            lag = time.monotonic() - due
            max_lag = max(max_lag, lag)
            played.late += lag > LATE_S
            if seq >= warm:
                played.measured.append(event_id)
            seq += 1
        producer.poll(0)
        if answered is not None and now >= next_check:
            next_check = now + 0.5
            measured = played.measured
            while oldest < len(measured) and measured[oldest] in answered:
                oldest += 1
            if oldest < len(measured) and now + wall_offset - sent[measured[oldest]] > CUT_AFTER_S:
                played.cut_at_s = round(len(measured) / plan.rate, 1)
                break
    producer.flush(30)
    played.max_lag_ms = max_lag * 1000.0
    return played


def summarize(
    variant: str,
    plan: Plan,
    sent: dict[str, float],
    received: dict[str, float],
    played: Played,
) -> LatencyResult:
    histogram = HdrHistogram(1, 120_000_000, 3)  # 1 µs .. 120 s, 3 significant digits
    by_second: dict[int, list[float]] = {}
    measured = played.measured
    start = sent[measured[0]] if measured else 0.0
    for event_id in measured:
        arrived = received.get(event_id)
        if arrived is not None:
            latency = arrived - sent[event_id]
            histogram.record_value(max(1, int(latency * 1e6)))
            by_second.setdefault(int(sent[event_id] - start), []).append(latency * 1000.0)
    count = histogram.get_total_count()
    timeline = [
        (second, round(statistics.median(values), 1), round(max(values), 1))
        for second, values in sorted(by_second.items())
    ]

    def ms(percentile: float) -> float:
        return histogram.get_value_at_percentile(percentile) / 1000.0 if count else math.nan

    reason = saturation(timeline, len(measured) - count, played.cut_at_s is not None)

    return LatencyResult(
        variant,
        VARIANTS[variant],
        plan.rate,
        plan.seconds if played.cut_at_s is None else played.cut_at_s,
        len(measured),
        count,
        len(measured) - count,
        ms(50),
        ms(90),
        ms(99),
        ms(99.9),
        histogram.get_max_value() / 1000.0 if count else math.nan,
        histogram.get_mean_value() / 1000.0 if count else math.nan,
        played.max_lag_ms,
        played.late,
        timeline,
        planned_seconds=plan.seconds,
        cut_at_s=played.cut_at_s,
        saturated=bool(reason),
        saturation=reason,
    )


def run_latency(stack: BenchStack, variant: str, plan: Plan, batch: int) -> LatencyResult:
    # The latency of the pipeline, not the contact policy's deferrals: no quiet hours
    # (a run at night would defer every offer), and at most 3 offers per customer.
    settings = stack.settings(f"lat{variant}", quiet_hours_start="00:00", quiet_hours_end="00:00")
    stack.create_topics(settings, extra_topics(settings))
    stack.flush_redis()
    output = ceiling_topic(settings) if variant == "a" else settings.trigger_topic("sms")
    sent: dict[str, float] = {}
    with ExitStack() as cleanup:
        caught_up = _start_processor(stack, settings, variant, plan, batch, cleanup)
        probe = TriggerProbe(settings, output, sent)
        probe.start()
        cleanup.callback(probe.close)
        wait_until(probe.assigned.is_set, 60, "the trigger probe's assignment")
        producer = Producer({**settings.kafka_client_config(), **PRODUCER_CONFIG})
        for key, value in profile_messages(plan):
            send(producer, settings.touchpoint_topic("telco"), value, key)
        producer.flush(30)
        wait_until(caught_up, 120, "the processor to take the home profiles", interval=0.2)
        played = play(producer, settings.touchpoint_topic("telco"), plan, sent, probe.received)
        expected = set(played.measured)
        deadline = time.monotonic() + DRAIN_S
        while not expected.issubset(probe.received) and time.monotonic() < deadline:
            time.sleep(0.1)
    return summarize(variant, plan, sent, probe.received, played)


def _start_processor(
    stack: BenchStack, settings: Settings, variant: str, plan: Plan, batch: int, cleanup: ExitStack
) -> Any:
    """Start (c) or a loop (a, b, d, e), wait until it consumes; returns a "profiles done" probe."""
    if variant == "c":
        worker = cleanup.enter_context(Worker(settings, stack.scratch("logs") / "worker-lat.log"))
        print(f"    worker pid {worker.pid}", file=sys.stderr)
        wait_until(worker.ready, 180, "the worker's /readyz")
        return lambda: worker.processed() >= plan.customers
    run_dir = stack.scratch(f"{settings.app_id}-{variant}")
    child = cleanup.enter_context(
        Child(
            loop_argv(variant, settings, run_dir, 0, batch),
            settings,
            run_dir / "loop.log",
            interpreter=loop_interpreter(variant),
        )
    )
    wait_until(lambda: marker_reached(child, run_dir / "ready"), 120, "the loop's assignment")
    return _group_caught_up(settings, f"{settings.app_id}-{variant}", cleanup)


def _group_caught_up(settings: Settings, group: str, cleanup: ExitStack) -> Any:
    """A probe: True once ``group`` committed the end of every touchpoint partition."""
    # Only asks for offsets: a consumer that never subscribes does not join the group.
    client = Consumer({**settings.kafka_client_config(), "group.id": group})
    cleanup.callback(client.close)
    partitions = [
        TopicPartition(topic, p)
        for topic in settings.touchpoint_topics
        for p in range(settings.partitions)
    ]

    def probe() -> bool:
        committed = client.committed(partitions, timeout=10)
        for tp in committed:
            _, high = client.get_watermark_offsets(tp, timeout=10)
            if high > 0 and tp.offset < high:
                return False
        return True

    return probe
