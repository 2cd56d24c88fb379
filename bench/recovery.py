"""State targets: worker RSS and changelog recovery time with N customers' state.

    python -m bench.recovery [--customers 1000000] [--partitions 8] [--events 50000]
                             [--templates 400] [--no-warm] [--no-profile]

Targets of the performance issue: with 1M customers' state the worker's RSS stays
<= 2 GiB, and a worker that lost its local RocksDB rebuilds from the changelogs in
<= 60 s. Figures, not a test: nothing asserts. Steps:

1. Starts its own broker and Redis (``bench.stack``); a first worker on the empty
   namespace creates the changelog topics as Faust does (``<app_id>-<table>-changelog``,
   compacted, N partitions), then stops.
2. Builds customer templates by running the real ``step`` (and ``fire_timers``, as the
   tick would) over a customer's life of bench workload events (home profile, network
   attaches, calls, ATM withdrawals, consents, accepted overdrafts, spread over days so
   the dedup ring, cooldowns, contact history, offers and timers are what they would
   be), in tiers from light to very active (:data:`TIERS`). Then writes one record per
   customer id into the ``customers`` changelog, as the worker writes it (state and
   timeline, :func:`customer_record`): the template's JSON with its customer id
   replaced by the key's, on the partition the worker's table writes to (murmur2 of
   the key, as the SDK and ``runtime.py`` compute it).
3. Starts a worker with an empty data dir and times spawn -> /readyz and "partitions
   assigned" (from its log) -> /readyz, sampling VmRSS/VmHWM and CPU.
4. Sends ``--events`` events for random customers of the N through the touchpoint
   topics, waits until the worker has processed them, and reads VmRSS/VmHWM again.
5. Restarts the worker on the data dir it kept (persisted offsets: should be quick).
6. The ceiling: a bulk restore (confluent-kafka batches into rocksdict ``WriteBatch``es,
   Faust's file layout and persisted offsets) in a child process, with Faust's RocksDB
   options and with small write buffers; then a worker started on what it restored.
7. Profiles a second cold recovery with py-spy (fresh data dir): hot spots while it
   reads the changelogs and after /readyz (the timer index rebuild scans the table).

Writes ``bench/results/recovery.json`` and ``bench/results/recovery.md``. Everything
started (broker, Redis, workers, py-spy) is stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import psutil
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from bench.procs import Child, Worker, wait_until
from bench.stack import KAFKA_VERSION, BenchStack, bench_stack, terminate_as_interrupt
from bench.workload import (
    LANGUAGES,
    MIX,
    PRELOAD_CONFIG,
    TIMEZONES,
    customer_id,
    home_country,
    rfc3339_now,
)
from devstack.procs import tail
from processors.app import step_context
from processors.domain.model import CustomerState, Event
from processors.domain.record_codec import decode_record, encode_record
from processors.domain.step import StepContext, fire_timers, step
from processors.domain.timers import next_due
from processors.rulebook import load_ruleset
from processors.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PY_SPY = Path(sys.executable).with_name("py-spy")
DAY = 86400.0
MIB = 1024.0 * 1024.0
TARGET_RSS_MB = 2048.0
TARGET_RECOVERY_S = 60.0
TABLES = ("customers", "timelines", "stats")
_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[recovery {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- customer templates ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tier:
    """Customers with ``events`` events (after the home profile) over the last ``days`` days."""

    name: str
    share: float
    events: int
    days: float


#: The mix of customers in the state. Light customers dominate a bank + telco base; the
#: very active ones fill the dedup ring (512 ids). All had some activity in the last hours,
#: so offers, cooldowns and timers of recent triggers are in their records.
TIERS: tuple[Tier, ...] = (
    Tier("light", 0.35, 5, 7),
    Tier("regular", 0.40, 20, 30),
    Tier("active", 0.18, 80, 60),
    Tier("heavy", 0.06, 250, 90),
    Tier("very active", 0.01, 700, 120),
)


@dataclass(slots=True)
class Template:
    tier: str
    customer_id: bytes
    home: str
    #: The state and the timeline as orjson JSON (the previous layout's two values).
    state: bytes
    timeline: bytes
    timers: int
    offers: int
    #: The earliest timer's due time (None: no timer), for the record's header.
    due: float | None = None


def customer_record(template: Template, key: bytes) -> bytes:
    """The worker's ``customers`` record of ``template`` for customer id ``key``."""
    state = template.state.replace(template.customer_id, key)
    timeline = template.timeline.replace(template.customer_id, key)
    return encode_record(state, timeline, template.due)


def _life(rng: random.Random, cid: str, home: str, tier: Tier, now: float) -> list[Event]:
    """A customer's events, oldest first: the home profile, then the bench workload mix."""
    names, weights, builders = zip(*((n, w, b) for n, w, b in MIX), strict=True)
    recent = min(2, tier.events)  # the last events happened in the last six hours
    older = tier.events - recent
    times = sorted(now - rng.uniform(6 * 3600, tier.days * DAY) for _ in range(older))
    times += sorted(now - rng.uniform(600, 6 * 3600) for _ in range(recent))
    first = (times[0] if times else now) - 3600
    profile = {"home_country": home, "language": LANGUAGES[home], "timezone": TIMEZONES[home]}
    events = [Event(f"ev-{cid}-0", "profile.updated", "telco", cid, first, profile, first)]
    for n, at in enumerate(times, start=1):
        pick = rng.choices(range(len(names)), weights=weights)[0]
        channel, payload = builders[pick](rng, home)
        events.append(Event(f"ev-{cid}-{n}", names[pick], channel, cid, at, payload, at))
    return events


def build_template(
    ctx: StepContext, rng: random.Random, number: int, tier: Tier, now: float
) -> Template:
    """Run ``step`` over one customer's life as the worker would (timers fired when due)."""
    cid = f"cust-T{number:06d}"  # same length as customer_id(i), never inside a hash
    home = home_country(number)
    state: CustomerState | None = None
    timeline: list[dict[str, Any]] = []
    for event in _life(rng, cid, home, tier, now):
        at = event.occurred_at
        if state is not None and any(t["due_at"] <= at for t in state.timers):
            fire_timers(state, ctx, at)
        # Processed a few hundred ms after it happened: fresh, so rules fire.
        state, out = step(state, [event], ctx, at + 0.3, timeline)
        if out.timeline is not None:
            timeline = out.timeline
    assert state is not None
    if any(t["due_at"] <= now for t in state.timers):
        fire_timers(state, ctx, now)
    return Template(
        tier.name,
        cid.encode(),
        home,
        orjson.dumps(state),
        orjson.dumps(timeline),
        len(state.timers),
        len(state.offers),
        next_due(state.timers),
    )


def build_templates(settings: Settings, count: int, seed: int) -> dict[str, list[Template]]:
    ctx = step_context(settings, load_ruleset(Path(settings.rules_dir), settings.rule_delays()))
    rng = random.Random(seed)
    now = time.time()
    templates: dict[str, list[Template]] = {}
    number = 0
    for tier in TIERS:
        mine = templates[tier.name] = []
        for _ in range(max(3, round(count * tier.share))):
            mine.append(build_template(ctx, rng, number, tier, now))
            number += 1
    return templates


def template_summary(templates: dict[str, list[Template]]) -> list[dict[str, Any]]:
    rows = []
    for tier in TIERS:
        mine = templates[tier.name]
        rows.append(
            {
                "tier": tier.name,
                "share": tier.share,
                "events": tier.events + 1,
                "days": tier.days,
                "templates": len(mine),
                "state_bytes_mean": sum(len(t.state) for t in mine) / len(mine),
                "state_bytes_max": max(len(t.state) for t in mine),
                "timeline_bytes_mean": sum(len(t.timeline) for t in mine) / len(mine),
                "with_timers": sum(1 for t in mine if t.timers) / len(mine),
                "with_offers": sum(1 for t in mine if t.offers) / len(mine),
            }
        )
    return rows


# --- filling the changelogs -----------------------------------------------------------------


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of ``key`` on every contract topic (SDK murmur2) = the table's partition."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def check_changelogs(settings: Settings) -> dict[str, dict[str, Any]]:
    """Partition count and cleanup.policy of the changelog topics the worker created."""
    admin = AdminClient(settings.kafka_client_config())
    names = [changelog_topic(settings, t) for t in TABLES]
    topics = admin.list_topics(timeout=30).topics
    missing = [n for n in names if n not in topics]
    if missing:
        raise RuntimeError(f"the worker did not create {missing}")
    found: dict[str, dict[str, Any]] = {}
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    for resource, future in admin.describe_configs(resources).items():
        config = future.result()
        found[resource.name] = {
            "partitions": len(topics[resource.name].partitions),
            "cleanup.policy": config["cleanup.policy"].value,
        }
    for name, info in found.items():
        if info["partitions"] != settings.partitions or info["cleanup.policy"] != "compact":
            raise RuntimeError(f"{name}: unexpected layout {info}")
    return found


@dataclass
class Fill:
    customers: int
    seconds: float = 0.0
    records: Counter[str] = field(default_factory=Counter)
    key_value_bytes: Counter[str] = field(default_factory=Counter)
    value_bytes: Counter[str] = field(default_factory=Counter)
    #: Per customer: index of its template in ``flat`` (for the load phase's home country).
    assignment: array = field(default_factory=lambda: array("H"))
    flat: list[Template] = field(default_factory=list)
    tier_counts: Counter[str] = field(default_factory=Counter)
    errors: int = 0


def fill_changelogs(
    settings: Settings, templates: dict[str, list[Template]], customers: int, seed: int
) -> Fill:
    """One ``customers`` record per customer id (state and timeline), as the worker writes."""
    rng = random.Random(seed + 1)
    fill = Fill(customers)
    fill.flat = [t for tier in TIERS for t in templates[tier.name]]
    first: dict[str, int] = {}
    for index, template in enumerate(fill.flat):
        first.setdefault(template.tier, index)
    tier_names = [t.name for t in TIERS]
    tier_weights = [t.share for t in TIERS]
    customers_topic = changelog_topic(settings, "customers")
    partitions = settings.partitions

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            fill.errors += 1

    producer = Producer({**settings.kafka_client_config(), **PRELOAD_CONFIG})
    started = time.monotonic()
    picks = rng.choices(range(len(tier_names)), weights=tier_weights, k=customers)
    for index, pick in enumerate(picks):
        tier = tier_names[pick]
        offset = rng.randrange(len(templates[tier]))
        template = templates[tier][offset]
        fill.assignment.append(first[tier] + offset)
        fill.tier_counts[tier] += 1
        key = customer_id(index).encode()
        partition = partition_of(key, partitions)
        for topic, value in ((customers_topic, customer_record(template, key)),):
            while True:
                try:
                    producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            fill.records[topic] += 1
            fill.key_value_bytes[topic] += len(key) + len(value)
            fill.value_bytes[topic] += len(value)
        if index % 20_000 == 0:
            producer.poll(0)
            if index:
                say(f"  filled {index:,} customers")
    remaining = producer.flush(300)
    fill.seconds = time.monotonic() - started
    if remaining or fill.errors:
        raise RuntimeError(f"fill: {remaining} undelivered, {fill.errors} failed")
    return fill


def verify_sample(settings: Settings, fill: Fill, sample: int = 200) -> int:
    """Read back some records: the key's partition and the record's customer_id match."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"recovery-verify-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    topic = changelog_topic(settings, "customers")
    checked = 0
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
        deadline = time.monotonic() + 30
        while checked < sample and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=1.0):
                if message.error() is not None:
                    continue
                key = message.key() or b""
                record = decode_record(message.value() or b"{}")
                state = CustomerState.from_dict(orjson.loads(record.state))
                if state.customer_id.encode() != key:
                    raise RuntimeError(f"record for {key!r} says {state.customer_id}")
                if message.partition() != partition_of(key, settings.partitions):
                    raise RuntimeError(f"{key!r} on partition {message.partition()}")
                checked += 1
    finally:
        consumer.close()
    return checked


def topic_disk_bytes(stack: BenchStack, topic: str) -> int:
    """Bytes of the broker's segment files (.log) of ``topic``, all partitions."""
    total = 0
    for directory in stack.kafka.data_dir.glob(f"{topic}-*"):
        if directory.name.rpartition("-")[2].isdigit():
            total += sum(f.stat().st_size for f in directory.glob("*.log"))
    return total


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- the worker: samples, log markers ---------------------------------------------------------


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB (0 once the process is gone)."""
    found = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in found:
                found[name] = int(rest.split()[0]) / 1024.0
    except OSError:
        pass
    return found


def cpu_of(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


class Sampler(threading.Thread):
    """VmRSS, VmHWM and CPU seconds of ``pid`` every ``interval`` s, with wall times."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        #: (wall time, VmRSS MiB, VmHWM MiB, CPU s of pid, busy CPU s of the whole machine)
        self.samples: list[tuple[float, float, float, float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            status = proc_status(self.pid)
            machine = psutil.cpu_times()
            busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
            self.samples.append(
                (time.time(), status["VmRSS"], status["VmHWM"], cpu_of(self.pid), busy)
            )
            self.halt.wait(self.interval)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)

    def at(self, wall: float) -> tuple[float, float, float, float, float] | None:
        """The last sample taken at or before ``wall``."""
        best = None
        for sample in self.samples:
            if sample[0] > wall:
                break
            best = sample
        return best

    def peak_rss(self, start: float = 0.0, end: float = float("inf")) -> float:
        return max((s[1] for s in self.samples if start <= s[0] <= end), default=0.0)

    def timeline(self, origin: float, every: float = 1.0) -> list[list[float]]:
        """[seconds since origin, VmRSS MiB, CPU s] about once per ``every`` seconds."""
        rows: list[list[float]] = []
        for wall, rss, _hwm, cpu, _busy in self.samples:
            if not rows or wall - origin - rows[-1][0] >= every:
                rows.append([round(wall - origin, 2), round(rss, 1), round(cpu, 2)])
        return rows


_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\d+\] \[\w+\] (.*)$")
MARKERS = {
    "assigned": "Setting newly assigned partitions",
    "highwaters": "Highwater for active changelog partitions",
    "starts": "active offsets at start of reading",
    "reading": "Restoring state from changelog topics",
    # The worker's bulk restore (processors/restore.py) before Faust's recovery.
    "restore": "Bulk restore of",
    "read": "Done reading from changelog topics",
    "ready": "Worker ready",
    "timer_index": "Timer index rebuilt for partitions",
}
_TIMER_INDEX = re.compile(r"Timer index rebuilt for partitions .*: (\d+) customers in ([\d.]+)s")
_RESTORED = re.compile(r"Restored (\d+) records of ")


@dataclass
class WorkerLog:
    """The first time each marker appeared (wall clock), and the recovery tables."""

    times: dict[str, float] = field(default_factory=dict)
    highwaters: dict[tuple[str, int], int] = field(default_factory=dict)
    starts: dict[tuple[str, int], int] = field(default_factory=dict)
    timer_index: tuple[int, float] | None = None
    #: Records the bulk restore read, and when its last table finished.
    restored_records: int = 0
    restored_at: float | None = None

    def records_to_read(self) -> int:
        """Changelog records recovery read: the bulk restore's, then what Faust's recovery
        had left (its highwater - persisted offset)."""
        return self.restored_records + sum(
            max(0, hw - self.starts.get(tp, -1)) for tp, hw in self.highwaters.items() if hw >= 0
        )

    def reading_window(self) -> tuple[float, float] | None:
        """(start, end) wall clock of reading changelogs: the bulk restore, then Faust's."""
        start = self.times.get("restore", self.times.get("reading"))
        end = self.times.get("read", self.restored_at)
        if self.restored_at is not None and end is not None:
            end = max(end, self.restored_at)
        return None if start is None or end is None else (start, end)


def _log_table(lines: Iterator[str]) -> dict[tuple[str, int], int]:
    """Rows ``| topic | partition | value |`` of a Faust log table (〃 = topic as above)."""
    rows: dict[tuple[str, int], int] = {}
    topic = ""
    for line in lines:
        if line.startswith("+") and rows:
            break
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].isdigit():
            continue
        topic = topic if cells[0] == "〃" else cells[0]
        rows[(topic, int(cells[1]))] = int(cells[2])
    return rows


def read_worker_log(path: Path) -> WorkerLog:
    parsed = WorkerLog()
    try:
        lines = iter(path.read_text(errors="replace").splitlines())
    except OSError:
        return parsed
    for line in lines:
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        stamp, message = match.groups()
        restored = _RESTORED.match(message)
        if restored is not None:
            parsed.restored_records += int(restored.group(1))
            parsed.restored_at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for name, marker in MARKERS.items():
            if marker in message and name not in parsed.times:
                parsed.times[name] = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if name == "highwaters":
                    parsed.highwaters = _log_table(lines)
                elif name == "starts":
                    parsed.starts = _log_table(lines)
                elif name == "timer_index":
                    found = _TIMER_INDEX.search(message)
                    if found:
                        parsed.timer_index = (int(found.group(1)), float(found.group(2)))
    return parsed


@dataclass
class Start:
    """One worker start: time to /readyz, recovery reading rate, CPU and memory."""

    label: str
    spawn_to_ready_s: float
    assigned_to_ready_s: float | None
    spawn_to_assigned_s: float | None
    reading_s: float | None
    records_read: int
    records_per_s: float | None
    cpu_s_to_ready: float
    cpu_s_reading: float | None
    #: Mean busy cores of the whole machine while reading (2 cores, shared: others run too).
    machine_busy_cores_reading: float | None
    broker_cpu_s_to_ready: float
    rss_peak_recovery_mb: float
    hwm_at_ready_mb: float
    rss_at_ready_mb: float
    timer_index_customers: int | None = None
    timer_index_s: float | None = None
    rss_settled_mb: float = 0.0
    hwm_settled_mb: float = 0.0
    local_state_bytes: int = 0
    rss_timeline: list[list[float]] = field(default_factory=list)


def start_worker(
    stack: BenchStack,
    settings: Settings,
    label: str,
    timeout: float,
    settle: float,
) -> tuple[Worker, Start, Sampler]:
    """Spawn a worker, wait for /readyz and for the timer index, measure; returns it running."""
    log_path = stack.scratch("logs") / f"worker-{label}.log"
    broker_pid = stack.kafka.pid
    broker_cpu = cpu_of(broker_pid)
    worker = Worker(settings, log_path)
    spawned = time.time()
    worker.start()
    sampler = Sampler(worker.pid)
    sampler.start()
    wait_until(worker.ready, timeout, f"the {label} worker's /readyz", interval=0.05)
    ready = time.time()
    cpu_ready = cpu_of(worker.pid)
    broker_cpu_ready = cpu_of(broker_pid) - broker_cpu
    status = proc_status(worker.pid)
    wait_timer_index(worker, log_path, timeout)
    time.sleep(settle)
    settled = proc_status(worker.pid)
    log = read_worker_log(log_path)
    times = log.times
    assigned = times.get("assigned")
    window = log.reading_window()
    reading, read = window if window is not None else (None, None)
    records = log.records_to_read()
    reading_s = read - reading if reading is not None and read is not None else None
    cpu_reading = busy_reading = None
    if reading is not None and read is not None:
        before, after = sampler.at(reading), sampler.at(read)
        if before is not None and after is not None and after[0] > before[0]:
            cpu_reading = after[3] - before[3]
            busy_reading = (after[4] - before[4]) / (after[0] - before[0])
    result = Start(
        label=label,
        spawn_to_ready_s=ready - spawned,
        assigned_to_ready_s=None if assigned is None else ready - assigned,
        spawn_to_assigned_s=None if assigned is None else assigned - spawned,
        reading_s=reading_s,
        records_read=records,
        records_per_s=records / reading_s if reading_s else None,
        cpu_s_to_ready=cpu_ready,
        cpu_s_reading=cpu_reading,
        machine_busy_cores_reading=busy_reading,
        broker_cpu_s_to_ready=broker_cpu_ready,
        rss_peak_recovery_mb=sampler.peak_rss(spawned, ready),
        hwm_at_ready_mb=status["VmHWM"],
        rss_at_ready_mb=status["VmRSS"],
        timer_index_customers=None if log.timer_index is None else log.timer_index[0],
        timer_index_s=None if log.timer_index is None else log.timer_index[1],
        rss_settled_mb=settled["VmRSS"],
        hwm_settled_mb=settled["VmHWM"],
        local_state_bytes=dir_bytes(Path(settings.data_dir)),
    )
    return worker, result, sampler


def wait_timer_index(worker: Worker, log_path: Path, timeout: float) -> WorkerLog:
    """After /readyz the first timer tick rebuilds the due index (it scans the table)."""
    deadline = time.monotonic() + timeout
    log = read_worker_log(log_path)
    while log.timer_index is None and time.monotonic() < deadline:
        worker.check_alive("the worker")
        time.sleep(0.5)
        log = read_worker_log(log_path)
    return log


def profile_recovery(
    stack: BenchStack, settings: Settings, out_dir: Path, seconds: float, timeout: float
) -> dict[str, Any]:
    """py-spy over ``seconds`` of a cold recovery's reading; then, if the worker is ready by
    then, over its timer index rebuild. The worker is stopped at the end either way."""
    log_path = stack.scratch("logs") / "worker-profiled.log"
    worker = Worker(settings, log_path).start()
    spy: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {"py_spy_seconds": seconds}
    try:
        # The reading of the changelogs, not the imports and the group join.
        wait_until(
            lambda: "reading" in read_worker_log(log_path).times or worker.ready(),
            timeout,
            "the profiled worker to start reading its changelogs",
            interval=0.1,
        )
        started = time.monotonic()
        spy = py_spy(worker.pid, out_dir / "recovery.raw", seconds)
        wait_until(
            lambda: worker.ready() or spy is None or spy.poll() is not None,
            timeout,
            "the profiled worker's /readyz or the end of the profile",
            interval=0.1,
        )
        stop_py_spy(spy)
        spy = None
        result["profiled_s"] = round(time.monotonic() - started, 1)
        result["recovery"] = summarize_profile(out_dir / "recovery.raw")
        result["ready_within_profile"] = worker.ready()
        if result["ready_within_profile"]:
            spy = py_spy(worker.pid, out_dir / "after-ready.raw")
            wait_timer_index(worker, log_path, timeout)
            time.sleep(1.0)
            stop_py_spy(spy)
            spy = None
            result["after_ready"] = summarize_profile(out_dir / "after-ready.raw")
    finally:
        if spy is not None:
            stop_py_spy(spy)
        worker.stop()
    log = read_worker_log(log_path)
    if "reading" in log.times and "read" in log.times:
        reading_s = log.times["read"] - log.times["reading"]
        result["reading_s"] = round(reading_s, 1)
        result["records_per_s"] = round(log.records_to_read() / reading_s)
    if log.timer_index is not None:
        result["timer_index_customers"], result["timer_index_s"] = log.timer_index
    return result


# --- load after recovery ----------------------------------------------------------------------


def send_load(settings: Settings, fill: Fill, events: int, seed: int) -> float:
    """``events`` bench-mix events for random customers of the N; returns the send seconds."""
    rng = random.Random(seed + 2)
    names, weights, builders = zip(*((n, w, b) for n, w, b in MIX), strict=True)
    producer = Producer({**settings.kafka_client_config(), **PRELOAD_CONFIG})
    tag = uuid.uuid4().hex[:8]
    started = time.monotonic()
    picks = rng.choices(range(len(names)), weights=weights, k=events)
    now = rfc3339_now()
    for n, pick in enumerate(picks):
        if n % 1000 == 0:
            now = rfc3339_now()
        index = rng.randrange(fill.customers)
        cid = customer_id(index)
        home = fill.flat[fill.assignment[index]].home
        channel, payload = builders[pick](rng, home)
        event = {
            "event_id": f"load-{tag}-{n}",
            "type": names[pick],
            "occurred_at": now,
            "channel": channel,
            "customer_id": cid,
            "payload": payload,
        }
        while True:
            try:
                producer.produce(settings.touchpoint_topic(channel), orjson.dumps(event), cid)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("load: events not delivered within 120 s")
    return time.monotonic() - started


# --- the restore ceiling: a bulk reader writing Faust's RocksDB files ---------------------------

#: RocksDB options of the ceiling (faust.stores.rocksdb.RocksDBOptions keyword arguments).
#: "faust": what the worker's tables use today (64 MiB write buffers x 3, 2 GiB block cache
#: per partition DB); "small": bounded memtables, for the RSS question.
ROCKSDB_PROFILES: dict[str, dict[str, int]] = {
    "faust": {},
    "small": {
        "write_buffer_size": 16 * 1024 * 1024,
        "max_write_buffer_number": 2,
        "block_cache_size": 32 * 1024 * 1024,
    },
}
OFFSET_KEY = b"__faust\0offset__"  # faust.stores.rocksdb.Store.offset_key


def restore_child(data_dir: Path, profile: str, out: Path) -> int:
    """Restore the tables' changelogs into ``data_dir`` in bulk, as a worker could.

    confluent-kafka consumes whole batches, one rocksdict ``WriteBatch`` per partition
    per batch, and the persisted offset Faust's recovery starts from, into the files
    a worker with this data dir opens (``v1/tables/<table>-<partition>.db``). Runs in
    its own process (``--restore-into``) so its RSS is its own.
    """
    import rocksdict
    from faust.stores.rocksdb import RocksDBOptions

    settings = Settings()
    options = RocksDBOptions(**cast(dict[str, Any], ROCKSDB_PROFILES[profile]))
    tables_dir = data_dir / "v1" / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.monotonic(), os.times()
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"restore-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
        }
    )
    dbs: dict[tuple[str, int], Any] = {}
    last: dict[tuple[str, int], int] = {}
    topic_table: dict[str, str] = {}
    wanted: dict[tuple[str, int], int] = {}
    for table in TABLES:
        topic = changelog_topic(settings, table)
        topic_table[topic] = table
        for partition in range(settings.partitions):
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
            if high > 0:
                wanted[(topic, partition)] = high - 1
            path = tables_dir / f"{table}-{partition}.db"
            dbs[(topic, partition)] = options.open(path)
    consumer.assign([TopicPartition(t, p, 0) for t, p in wanted])
    records = 0
    memtables_peak = 0
    pending = set(wanted)
    while pending:
        messages = consumer.consume(10_000, timeout=0.2)
        batches: dict[tuple[str, int], Any] = {}
        for message in messages:
            if message.error() is not None:
                continue
            tp = (message.topic() or "", message.partition() or 0)
            batch = batches.get(tp)
            if batch is None:
                batch = batches[tp] = rocksdict.WriteBatch(raw_mode=True)
            key, value = message.key() or b"", message.value()
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
            last[tp] = message.offset() or 0
        for tp, batch in batches.items():
            batch.put(OFFSET_KEY, str(last[tp]).encode())
            dbs[tp].write(batch)
            if last[tp] >= wanted[tp]:
                pending.discard(tp)
        records += len(messages)
        memtables_peak = max(memtables_peak, _rocksdb_total(dbs, "rocksdb.cur-size-all-mem-tables"))
    read_s = time.monotonic() - started
    status = proc_status(os.getpid())
    memtables = _rocksdb_total(dbs, "rocksdb.cur-size-all-mem-tables")
    for db in dbs.values():
        db.flush()  # leave SST files, not a WAL to replay, to the worker
        db.close()
    consumer.close()
    cpu = os.times()
    result = {
        "profile": profile,
        "rocksdb_options": ROCKSDB_PROFILES[profile],
        "records": records,
        "read_s": read_s,
        "records_per_s": records / read_s,
        "total_s": time.monotonic() - started,
        "cpu_s": (cpu.user + cpu.system) - (cpu_started.user + cpu_started.system),
        "rss_mb": status["VmRSS"],
        "hwm_mb": status["VmHWM"],
        "memtables_mb": memtables / MIB,
        "memtables_peak_mb": memtables_peak / MIB,
        "local_state_bytes": dir_bytes(data_dir),
    }
    out.write_bytes(orjson.dumps(result))
    return 0


def _rocksdb_total(dbs: dict[tuple[str, int], Any], name: str) -> int:
    total = 0
    for db in dbs.values():
        try:
            total += int(db.property_int_value(name) or 0)
        except Exception:  # property not available in this build
            return 0
    return total


def run_restore_ceiling(
    stack: BenchStack, settings: Settings, profile: str, timeout: float
) -> dict[str, Any]:
    data_dir = stack.scratch(f"restore-{profile}") / "worker"
    out = stack.scratch("logs") / f"restore-{profile}.json"
    argv = ["-m", "bench.recovery", "--restore-into", str(data_dir), "--rocksdb", profile]
    log_path = stack.scratch("logs") / f"restore-{profile}.log"
    child = Child([*argv, "--result", str(out)], settings, log_path)
    child.start()
    try:
        wait_until(lambda: not child.alive(), timeout, f"the {profile} restore", interval=0.2)
    finally:
        child.stop()
    if not out.is_file():
        raise RuntimeError(f"restore {profile} failed: {tail(child.log_path, 30)}")
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    result["data_dir"] = str(data_dir)
    return result


# --- py-spy -----------------------------------------------------------------------------------


def py_spy(pid: int, output: Path, seconds: float | None = None) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` (raw collapsed stacks) until stopped or ``seconds``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(PY_SPY), "record", "-p", str(pid), "-f", "raw", "-o", str(output)]
    argv += ["--threads", "--nonblocking", "-r", "100"]
    if seconds:
        argv += ["-d", str(max(1, int(seconds)))]
    log = open(output.with_suffix(".log"), "wb")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT makes py-spy write its output; kill it if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


_FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")


def _function(frame: str) -> str:
    """``func (path:line)`` -> ``func (file)``: samples per function, not per line."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    name, path, _line = match.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


#: Buckets of the profile: a sample counts in the first bucket whose marker is in its stack.
BUCKETS: tuple[tuple[str, str], ...] = (
    ("timer index rebuild (CustomerProcessor.rebuild_due)", "rebuild_due ("),
    ("RocksDB writes (Store.apply_changelog_batch)", "apply_changelog_batch ("),
    ("recovery loop per message (Recovery._slurp_changelogs)", "_slurp_changelogs ("),
    ("delivery to the changelog queue (Consumer._drain_messages)", "_drain_messages ("),
    ("aiokafka fetch/decode (consumer thread)", "aiokafka/"),
    ("customer agent (CustomerProcessor.process)", "process (processors/customer.py)"),
    ("event loop itself (scheduling, callbacks, select)", "BaseEventLoop._run_once ("),
)


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self and by inclusive samples, and the share of each bucket."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {"file": str(path), "samples": 0}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            threads[frames[0]] += count
            frames = frames[1:]
        if not frames:
            continue
        total += count
        functions = [_function(f) for f in frames]
        self_counts[functions[-1]] += count
        for function in set(functions):
            inclusive[function] += count
        for name, marker in BUCKETS:
            if any(marker in f for f in functions):
                buckets[name] += count
                break
        else:
            buckets["other"] += count

    def shares(counter: Counter[str], n: int) -> list[list[Any]]:
        return [[name, round(c / total * 100, 1)] for name, c in counter.most_common(n)]

    return {
        "file": str(path),
        "samples": total,
        "threads_samples": dict(threads),
        "buckets_pct": shares(buckets, len(buckets)),
        "self_pct": shares(self_counts, top),
        "inclusive_pct": shares(inclusive, top + 10),
    }


# --- the run --------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n")[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--events", type=int, default=50_000, help="load after recovery (0: none)")
    p.add_argument("--templates", type=int, default=400, help="distinct customer records")
    p.add_argument("--settle", type=float, default=10.0, help="seconds before settled RSS")
    p.add_argument("--timeout", type=float, default=1200.0, help="longest wait for /readyz")
    p.add_argument("--no-warm", action="store_true", help="skip the restart on kept RocksDB")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy recovery")
    p.add_argument(
        "--profile-seconds",
        type=float,
        default=60.0,
        help="py-spy records at most this long of the changelog reading (it slows the worker)",
    )
    p.add_argument("--profile-out", type=Path, help="keep py-spy's raw profiles in this folder")
    p.add_argument(
        "--no-ceiling", action="store_true", help="skip the bulk restore (confluent-kafka)"
    )
    # Internal: the bulk restore child process.
    p.add_argument("--restore-into", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--rocksdb", choices=sorted(ROCKSDB_PROFILES), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--note", default="", help="free text saved with the results (what was run)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and data (debugging)")
    return p.parse_args(argv)


def wait_processed(worker: Worker, events: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        processed = worker.processed()
        if processed >= events:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"load: {processed:.0f}/{events} processed after {timeout:.0f} s")
        time.sleep(1.0 if events - processed > 5000 else 0.2)


def run(stack: BenchStack, args: argparse.Namespace, result: dict[str, Any]) -> None:
    settings = stack.settings("recovery", partitions=args.partitions)
    stack.create_topics(settings, [])
    say(f"namespace {settings.topic_namespace}*, app {settings.app_id}")

    # 1. The changelog topics, created by the worker itself.
    creator = Worker(settings, stack.scratch("logs") / "worker-create.log").start()
    try:
        wait_until(creator.ready, 180, "the first worker's /readyz", interval=0.1)
    finally:
        creator.stop()
    result["changelog_topics"] = check_changelogs(settings)

    # 2. Templates and the fill.
    started = time.monotonic()
    templates = build_templates(settings, args.templates, args.seed)
    result["templates"] = {
        "build_s": round(time.monotonic() - started, 2),
        "tiers": template_summary(templates),
    }
    say(f"built {sum(len(t) for t in templates.values())} templates")
    for row in result["templates"]["tiers"]:
        say(
            f"  {row['tier']:>12}: {row['share']:.0%} of customers, {row['events']} events, "
            f"state {row['state_bytes_mean']:,.0f} B, timeline {row['timeline_bytes_mean']:,.0f} B"
        )
    fill = fill_changelogs(settings, templates, args.customers, args.seed)
    checked = verify_sample(settings, fill)
    time.sleep(2)  # segment files are written; sizes settle
    topics = [changelog_topic(settings, t) for t in ("customers", "timelines")]
    result["changelogs"] = {
        "customers": args.customers,
        "fill_s": round(fill.seconds, 1),
        "fill_records_per_s": round(sum(fill.records.values()) / fill.seconds),
        "records": dict(fill.records),
        "key_value_bytes": dict(fill.key_value_bytes),
        "broker_log_bytes": {t: topic_disk_bytes(stack, t) for t in topics},
        "mean_record_bytes": round(fill.value_bytes[topics[0]] / args.customers),
        "tier_counts": dict(fill.tier_counts),
        "verified_records": checked,
    }
    cl = result["changelogs"]
    say(
        f"filled {sum(fill.records.values()):,} records in {fill.seconds:.1f}s: "
        f"{sum(cl['key_value_bytes'].values()) / MIB:,.0f} MiB key+value, "
        f"{sum(cl['broker_log_bytes'].values()) / MIB:,.0f} MiB on the broker (lz4)"
    )

    # 3. Cold recovery: an empty data dir.
    cold_settings = settings.model_copy(update={"data_dir": str(stack.scratch("cold") / "worker")})
    say("cold start (empty data dir) ...")
    worker, cold, sampler = start_worker(stack, cold_settings, "cold", args.timeout, args.settle)
    try:
        origin = sampler.samples[0][0]
        say(
            f"cold: /readyz {cold.spawn_to_ready_s:.1f}s after spawn, "
            f"{cold.assigned_to_ready_s or 0:.1f}s after assignment; "
            f"{cold.records_read:,} records at {cold.records_per_s or 0:,.0f}/s; "
            f"peak RSS {cold.rss_peak_recovery_mb:,.0f} MiB, "
            f"settled {cold.rss_settled_mb:,.0f} MiB; "
            f"timer index {cold.timer_index_s}s"
        )
        # 4. Load for random customers of the N.
        load: dict[str, Any] = {"events": args.events}
        if args.events:
            say(f"load: {args.events:,} events for random customers ...")
            before = worker.processed()
            load_started = time.monotonic()
            load["send_s"] = round(send_load(cold_settings, fill, args.events, args.seed), 2)
            done = wait_processed(worker, int(before) + args.events, args.timeout)
            load["processed_s"] = round(done - load_started, 2)
            load["events_per_s"] = round(args.events / (done - load_started))
            status = proc_status(worker.pid)
            load["rss_after_mb"], load["hwm_after_mb"] = status["VmRSS"], status["VmHWM"]
            time.sleep(args.settle)
            status = proc_status(worker.pid)
            load["rss_settled_mb"], load["hwm_settled_mb"] = status["VmRSS"], status["VmHWM"]
            load["local_state_bytes"] = dir_bytes(Path(cold_settings.data_dir))
            say(
                f"load: {load['events_per_s']:,} events/s; RSS {load['rss_settled_mb']:,.0f} MiB, "
                f"VmHWM {load['hwm_settled_mb']:,.0f} MiB"
            )
        cold.rss_timeline = sampler.timeline(origin)
    finally:
        sampler.stop()
        worker.stop()
    result["cold"] = asdict(cold)
    result["load"] = load

    # 5. Warm restart on the kept RocksDB.
    if not args.no_warm:
        say("warm restart (kept data dir) ...")
        worker, warm, sampler = start_worker(stack, cold_settings, "warm", args.timeout, 2.0)
        sampler.stop()
        worker.stop()
        warm.rss_timeline = sampler.timeline(sampler.samples[0][0])
        result["warm"] = asdict(warm)
        say(
            f"warm: /readyz {warm.spawn_to_ready_s:.1f}s after spawn, "
            f"{warm.assigned_to_ready_s or 0:.1f}s after assignment, "
            f"{warm.records_read:,} records replayed"
        )

    # The disk is shared: free the cold data dir first.
    shutil.rmtree(cold_settings.data_dir, ignore_errors=True)

    # 6. The restore ceiling, and a worker started on what it restored.
    if not args.no_ceiling:
        ceiling: dict[str, Any] = {}
        for profile in ROCKSDB_PROFILES:
            say(f"bulk restore ({profile} RocksDB options) ...")
            restored = run_restore_ceiling(stack, settings, profile, args.timeout)
            say(
                f"bulk restore ({profile}): {restored['records']:,} records in "
                f"{restored['read_s']:.1f}s ({restored['records_per_s']:,.0f}/s), "
                f"VmHWM {restored['hwm_mb']:,.0f} MiB, memtables peak "
                f"{restored['memtables_peak_mb']:,.0f} MiB"
            )
            if profile == "faust":
                on_restored = settings.model_copy(update={"data_dir": restored["data_dir"]})
                worker, after, sampler = start_worker(
                    stack, on_restored, "after-restore", args.timeout, 2.0
                )
                sampler.stop()
                worker.stop()
                restored["worker_start"] = {
                    k: v for k, v in asdict(after).items() if k != "rss_timeline"
                }
                say(
                    f"worker on the restored data dir: /readyz {after.spawn_to_ready_s:.1f}s "
                    f"after spawn, {after.assigned_to_ready_s or 0:.1f}s after assignment, "
                    f"{after.records_read:,} records replayed"
                )
            shutil.rmtree(Path(restored["data_dir"]).parent, ignore_errors=True)
            ceiling[profile] = restored
        result["restore_ceiling"] = ceiling

    # 7. A profiled cold recovery.
    if not args.no_profile:
        profile_dir = stack.scratch("profile")
        prof_settings = settings.model_copy(
            update={"data_dir": str(stack.scratch("profiled") / "worker")}
        )
        say(f"profiled cold start (py-spy, at most {args.profile_seconds:g}s of reading) ...")
        result["profiled"] = profile_recovery(
            stack, prof_settings, profile_dir, args.profile_seconds, args.timeout
        )
        shutil.rmtree(prof_settings.data_dir, ignore_errors=True)
        if args.profile_out is not None:
            args.profile_out.mkdir(parents=True, exist_ok=True)
            for raw in profile_dir.glob("*.raw"):
                (args.profile_out / raw.name).write_bytes(raw.read_bytes())
            say(f"py-spy raw profiles (collapsed stacks) copied to {args.profile_out}")


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    cold = result.get("cold") or {}
    load = result.get("load") or {}
    hwm = max(cold.get("hwm_settled_mb", 0.0), load.get("hwm_settled_mb", 0.0))
    rss = max(cold.get("rss_settled_mb", 0.0), load.get("rss_settled_mb", 0.0))
    recovery = cold.get("assigned_to_ready_s")
    return {
        "recovery_s_assigned_to_ready": recovery,
        "recovery_target_s": TARGET_RECOVERY_S,
        "recovery_ok": recovery is not None and recovery <= TARGET_RECOVERY_S,
        "peak_rss_mb": hwm,
        "rss_mb": rss,
        "rss_target_mb": TARGET_RSS_MB,
        "rss_ok": hwm <= TARGET_RSS_MB,
    }


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(result: dict[str, Any]) -> str:
    v = result["verdict"]
    cl = result.get("changelogs", {})
    cold = result.get("cold", {})
    load = result.get("load", {})
    warm = result.get("warm", {})
    kv = sum(cl.get("key_value_bytes", {}).values()) / MIB
    disk = sum(cl.get("broker_log_bytes", {}).values()) / MIB
    lines = [
        f"### State: {result['config']['customers']:,} customers "
        f"({result['config']['partitions']} partitions), {result['finished_at'][:16]}Z",
        "",
        *([f"Measured: {result['config']['note']}", ""] if result["config"].get("note") else []),
        f"Changelogs: {sum(cl.get('records', {}).values()):,} records (one per customer: "
        f"state and timeline), {kv:,.0f} MiB key+value, {disk:,.0f} MiB on the broker (lz4); "
        f"mean record {_f(cl.get('mean_record_bytes'), 0)} B (bench/results/state-size.md).",
        "",
        "| | target | measured | |",
        "| --- | --- | --- | --- |",
        f"| recovery, assigned -> /readyz (empty data dir) | <= {TARGET_RECOVERY_S:.0f} s | "
        f"{_f(v['recovery_s_assigned_to_ready'])} s | {'ok' if v['recovery_ok'] else 'MISSED'} |",
        f"| worker peak RSS (VmHWM, recovery + load) | <= {TARGET_RSS_MB:,.0f} MiB | "
        f"{_f(v['peak_rss_mb'], 0)} MiB | {'ok' if v['rss_ok'] else 'MISSED'} |",
        "",
        "| start | spawn -> ready s | assigned -> ready s | records read | records/s "
        "| CPU µs/record | machine busy cores | peak RSS MiB | RSS settled MiB | timer index s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run_ in (("cold (empty RocksDB)", cold), ("warm (kept RocksDB)", warm)):
        if not run_:
            continue
        per_record = (
            run_["cpu_s_reading"] / run_["records_read"] * 1e6
            if run_.get("cpu_s_reading") and run_["records_read"]
            else None
        )
        lines.append(
            f"| {name} | {_f(run_['spawn_to_ready_s'])} | {_f(run_['assigned_to_ready_s'])} "
            f"| {_f(run_['records_read'])} | {_f(run_['records_per_s'], 0)} "
            f"| {_f(per_record, 0)} | {_f(run_.get('machine_busy_cores_reading'), 2)} "
            f"| {_f(run_['rss_peak_recovery_mb'], 0)} "
            f"| {_f(run_['rss_settled_mb'], 0)} | {_f(run_['timer_index_s'], 2)} |"
        )
    lines += [
        "",
        f"Load average before/after: {result.get('loadavg_before')} / "
        f"{result.get('loadavg_after')} (2 shared cores: wall times move with the neighbours; "
        "CPU µs/record much less).",
    ]
    if load.get("events"):
        lines += [
            "",
            f"After {load['events']:,} events for random customers ({_f(load.get('events_per_s'))} "
            f"events/s): VmRSS {_f(load.get('rss_settled_mb'), 0)} MiB, VmHWM "
            f"{_f(load.get('hwm_settled_mb'), 0)} MiB; local RocksDB "
            f"{(load.get('local_state_bytes') or 0) / MIB:,.0f} MiB.",
        ]
    ceiling = result.get("restore_ceiling") or {}
    if ceiling:
        lines += [
            "",
            "Bulk restore ceiling (confluent-kafka + rocksdict WriteBatch, own process):",
            "",
            "| RocksDB options | records/s | read s | CPU µs/record | VmHWM MiB "
            "| memtables peak MiB |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in ceiling.items():
            options = ", ".join(
                f"{k}={v // 2**20} MiB" if k.endswith("_size") else f"{k}={v}"
                for k, v in row["rocksdb_options"].items()
            )
            lines.append(
                f"| {name} ({options or 'the worker defaults'}) "
                f"| {_f(row['records_per_s'], 0)} | {_f(row['read_s'])} "
                f"| {_f(row['cpu_s'] / max(1, row['records']) * 1e6, 0)} "
                f"| {_f(row['hwm_mb'], 0)} | {_f(row['memtables_peak_mb'], 0)} |"
            )
        after = (ceiling.get("faust") or {}).get("worker_start")
        if after:
            lines += [
                "",
                f"A worker started on the restored data dir: /readyz "
                f"{_f(after['assigned_to_ready_s'])} s after assignment, "
                f"{_f(after['records_read'])} records replayed.",
            ]
    profiled = result.get("profiled") or {}
    for part, title in (
        ("recovery", "reading the changelogs"),
        ("after_ready", "after /readyz (timer index rebuild)"),
    ):
        summary = profiled.get(part)
        if summary and summary.get("samples"):
            lines += ["", f"Profile of a cold recovery, {title} (py-spy, share of samples):", ""]
            for bucket, pct in summary.get("buckets_pct", []):
                lines.append(f"- {bucket}: {pct}%")
    if result.get("error"):
        lines += ["", f"**The run failed:** {result['error']}"]
    return "\n".join(lines) + "\n"


def code_version() -> dict[str, Any]:
    """The commit measured and whether processors/ had local changes (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "processors"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return {}
    return {"commit": commit or None, "processors_modified": bool(dirty) if commit else None}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.restore_into is not None:
        return restore_child(args.restore_into, args.rocksdb or "faust", args.result)
    terminate_as_interrupt()
    result: dict[str, Any] = {
        "config": {
            "argv": " ".join(argv),
            "customers": args.customers,
            "partitions": args.partitions,
            "events": args.events,
            "templates": args.templates,
            "seed": args.seed,
            "note": args.note,
            "tiers": [asdict(t) for t in TIERS],
        },
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kafka": KAFKA_VERSION,
            "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        },
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "code": code_version(),
    }
    status = 0
    try:
        with bench_stack(keep_workdir=args.keep_workdir) as stack:
            say(f"Kafka {stack.bootstrap}, Redis {stack.redis_url}, workdir {stack.workdir}")
            try:
                run(stack, args, result)
            except Exception as exc:  # keep what was measured before the failure
                result["error"] = f"{type(exc).__name__}: {exc}"
                say(f"failed: {result['error']}; writing what was measured")
                status = 1
    except KeyboardInterrupt:
        say("interrupted: everything started was stopped")
        return 130
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["verdict"] = verdict(result)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "recovery.json").write_bytes(
        orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    text = markdown(result)
    (args.results_dir / "recovery.md").write_text(text)
    print(text)
    say(f"wrote {args.results_dir / 'recovery.json'} and recovery.md")
    return status


if __name__ == "__main__":
    sys.exit(main())
