"""Scale-out, measured: 1, 2, 3 workers of one group at a fixed input rate.

    python -m bench.scaling [--rate 400] [--seconds 60] [--workers 1,2,3]
                            [--saturation 1,2] [--saturation-events 150000]
                            [--rss-partitions 8,32]

One continuous run (one topic namespace, one consumer group): an open-loop
generator sends roaming events (S5, as ``bench.latency``: each yields one
``roaming_offer`` on ``trigger.sms``) at ``--rate`` the whole time while
workers are added one by one and then stopped with SIGTERM, newest first:

    w1 ready, home profiles | window(1) | +w2 join | window(2) | +w3 join | window(3)
    | w3 SIGTERM leave | w2 SIGTERM leave | drain

A *window* (``--seconds``) with N workers, once the group has settled, gives
the events/s the workers processed (their ``omni_events_processed_total``), p50
and p99 event-to-trigger latency of the events scheduled in it, and CPU per
event: the sum of the workers' user+system CPU seconds (psutil) over the events
they processed. A *rebalance* (a join or a leave) gives the pause: a probe notes
each trigger's arrival time and partition; the longest silence of any partition's
trigger stream after the event, the time until every partition that stalled
delivered again, and the worst event-to-trigger latency of the events sent
meanwhile. A trigger's partition is its customer's partition (keyed by customer
id, murmur2), so a silent trigger partition is a partition not being processed.

Then, if asked (``--saturation``): the most events/s 1 and 2 workers drain from a
preloaded backlog (``bench.throughput``'s workload), and (``--rss-partitions``)
one worker's RSS with 8 and 32 partitions, idle and after a small load: what a
higher partition default costs in memory.

Figures, not a test. Writes ``bench/results/scaling.json`` and ``scaling.md``;
``bench.run`` (``make bench``) runs it after the latency part.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import KafkaError, KafkaException, Producer
from hdrh.histogram import HdrHistogram

from bench.kafkaio import loop_consumer, next_batch, send
from bench.latency import (
    LATE_S,
    TICK_S,
    Plan,
    profile_messages,
    roaming_message,
)
from bench.procs import Worker, metric_samples, wait_until
from bench.procstats import cpu_seconds, peak_rss_mb
from bench.report import machine, markdown_table
from bench.stack import BenchStack, bench_stack, terminate_as_interrupt
from bench.throughput import ServiceCpu
from bench.workload import generate, preload
from devstack.ports import free_port
from processors.settings import Settings
from producers.sdk import PRODUCER_CONFIG

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: A partition's trigger stream silent for longer than this counts as stalled. At the
#: bench's rates a partition gets a trigger every few tens of ms; the worker's batches
#: and the probe's 100 ms poll make arrivals bursty, so well above that.
STALL_S = 1.0
#: Seconds sent before the first window (not measured).
WARMUP_S = 5.0
#: One worker's CPU with no input over this long: its fixed cost (polls, commits, ticks),
#: which at a modest fixed rate is much of the CPU per event.
IDLE_S = 10.0
#: After a join (from /readyz) or a leave (from the exit), at least this long before
#: the group counts as settled: a pause may only begin some seconds after the event
#: (a leaving static member keeps its partitions for the session timeout).
JOIN_SETTLE_S = 10.0
LEAVE_SETTLE_EXTRA_S = 5.0
#: At most this long (after the minimum) for every event sent up to 2 s ago to be answered.
SETTLE_TIMEOUT_S = 90.0
#: Budget per rebalance for the generator's schedule (customers are sized for it).
REBALANCE_BUDGET_S = 110.0
#: A stopped worker gets this long to finish its last checkpoint before SIGKILL.
STOP_TIMEOUT_S = 60.0


# --- Pure parts (tests/unit/bench/test_scaling.py) ---------------------------------------


@dataclass
class Pause:
    """How long trigger output stopped around one rebalance (from arrival samples)."""

    #: Longest silence of any single partition's trigger stream (the rebalance pause
    #: one customer sees), counted from its last trigger before the event.
    max_gap_s: float
    #: Longest silence of the whole trigger stream (all partitions at once).
    all_gap_s: float
    #: Event -> every partition that stalled (> ``stall_s``) delivering again; 0.0 when
    #: none stalled; None when one had not resumed by the end of the samples.
    resumed_after_s: float | None
    stalled_partitions: int


def _gaps(times: Sequence[float], start: float, until: float) -> tuple[float, float | None]:
    """Largest gap in ``start, *times, until`` and the time that ended it (None: ``until``)."""
    largest, ended_by, previous = 0.0, None, start
    for t in (*times, until):
        gap = t - previous
        if gap > largest:
            largest, ended_by = gap, (t if t is not until else None)
        previous = t
    return largest, ended_by


def pause_from_arrivals(
    arrivals: Iterable[tuple[float, int]],
    event_at: float,
    until: float,
    partitions: Iterable[int],
    stall_s: float = STALL_S,
) -> Pause:
    """The pause around an event at ``event_at`` from (arrival time, partition) samples.

    Each partition's silence counts from its last arrival before the event (the event
    itself if none), over the arrivals up to ``until``, and to ``until`` when it never
    delivered again (then ``resumed_after_s`` is None).
    """
    before: dict[int, float] = {}
    after: dict[int, list[float]] = {}
    merged_before, merged = event_at, []
    for at, partition in sorted(arrivals):
        if at < event_at:
            before[partition] = at
            merged_before = at
        elif at <= until:
            after.setdefault(partition, []).append(at)
            merged.append(at)
    max_gap, resumed, stalled, never = 0.0, 0.0, 0, False
    for partition in partitions:
        gap, ended_by = _gaps(after.get(partition, []), before.get(partition, event_at), until)
        max_gap = max(max_gap, gap)
        if gap > stall_s:
            stalled += 1
            if ended_by is None:
                never = True
            else:
                resumed = max(resumed, ended_by - event_at)
    all_gap, _ = _gaps(merged, merged_before, until)
    return Pause(
        round(max_gap, 3), round(all_gap, 3), None if never else round(resumed, 3), stalled
    )


def latency_stats(latencies_s: Iterable[float]) -> dict[str, float]:
    """p50/p99/p99.9/max in ms (HdrHistogram, 3 digits, as ``bench.latency``); NaN if none."""
    histogram = HdrHistogram(1, 120_000_000, 3)  # 1 µs .. 120 s
    for latency in latencies_s:
        histogram.record_value(max(1, int(latency * 1e6)))
    count = histogram.get_total_count()

    def ms(percentile: float) -> float:
        return (
            round(histogram.get_value_at_percentile(percentile) / 1000.0, 1) if count else math.nan
        )

    return {
        "count": count,
        "p50_ms": ms(50),
        "p99_ms": ms(99),
        "p999_ms": ms(99.9),
        "max_ms": round(histogram.get_max_value() / 1000.0, 1) if count else math.nan,
    }


def parse_counts(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (sorted, distinct, each >= 1); ``""`` -> ``[]``."""
    counts = sorted({int(t) for t in text.split(",") if t.strip()})
    if any(c < 1 for c in counts):
        raise ValueError(f"{text!r}: counts must be >= 1")
    return counts


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def window_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = [
        [
            "workers",
            "input/s",
            "events/s",
            "x 1 worker",
            "p50 ms",
            "p99 ms",
            "missing",
            "CPU µs/event",
            "mean batch",
            "broker µs/event",
            "Redis µs/event",
            "worker RSS MiB",
            "load avg 1m",
        ]
    ]
    windows = result.get("windows", [])
    base = next((w["events_per_s"] for w in windows if w["workers"] == 1), None)
    for w in windows:
        rows.append(
            [
                str(w["workers"]),
                _num(w["input_rate"]),
                _num(w["events_per_s"]),
                _num(w["events_per_s"] / base, 2) if base else "-",
                _num(w["p50_ms"], 1),
                _num(w["p99_ms"], 1),
                str(w["missing"]),
                _num(w["cpu_us_per_event"]),
                _num(w.get("mean_batch"), 1),
                _num(w["broker_cpu_us_per_event"]),
                _num(w["redis_cpu_us_per_event"]),
                " / ".join(_num(r) for r in w["rss_mb"]),
                _num(w["loadavg"][0], 2),
            ]
        )
    return rows


def rebalance_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = [
        [
            "rebalance",
            "start → ready / exit s",
            "max partition gap s",
            "whole-stream gap s",
            "all flowing after s",
            "stalled partitions",
            "worst latency ms",
            "p99 ms",
            "settled after s",
            "load avg 1m",
        ]
    ]
    for r in result.get("rebalances", []):
        rows.append(
            [
                f"{r['kind']} {r['workers_before']} → {r['workers_after']}",
                _num(r["process_s"], 1),
                _num(r["max_gap_s"], 2),
                _num(r["all_gap_s"], 2),
                _num(r["resumed_after_s"], 2) if r["resumed_after_s"] is not None else "never",
                f"{r['stalled_partitions']}/{result['config']['partitions']}",
                _num(r["max_ms"]),
                _num(r["p99_ms"]),
                _num(r["settled_s"], 1),
                _num(r["loadavg"][0], 2),
            ]
        )
    return rows


def saturation_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per worker count: medians over its (interleaved) runs."""
    rows = [["workers", "events/s", "x 1 worker", "CPU µs/event", "runs (events/s)", "load avg 1m"]]
    by_count: dict[int, list[dict[str, Any]]] = {}
    for run in result.get("saturation", []):
        by_count.setdefault(run["workers"], []).append(run)
    medians = {n: statistics.median(r["events_per_s"] for r in rs) for n, rs in by_count.items()}
    base = medians.get(1)
    for count, runs in sorted(by_count.items()):
        rows.append(
            [
                str(count),
                _num(medians[count]),
                _num(medians[count] / base, 2) if base else "-",
                _num(statistics.median(r["cpu_us_per_event"] for r in runs)),
                " ".join(_num(r["events_per_s"]) + ("*" if r.get("drained") else "") for r in runs),
                " ".join(_num(r["loadavg"][0], 1) for r in runs),
            ]
        )
    return rows


def rss_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = [["partitions", "RocksDB stores", "RSS idle MiB", "RSS after load MiB", "load events"]]
    for r in result.get("rss", []):
        rows.append(
            [
                str(r["partitions"]),
                str(r["stores"]),
                _num(r["rss_idle_mb"]),
                _num(r["rss_loaded_mb"]),
                _num(r["events"]),
            ]
        )
    return rows


def rss_per_partition(rss: list[dict[str, Any]], key: str = "rss_loaded_mb") -> float | None:
    """MiB per extra partition between the fewest and most partitions measured."""
    if len(rss) < 2:
        return None
    low, high = min(rss, key=lambda r: r["partitions"]), max(rss, key=lambda r: r["partitions"])
    if high["partitions"] == low["partitions"]:
        return None
    return (high[key] - low[key]) / (high["partitions"] - low["partitions"])


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "# Scale-out: 1, 2, 3 workers",
        "",
        f"Generated by `python -m bench.scaling` (`make bench` runs it too) on {result['date']}: "
        f"`{cfg['argv'] or '(defaults)'}`.",
        "",
        f"- machine: nproc {result['machine']['nproc']}, {result['machine']['cpu_model']}; "
        "Kafka broker and Redis on the same machine",
        f"- load average before/after: {result['loadavg_before']} / {result['loadavg_after']} "
        "(shared machine; each row has its own 1-minute figure)",
        f"- fixed input rate {cfg['rate']:g} roaming events/s, {cfg['partitions']} partitions, "
        f"{cfg['seconds']:g} s measured per worker count, {cfg['customers']:,} customers",
        "",
        "## Fixed rate: events/s, latency and CPU per worker count",
        "",
        markdown_table(window_rows(result)),
        "",
        "events/s: the workers' `omni_events_processed_total` over the window (≈ the input "
        "rate when they keep up: at a fixed rate more workers cannot process more, they can "
        "only cost more CPU or lower latency). CPU µs/event: the sum of every worker "
        "process's user+system CPU seconds over the events processed. Latency: event "
        "scheduled send → trigger seen by a probe consumer, for the events scheduled in "
        "the window.",
        "",
        *idle_lines(result),
        "## Rebalance pauses",
        "",
        markdown_table(rebalance_rows(result)),
        "",
        "join: from the new worker's spawn (Python start-up, group join, table recovery of "
        "its partitions); leave: from SIGTERM. *max partition gap*: the longest silence of "
        "any partition's trigger stream, from its last trigger before the event. *all "
        "flowing after*: event → the last stalled partition (silent > "
        f"{cfg['stall_s']:g} s) delivering again. *worst latency* and *p99*: the events "
        "scheduled between the event and *settled* (every event sent up to 2 s before "
        "answered).",
        "",
    ]
    if result.get("saturation"):
        lines += [
            "## Saturation: the most events/s from a backlog",
            "",
            markdown_table(saturation_rows(result)),
            "",
            f"{cfg['saturation_events']:,} preloaded bench-mix events (`bench.workload`), "
            f"medians of {cfg.get('saturation_repeat', 1)} runs per count, interleaved; "
            "every worker started at once; the window opens when all are ready and lasts "
            f"{cfg['saturation_window']:g} s or until the backlog is drained (runs marked "
            "*). One worker is one Python process and uses at most about one core (the "
            "GIL): on 2 cores a second worker can add at most the second core, less what "
            "the broker and Redis take beside it, and more workers than cores only compete. "
            "Neighbours' load moves these figures much (see each run's load average): the "
            "ratio says what the second core was worth here, not what a second machine adds.",
            "",
        ]
    if result.get("rss"):
        per = rss_per_partition(result["rss"])
        idle = rss_per_partition(result["rss"], "rss_idle_mb")
        lines += [
            "## Memory per partition",
            "",
            markdown_table(rss_rows(result)),
            "",
            "One worker holding every partition; each partition opens 3 RocksDB stores "
            "(customers, timelines, stats), each with up to 2 x "
            f"{cfg['write_buffer_mib']} MiB memtables and a {cfg['block_cache_mib']} MiB "
            "block cache that fill with use."
            + (
                f" Measured: {_num(idle, 1)} MiB idle and {_num(per, 1)} MiB after the load "
                "per extra partition."
                if per is not None and idle is not None
                else ""
            ),
            "",
        ]
    lines += partition_note(result)
    if result.get("notes"):
        lines += ["## Notes", "", *[f"- {note}" for note in result["notes"]], ""]
    return "\n".join(lines)


def idle_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    idle = result.get("idle_worker_cores")
    if idle is not None:
        lines.append(
            f"An idle worker (no input, {result['config']['partitions']} partitions) used "
            f"{idle:.2f} cores: the CPU per event at a modest rate is not an idle cost but "
            "per-batch costs (offset commit, producer flush, Redis pipeline, per-batch "
            "Python) shared by few events: batches adapt to the rate (*mean batch*: events "
            "per customer-agent batch), and more workers split the same rate into smaller "
            "batches still."
        )
    generator = result.get("generator") or {}
    if generator:
        lines.append(
            f"The generator's worst send lag was {_num(generator.get('send_lag_max_ms'))} ms, "
            f"{_num(generator.get('late_sends'))} sends > 5 ms late (a busy machine; latency "
            "counts from the schedule all the same)."
        )
    return [*(f"{line}\n" for line in lines)] if lines else []


def partition_note(result: dict[str, Any]) -> list[str]:
    cfg = result["config"]
    per = rss_per_partition(result.get("rss", []))
    worst = 3 * (2 * cfg["write_buffer_mib"] + cfg["block_cache_mib"])
    default = Settings.model_fields["partitions"].default
    return [
        f"## The partition count (`OMNI_PARTITIONS`, default {default})",
        "",
        "- Partitions bound parallelism: a partition is processed by one worker at a time, "
        f"so {default} partitions allow at most {default} busy workers (one more is idle).",
        "- The count cannot grow cheaply later: a customer's partition is murmur2(key) mod "
        "the count, so changing it re-keys customers across partitions. Their state "
        "(RocksDB + changelog partitions), timers and in-flight events would sit in the "
        "wrong partition; the contract topics and the changelogs must keep equal counts, "
        "so a change means a migration (new topics, state rebuilt), not a setting.",
        "- A higher count costs per worker: 3 RocksDB stores per partition it holds "
        "(memtables of "
        f"{cfg['write_buffer_mib']} MiB, within the worker's shared memtable budget and "
        "block cache since the shared cache landed; before it, up to "
        f"{worst} MiB per partition at worst)"
        + (
            f"; measured here {per:.1f} MiB RSS per extra partition after a small load"
            if per is not None
            else ""
        )
        + "; more files and open handles, more changelog partitions to restore, more "
        "commit and fetch requests per second, longer rebalances (more assignments). "
        "Idle stores cost little; the memtable budget "
        "(OMNI_ROCKSDB_MEMTABLE_BUDGET_MIB) and the block cache (OMNI_ROCKSDB_BLOCK_CACHE_MIB) "
        "bound a worker's RocksDB memory whatever the partitions it holds.",
        "- Growth: choose the count from the most workers the deployment may ever need "
        "(events/s at peak ÷ events/s per worker, with headroom), rounded up to a number "
        "with many divisors so partitions spread evenly (12 = 1, 2, 3, 4, 6, 12 workers; "
        "24 adds 8).",
        "",
    ]


# --- The run ----------------------------------------------------------------------------


class ArrivalProbe(threading.Thread):
    """Reads ``trigger.sms``; notes each awaited event's trigger arrival and its partition."""

    def __init__(self, settings: Settings, topic: str, sent: dict[str, float]) -> None:
        super().__init__(name="scaling-probe", daemon=True)
        self.sent = sent
        self.received: dict[str, float] = {}
        self.arrivals: list[tuple[float, int]] = []
        self.assigned = threading.Event()
        self.error: BaseException | None = None
        self._stop_flag = threading.Event()
        self._consumer = loop_consumer(
            settings,
            f"probe-{os.getpid()}-{time.monotonic_ns()}",
            on_assign=lambda *_: self.assigned.set(),
            topics=[topic],
        )

    def run(self) -> None:
        try:
            self._read()
        except BaseException as error:
            self.error = error
        finally:
            self._consumer.close()

    def _read(self) -> None:
        while not self._stop_flag.is_set():
            try:
                batch = next_batch(self._consumer, 500, timeout=0.1)
            except KafkaException as error:
                # A topic created a moment ago may not be in the metadata yet: retry.
                if error.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                raise
            arrived = time.time()
            for message in batch:
                source = orjson.loads(message.value() or b"{}").get("source_event_id")
                if source in self.sent and source not in self.received:
                    self.received[source] = arrived
                    self.arrivals.append((arrived, message.partition() or 0))

    def close(self) -> None:
        self._stop_flag.set()
        self.join(10)


class Generator(threading.Thread):
    """Sends ``plan.total`` roaming events on schedule (open loop) until stopped."""

    def __init__(self, settings: Settings, plan: Plan, sent: dict[str, float]) -> None:
        super().__init__(name="scaling-generator", daemon=True)
        self.settings, self.plan, self.sent = settings, plan, sent
        self.topic = settings.touchpoint_topic("telco")
        self.max_lag_ms = 0.0
        self.late = 0
        self.exhausted = False
        self.error: BaseException | None = None
        self._stop_flag = threading.Event()

    def run(self) -> None:
        try:
            self._play()
        except BaseException as error:
            self.error = error

    def _play(self) -> None:
        producer = Producer({**self.settings.kafka_client_config(), **PRODUCER_CONFIG})
        wall_offset = time.time() - time.monotonic()
        rate, start, seq = self.plan.rate, time.monotonic() + 0.05, 0
        while seq < self.plan.total and not self._stop_flag.is_set():
            now = time.monotonic()
            wait = start + seq / rate - now
            if wait > 0:
                time.sleep(max(wait, TICK_S))
                now = time.monotonic()
            while seq < self.plan.total and (due := start + seq / rate) <= now:
                event_id, key, value = roaming_message(self.plan, seq)
                self.sent[event_id] = due + wall_offset  # before produce: the probe may see it
                send(producer, self.topic, value, key)
                lag = time.monotonic() - due
                self.max_lag_ms = max(self.max_lag_ms, lag * 1000.0)
                self.late += lag > LATE_S
                seq += 1
            producer.poll(0)
        self.exhausted = seq >= self.plan.total
        producer.flush(30)

    def close(self) -> None:
        self._stop_flag.set()
        self.join(40)


@dataclass
class Member:
    """One worker process of the group and what we read from it."""

    index: int
    worker: Worker
    spawned_at: float
    ready_at: float = 0.0
    rss_mb: float = 0.0


@dataclass
class Run:
    stack: BenchStack
    settings: Settings
    sent: dict[str, float]
    probe: ArrivalProbe
    generator: Generator | None = None
    members: list[Member] = field(default_factory=list)
    say: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)
    #: Index into ``sent`` (insertion = schedule order) of the first unanswered event.
    _answered_upto: int = 0
    _order: list[str] = field(default_factory=list)

    def member_settings(self, index: int) -> Settings:
        """Same group and topics, its own data dir and ports (and so its static member id)."""
        if index == 1:
            return self.settings
        data_dir = self.stack.scratch(f"{self.settings.app_id}-w{index}")
        return self.settings.model_copy(
            update={"data_dir": str(data_dir), "web_port": free_port(), "metrics_port": free_port()}
        )

    def start_member(self, cleanup: ExitStack) -> Member:
        index = max((m.index for m in self.members), default=0) + 1
        log = self.stack.scratch("logs") / f"scaling-w{index}.log"
        spawned = time.time()
        worker = cleanup.enter_context(Worker(self.member_settings(index), log))
        member = Member(index, worker, spawned)
        wait_until(worker.ready, 180, f"worker {index}'s /readyz", interval=0.05)
        member.ready_at = time.time()
        self.members.append(member)
        return member

    def caught_up(self, since: float) -> bool:
        """Every event scheduled after ``since`` and up to 2 s ago has its trigger."""
        order, received, sent = self._order, self.probe.received, self.sent
        if len(order) < len(sent):
            order.extend(list(sent)[len(order) :])
        horizon = time.time() - 2.0
        while self._answered_upto < len(order):
            event_id = order[self._answered_upto]
            if sent[event_id] > horizon:
                return True
            if event_id not in received and sent[event_id] >= since:
                return False
            self._answered_upto += 1
        return True

    def settle(self, since: float, minimum_until: float) -> float:
        """Wait for the group to deliver everything again; returns when (wall time)."""
        while time.time() < minimum_until:
            self.check_generator()
            time.sleep(0.2)
        deadline = time.time() + SETTLE_TIMEOUT_S
        while not self.caught_up(since):
            self.check_generator()
            if time.time() > deadline:
                self.notes.append(
                    f"settle after the event at {since:.0f} timed out after {SETTLE_TIMEOUT_S:g} s"
                )
                break
            time.sleep(0.2)
        return time.time()

    def check_generator(self) -> None:
        """Fail the run, not just its figures, when the generator or the probe died."""
        if self.generator is not None and self.generator.error is not None:
            raise RuntimeError(f"generator failed: {self.generator.error!r}")
        if self.probe.error is not None:
            raise RuntimeError(f"trigger probe failed: {self.probe.error!r}")
        if self.generator is not None and not self.generator.is_alive():
            raise RuntimeError("the generator ran out of planned events (REBALANCE_BUDGET_S)")

    def cpu(self) -> dict[int, float]:
        return {m.index: cpu_seconds(m.worker.pid) for m in self.members}

    def processed(self) -> dict[int, float]:
        return {m.index: m.worker.processed() for m in self.members}

    def batches(self) -> tuple[float, float]:
        """Events and batches of the customer agents so far, summed over the workers."""
        events = batches = 0.0
        for member in self.members:
            text = member.worker.metrics()
            sums = metric_samples(text, "omni_batch_events_sum")
            counts = metric_samples(text, "omni_batch_events_count")
            events += sum(v for k, v in sums.items() if '"customer"' in k)
            batches += sum(v for k, v in counts.items() if '"customer"' in k)
        return events, batches

    def latencies(self, start: float, end: float) -> tuple[list[float], int]:
        """Latencies (s) of the events scheduled in [start, end), and how many have none."""
        found, missing = [], 0
        for event_id, due in list(self.sent.items()):
            if start <= due < end:
                arrived = self.probe.received.get(event_id)
                if arrived is None:
                    missing += 1
                else:
                    found.append(arrived - due)
        return found, missing


def measure_window(run: Run, seconds: float) -> dict[str, Any]:
    workers = len(run.members)
    services = ServiceCpu(run.stack)
    cpu0, done0, batches0, t0 = run.cpu(), run.processed(), run.batches(), time.time()
    while time.time() < t0 + seconds:
        run.check_generator()
        time.sleep(0.5)
    cpu1, done1, batches1, t1 = run.cpu(), run.processed(), run.batches(), time.time()
    batch_events, batch_count = (batches1[0] - batches0[0]), (batches1[1] - batches0[1])
    broker_s, redis_s = services.used()
    events = sum(done1[i] - done0[i] for i in done1)
    cpu_s = sum(cpu1[i] - cpu0[i] for i in cpu1)
    for member in run.members:
        member.rss_mb = psutil.Process(member.worker.pid).memory_info().rss / 2**20
    return {
        "workers": workers,
        "start": t0,
        "end": t1,
        "seconds": round(t1 - t0, 2),
        "events": int(events),
        "events_per_s": events / (t1 - t0),
        "cpu_s": round(cpu_s, 2),
        "cpu_us_per_event": cpu_s / events * 1e6 if events else math.nan,
        # Small batches at a modest rate: per-batch costs (commit, flush, Redis round trip)
        # are shared by few events, and more workers split the same rate thinner.
        "mean_batch": round(batch_events / batch_count, 1) if batch_count else math.nan,
        "cpu_s_per_worker": [round(cpu1[i] - cpu0[i], 2) for i in sorted(cpu1)],
        "events_per_worker": [int(done1[i] - done0[i]) for i in sorted(done1)],
        "broker_cpu_us_per_event": broker_s / events * 1e6 if events else math.nan,
        "redis_cpu_us_per_event": redis_s / events * 1e6 if events else math.nan,
        "rss_mb": [round(m.rss_mb) for m in run.members],
        "peak_rss_mb": [round(peak_rss_mb(m.worker.pid)) for m in run.members],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def rebalance(
    run: Run, kind: str, before: int, event_at: float, process_s: float, settled_at: float
) -> dict[str, Any]:
    return {
        "kind": kind,
        "workers_before": before,
        "workers_after": len(run.members),
        "event_at": event_at,
        "process_s": round(process_s, 2),
        "settled_s": round(settled_at - event_at, 2),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def finish_rebalance(run: Run, entry: dict[str, Any]) -> None:
    """Pause and latency figures of a rebalance, once every trigger had its chance."""
    end = entry["event_at"] + entry["settled_s"]
    pause = pause_from_arrivals(
        list(run.probe.arrivals), entry["event_at"], end, range(run.settings.partitions)
    )
    stats = latency_stats(run.latencies(entry["event_at"], end)[0])
    entry.update(asdict(pause))
    entry.update({"p99_ms": stats["p99_ms"], "max_ms": stats["max_ms"]})


def run_scaling(
    stack: BenchStack,
    rate: float,
    seconds: float,
    counts: list[int],
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The continuous run: windows at each worker count, joins on the way up, leaves down."""
    # As bench.latency: no quiet hours (a run at night would defer every offer).
    settings = stack.settings("scale", quiet_hours_start="00:00", quiet_hours_end="00:00")
    stack.create_topics(settings, [])
    stack.flush_redis()
    top = max(counts)
    rebalances_planned = 2 * (top - 1)
    budget = WARMUP_S + len(counts) * (seconds + 5) + rebalances_planned * REBALANCE_BUDGET_S + 30
    # Each customer takes at most COUNTRIES_PER_CUSTOMER roaming events (the daily cap):
    # the plan's customers are sized for the whole budget.
    plan = Plan(rate, budget, 0.0)
    sent: dict[str, float] = {}
    windows: list[dict[str, Any]] = []
    rebalances: list[dict[str, Any]] = []
    with ExitStack() as cleanup:
        probe = ArrivalProbe(settings, settings.trigger_topic("sms"), sent)
        run = Run(stack, settings, sent, probe, say=say)
        first = run.start_member(cleanup)
        say(f"scaling: worker 1 ready after {first.ready_at - first.spawned_at:.1f}s")
        probe.start()
        cleanup.callback(probe.close)
        wait_until(probe.assigned.is_set, 60, "the trigger probe's assignment")
        producer = Producer({**settings.kafka_client_config(), **PRODUCER_CONFIG})
        for key, value in profile_messages(plan):
            send(producer, settings.touchpoint_topic("telco"), value, key)
        producer.flush(60)
        wait_until(
            lambda: first.worker.processed() >= plan.customers,
            600,
            "worker 1 to take the home profiles",
            interval=1.0,
        )
        time.sleep(2.0)  # the profiles' last checkpoint
        idle0 = cpu_seconds(first.worker.pid)
        time.sleep(IDLE_S)
        idle_cores = (cpu_seconds(first.worker.pid) - idle0) / IDLE_S
        say(
            f"scaling: {plan.customers:,} home profiles processed; idle worker "
            f"{idle_cores:.2f} cores; sending {rate:g}/s"
        )
        run.generator = Generator(settings, plan, sent)
        run.generator.start()
        cleanup.callback(run.generator.close)
        # The first window, like the others, opens once everything sent is answered.
        generating = time.time()
        run.settle(generating, generating + WARMUP_S)
        # Up: a window at each count, joining workers one at a time in between.
        for count in counts:
            while len(run.members) < count:
                before = len(run.members)
                member = run.start_member(cleanup)
                settled = run.settle(member.spawned_at, member.ready_at + JOIN_SETTLE_S)
                entry = rebalance(
                    run,
                    "join",
                    before,
                    member.spawned_at,
                    member.ready_at - member.spawned_at,
                    settled,
                )
                rebalances.append(entry)
                say(
                    f"scaling: worker {member.index} joined, ready after "
                    f"{entry['process_s']:.1f}s, "
                    f"settled after {entry['settled_s']:.1f}s"
                )
            window = measure_window(run, seconds)
            windows.append(window)
            # The window's last events answered before the next join or leave disturbs them.
            run.settle(window["start"], time.time() + 2.0)
            say(
                f"scaling: {count} worker(s): {window['events_per_s']:,.0f} events/s, "
                f"{window['cpu_us_per_event']:,.0f} µs CPU/event, load {window['loadavg'][0]}"
            )
        # Down: SIGTERM the newest worker (a clean leave) until one is left.
        while len(run.members) > 1:
            member = run.members.pop()
            before = len(run.members) + 1
            stopped_at = time.time()
            member.worker.stop(timeout=STOP_TIMEOUT_S)
            exited_at = time.time()
            minimum = exited_at + settings.session_timeout_seconds + LEAVE_SETTLE_EXTRA_S
            settled = run.settle(stopped_at, minimum)
            entry = rebalance(run, "leave", before, stopped_at, exited_at - stopped_at, settled)
            rebalances.append(entry)
            say(
                f"scaling: worker {member.index} left (SIGTERM, exited after "
                f"{entry['process_s']:.1f}s), settled after {entry['settled_s']:.1f}s"
            )
        generator = run.generator
        generator.close()
        deadline = time.time() + 20.0
        while len(probe.received) < len(sent) and time.time() < deadline:
            time.sleep(0.2)
        if generator.exhausted:
            run.notes.append("the generator ran out of planned events before the end (budget)")
    for window in windows:
        latencies, missing = run.latencies(window["start"], window["end"])
        stats = latency_stats(latencies)
        window.update(
            {
                "input_rate": rate,
                "sent": stats["count"] + missing,
                "missing": missing,
                "p50_ms": stats["p50_ms"],
                "p99_ms": stats["p99_ms"],
                "p999_ms": stats["p999_ms"],
                "max_ms": stats["max_ms"],
            }
        )
    for entry in rebalances:
        finish_rebalance(run, entry)
    return {
        "customers": plan.customers,
        "idle_worker_cores": round(idle_cores, 3),
        "partitions": settings.partitions,
        "session_timeout_s": settings.session_timeout_seconds,
        "windows": windows,
        "rebalances": rebalances,
        "generator": {
            "send_lag_max_ms": round(generator.max_lag_ms, 1),
            "late_sends": generator.late,
        },
        "notes": run.notes,
    }


def run_saturation(
    stack: BenchStack,
    counts: list[int],
    events: int,
    customers: int,
    window: float,
    seed: int,
    say: Callable[[str], None] = print,
    repeat: int = 2,
) -> list[dict[str, Any]]:
    """Max events/s of N workers draining a preloaded backlog (a fresh namespace each).

    Counts interleaved per repetition (1 2 1 2): a neighbour's burst hurts both alike.
    """
    results = []
    for count in [c for _ in range(repeat) for c in counts]:
        settings = stack.settings(f"sat{count}")
        stack.create_topics(settings, [])
        stack.flush_redis()
        workload = generate(events, customers, seed)
        preload(settings, workload)
        with ExitStack() as cleanup:
            workers = []
            for index in range(1, count + 1):
                own = settings
                if index > 1:
                    own = settings.model_copy(
                        update={
                            "data_dir": str(stack.scratch(f"{settings.app_id}-w{index}")),
                            "web_port": free_port(),
                            "metrics_port": free_port(),
                        }
                    )
                log = stack.scratch("logs") / f"saturation-{count}-w{index}.log"
                workers.append(cleanup.enter_context(Worker(own, log)))
            for worker in workers:
                wait_until(worker.ready, 180, "a saturation worker's /readyz", interval=0.05)
            time.sleep(2.0)  # the last join's rebalance: every worker has its partitions
            cpu0 = sum(cpu_seconds(w.pid) for w in workers)
            done0, t0 = sum(w.processed() for w in workers), time.monotonic()
            done = done0
            while time.monotonic() - t0 < window and done < events:
                time.sleep(0.5)
                done = sum(w.processed() for w in workers)
            t1 = time.monotonic()
            cpu_s = sum(cpu_seconds(w.pid) for w in workers) - cpu0
        timed = done - done0
        entry: dict[str, Any] = {
            "workers": count,
            "events": int(timed),
            "seconds": round(t1 - t0, 2),
            "events_per_s": timed / (t1 - t0),
            "cpu_us_per_event": cpu_s / timed * 1e6 if timed else math.nan,
            "drained": done >= events,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
        results.append(entry)
        say(
            f"saturation: {count} worker(s): {entry['events_per_s']:,.0f} events/s "
            f"over {timed:,.0f} events, load {entry['loadavg'][0]}"
        )
    return results


def run_rss(
    stack: BenchStack,
    partition_counts: list[int],
    events: int,
    seed: int,
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """One worker's RSS with each partition count: idle after ready, then after a load."""
    results = []
    for partitions in partition_counts:
        settings = stack.settings(f"rss{partitions}", partitions=partitions)
        stack.create_topics(settings, [])
        stack.flush_redis()
        log = stack.scratch("logs") / f"rss-{partitions}.log"
        with Worker(settings, log) as worker:
            wait_until(worker.ready, 180, "the worker's /readyz", interval=0.1)
            time.sleep(3.0)
            idle = psutil.Process(worker.pid).memory_info().rss / 2**20
            if events:
                preload(settings, generate(events, max(1, events // 10), seed))
                wait_until(lambda: worker.processed() >= events, 300, "the RSS load", interval=0.5)
                time.sleep(3.0)  # the last checkpoint's table writes
            loaded = psutil.Process(worker.pid).memory_info().rss / 2**20
        results.append(
            {
                "partitions": partitions,
                "stores": 3 * partitions,
                "rss_idle_mb": round(idle, 1),
                "rss_loaded_mb": round(loaded, 1),
                "events": events,
            }
        )
        say(f"rss: {partitions} partitions: {idle:.0f} MiB idle, {loaded:.0f} MiB after load")
    return results


@dataclass
class Options:
    rate: float = 400.0
    seconds: float = 60.0
    workers: list[int] = field(default_factory=lambda: [1, 2, 3])
    saturation: list[int] = field(default_factory=lambda: [1, 2])
    saturation_events: int = 150_000
    saturation_customers: int = 15_000
    saturation_window: float = 30.0
    saturation_repeat: int = 2
    rss_partitions: list[int] = field(default_factory=lambda: [8, 32])
    rss_events: int = 20_000
    seed: int = 7


def measure(
    stack: BenchStack, options: Options, argv: str = "", say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Everything asked for on one stack; the result ``write`` renders."""
    defaults = Settings()
    started = datetime.now(UTC)
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    scaling: dict[str, Any] = {"windows": [], "rebalances": [], "notes": []}
    if options.workers:
        scaling = run_scaling(stack, options.rate, options.seconds, options.workers, say)
    saturation = []
    if options.saturation:
        saturation = run_saturation(
            stack,
            options.saturation,
            options.saturation_events,
            options.saturation_customers,
            options.saturation_window,
            options.seed,
            say,
            options.saturation_repeat,
        )
    rss = run_rss(stack, options.rss_partitions, options.rss_events, options.seed, say)
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "argv": argv,
            "rate": options.rate,
            "seconds": options.seconds,
            "workers": options.workers,
            "partitions": scaling.get("partitions", 8),
            "customers": scaling.get("customers", 0),
            "session_timeout_s": scaling.get("session_timeout_s", defaults.session_timeout_seconds),
            "stall_s": STALL_S,
            "saturation_workers": options.saturation,
            "saturation_events": options.saturation_events,
            "saturation_window": options.saturation_window,
            "saturation_repeat": options.saturation_repeat,
            "rss_partitions": options.rss_partitions,
            "write_buffer_mib": defaults.rocksdb_write_buffer_mib,
            "block_cache_mib": defaults.rocksdb_block_cache_mib,
        },
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "windows": scaling["windows"],
        "rebalances": scaling["rebalances"],
        "generator": scaling.get("generator", {}),
        "idle_worker_cores": scaling.get("idle_worker_cores"),
        "saturation": saturation,
        "rss": rss,
        "notes": scaling["notes"],
    }


def write(result: dict[str, Any], results_dir: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "scaling.json").write_bytes(
        orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    (results_dir / "scaling.md").write_text(markdown(result))


def _counts(text: str) -> list[int]:
    try:
        return parse_counts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=400.0, help="fixed input rate, events/s")
    p.add_argument("--seconds", type=float, default=60.0, help="measured seconds per worker count")
    p.add_argument("--workers", type=_counts, default=[1, 2, 3], help="worker counts ('' = none)")
    p.add_argument(
        "--saturation",
        type=_counts,
        default=[1, 2],
        help="worker counts for max events/s ('' = none)",
    )
    p.add_argument("--saturation-events", type=int, default=150_000)
    p.add_argument("--saturation-window", type=float, default=30.0)
    p.add_argument("--saturation-repeat", type=int, default=2, help="interleaved runs per count")
    p.add_argument(
        "--rss-partitions", type=_counts, default=[8, 32], help="partition counts ('' = none)"
    )
    p.add_argument("--rss-events", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--keep-workdir", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    terminate_as_interrupt()
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[scaling {time.monotonic() - t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    options = Options(
        rate=args.rate,
        seconds=args.seconds,
        workers=args.workers,
        saturation=args.saturation,
        saturation_events=args.saturation_events,
        saturation_customers=max(1, args.saturation_events // 10),
        saturation_window=args.saturation_window,
        saturation_repeat=args.saturation_repeat,
        rss_partitions=args.rss_partitions,
        rss_events=args.rss_events,
        seed=args.seed,
    )
    try:
        with bench_stack(keep_workdir=args.keep_workdir) as stack:
            say(f"Kafka {stack.bootstrap}, Redis {stack.redis_url}, workdir {stack.workdir}")
            command = " ".join(["python -m bench.scaling", shlex.join(argv)]).strip()
            result = measure(stack, options, command, say)
    except KeyboardInterrupt:
        say("interrupted: everything started was stopped")
        return 130
    write(result, args.results_dir)
    print(markdown(result))
    say(f"wrote {args.results_dir / 'scaling.json'} and scaling.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
