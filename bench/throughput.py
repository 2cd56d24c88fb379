"""Throughput: each variant drains the same preloaded backlog with its own consumer group.

Measured window, the same for all: from the moment the variant can consume
(partitions assigned: the loops' ``on_assign``, Quix's ``_on_assign``; naive
Faust: assigned and tables recovered, polled in-process every 10 ms; the
worker's first ``/readyz`` 200, i.e. assigned *and* table recovered) until it
has processed all N events, or until ``window`` seconds have passed (the slow
window: a variant too slow to drain the backlog in that time reports events/s
over the events it processed, ``RunResult.events``). Process start-up, imports
and group join are outside the window (reported separately as ``startup_s``);
the worker's readiness poll runs every 20 ms and its progress poll every 100 ms
near the end, so its window is exact to ~0.1 s.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.procs import Child, Worker, metric_samples, metric_sum, wait_until
from bench.procstats import cpu_seconds, peak_rss_mb
from bench.quixenv import ensure_quix_venv
from bench.stack import BenchStack
from processors.settings import Settings

VARIANTS = {
    "a": "ceiling",
    "b": "hand-written",
    "c": "worker",
    "d": "naive Faust",
    "e": "Quix Streams",
    # The worker on the same events where every one but the home profiles names its
    # customer by MSISDN only: the cost of identity resolution (one more hop each).
    "i": "worker, identified events",
}
#: Progress poll of the worker's /metrics. A scrape is not free for the worker
#: (prometheus_client renders every series under the GIL: ~10% of its CPU at
#: 10 Hz in a first profile), so we poll at 1 Hz and only go to 10 Hz, the
#: resolution of the window's end, when the end is near.
FINE_POLL_S = 0.1
COARSE_POLL_S = 1.0
#: Give up when the count has not moved for this long (a stuck run, not a slow one).
STALL_S = 120.0


def ceiling_topic(settings: Settings) -> str:
    return f"{settings.topic_namespace}bench.ceiling-out"


def changelog_topic(settings: Settings) -> str:
    return f"{settings.topic_namespace}bench.hand-changelog"


def extra_topics(settings: Settings) -> list[str]:
    return [ceiling_topic(settings), changelog_topic(settings)]


@dataclass
class RunResult:
    variant: str
    repetition: int
    #: Events in the window: the backlog, or fewer when the slow window cut the run.
    events: int
    #: Assignment/readiness -> N events processed.
    seconds: float
    #: First processed batch -> N events processed (excludes the first fetch).
    seconds_from_first: float | None
    cpu_s: float
    peak_rss_mb: float
    #: Spawn -> assignment/readiness (imports, group join, table recovery).
    startup_s: float
    broker_cpu_s: float
    redis_cpu_s: float
    triggers: int
    deadletters: int
    #: Worker only: mean events per agent batch (small batches mean per-batch costs dominate).
    mean_batch: dict[str, float] | None = None
    #: Events preloaded (``events`` is smaller when the slow window cut the run).
    backlog: int | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "name": VARIANTS[self.variant],
            "events_per_s": self.events_per_s,
            "cpu_us_per_event": self.cpu_us_per_event,
            "broker_cpu_us_per_event": self.broker_cpu_s / self.events * 1e6,
            "redis_cpu_us_per_event": self.redis_cpu_s / self.events * 1e6,
        }


class ServiceCpu:
    """CPU of the broker and Redis over the measured window: on 2 cores they compete."""

    def __init__(self, stack: BenchStack) -> None:
        self.pids = (stack.kafka.pid, stack.redis_server.pid)
        self.start = self._read()

    def _read(self) -> tuple[float, float]:
        broker, redis_cpu = (cpu_seconds(pid) if pid else 0.0 for pid in self.pids)
        return broker, redis_cpu

    def used(self) -> tuple[float, float]:
        now = self._read()
        return now[0] - self.start[0], now[1] - self.start[1]


def run_worker(
    stack: BenchStack,
    settings: Settings,
    events: int,
    repetition: int,
    log_dir: Path,
    window: float = 0.0,
    variant: str = "c",
) -> RunResult:
    """(c): start the worker on the backlog, time readiness -> N processed (or the window)."""
    with Worker(settings, log_dir / f"worker-r{repetition}.log") as worker:
        print(f"    worker pid {worker.pid}", file=sys.stderr)
        spawned = time.monotonic()
        ready_at = wait_until(worker.ready, 180, "the worker's /readyz")
        cpu_at_ready, services = cpu_seconds(worker.pid), ServiceCpu(stack)
        first_at, timed = _wait_processed(worker, events, ready_at, window)
        done_at = time.monotonic()
        cpu_s = cpu_seconds(worker.pid) - cpu_at_ready
        broker_s, redis_s = services.used()
        metrics = worker.metrics()
        rss = peak_rss_mb(worker.pid)
    return RunResult(
        variant,
        repetition,
        timed,
        done_at - ready_at,
        None if first_at is None else done_at - first_at,
        cpu_s,
        rss,
        ready_at - spawned,
        broker_s,
        redis_s,
        int(metric_sum(metrics, "omni_triggers_emitted_total")),
        int(metric_sum(metrics, "omni_events_deadlettered_total")),
        mean_batches(metrics),
        backlog=events,
    )


def mean_batches(metrics: str) -> dict[str, float]:
    sums = metric_samples(metrics, "omni_batch_events_sum")
    counts = metric_samples(metrics, "omni_batch_events_count")
    return {
        labels.split('"')[1]: sums[labels] / counts[labels] for labels in sums if counts.get(labels)
    }


def _wait_processed(
    worker: Worker, events: int, ready_at: float, window: float = 0.0
) -> tuple[float | None, int]:
    """Poll the processed counter until it reaches ``events`` or ``window`` s passed.

    Returns when the counter first moved, and the events processed at the end.
    """
    first_at: float | None = None
    last, last_change = 0.0, time.monotonic()
    while True:
        processed = worker.processed()
        now = time.monotonic()
        if processed > 0 and first_at is None:
            first_at = now
        if processed >= events:
            return first_at, events
        if window and processed > 0 and now - ready_at >= window:
            return first_at, int(processed)
        if processed != last:
            last, last_change = processed, now
        elif now - last_change > STALL_S:
            raise TimeoutError(f"worker stuck at {processed:.0f}/{events} events processed")
        interval = _poll_interval(processed, events, now - (first_at or now))
        if window:
            interval = min(interval, max(FINE_POLL_S, (ready_at + window - now) / 4))
        time.sleep(interval)


def _poll_interval(processed: float, events: int, elapsed: float) -> float:
    """Fine while waiting for the first event and near the end; coarse in between."""
    if processed <= 0 or elapsed <= 0:
        return FINE_POLL_S
    seconds_left = (events - processed) / (processed / elapsed)
    return min(COARSE_POLL_S, max(FINE_POLL_S, seconds_left / 4))


def loop_argv(
    variant: str,
    settings: Settings,
    run_dir: Path,
    expect: int,
    batch: int,
    window: float = 0.0,
) -> list[str]:
    common = [
        "--group",
        f"{settings.app_id}-{variant}",
        "--expect",
        str(expect),
        "--result",
        str(run_dir / "result.json"),
        "--ready",
        str(run_dir / "ready"),
        "--done",
        str(run_dir / "done"),
        "--window",
        str(window),
    ]
    if variant in FRAMEWORK_MODULES:
        return ["-m", FRAMEWORK_MODULES[variant], *common, "--state-dir", str(run_dir / "state")]
    return [
        "-m",
        "bench.loops",
        VARIANTS_LOOP[variant],
        *common,
        "--batch",
        str(batch),
        "--out-topic",
        ceiling_topic(settings),
        "--changelog-topic",
        changelog_topic(settings),
        "--state-dir",
        str(run_dir / "rocksdb"),
    ]


VARIANTS_LOOP = {"a": "ceiling", "b": "hand"}
#: The framework variants, each its own module with ``bench.loops``' CLI and result file.
FRAMEWORK_MODULES = {"d": "bench.naive_faust", "e": "bench.quix_loop"}
#: Spawn -> assignment. Quix's on-assign makes two broker round trips per assigned
#: partition (13 topics x 8), each behind the consumer's fetch long-poll (~0.5 s): 1-2 min.
READY_TIMEOUT_S = {"e": 300.0}


def loop_interpreter(variant: str) -> Path | None:
    """(e) runs in the Quix Streams venv (made on first use); the others in ours (None)."""
    if variant == "e":
        return ensure_quix_venv()
    return None


def run_loop_variant(
    stack: BenchStack,
    settings: Settings,
    variant: str,
    events: int,
    repetition: int,
    batch: int,
    window: float = 0.0,
) -> RunResult:
    """(a), (b), (d) or (e): run its module until it has processed the backlog (or the window)."""
    run_dir = stack.scratch(f"{settings.app_id}-{variant}")
    child = Child(
        loop_argv(variant, settings, run_dir, events, batch, window),
        settings,
        run_dir / "loop.log",
        interpreter=loop_interpreter(variant),
    )
    with child:
        spawned = time.monotonic()
        ready_at = wait_until(
            lambda: marker_reached(child, run_dir / "ready"),
            READY_TIMEOUT_S.get(variant, 120.0),
            "assignment",
        )
        services = ServiceCpu(stack)
        wait_until(
            lambda: marker_reached(child, run_dir / "done"),
            max(600.0, events / 100),
            f"{VARIANTS[variant]} to process {events} events",
            interval=0.05,
        )
        broker_s, redis_s = services.used()
        assert child.proc is not None
        child.proc.wait(120)  # the final flush and commit, then the result file
    data = orjson.loads((run_dir / "result.json").read_bytes())
    if data["error"] or data["done_s"] is None:
        raise RuntimeError(f"{VARIANTS[variant]} loop failed:\n{data['error']}")
    return RunResult(
        variant,
        repetition,
        min(events, data["processed"]),
        data["done_s"],
        data["done_s"] - data["first_s"],
        data["cpu_s"],
        data["peak_rss_mb"],
        ready_at - spawned,
        broker_s,
        redis_s,
        data["triggers"],
        data["deadletters"],
        backlog=events,
    )


def marker_reached(child: Child, path: Path) -> bool:
    if path.exists():
        return True
    module = child.argv[2] if len(child.argv) > 2 else "the loop"
    child.check_alive(f"{module} ({path.name} not reached)")
    return False


def run_variant(
    stack: BenchStack,
    settings: Settings,
    variant: str,
    events: int,
    repetition: int,
    batch: int,
    window: float = 0.0,
) -> RunResult:
    """One throughput run; ``window`` > 0 stops it after that many seconds (the slow window)."""
    stack.flush_redis()
    if variant in ("c", "i"):
        return run_worker(
            stack, settings, events, repetition, stack.scratch("logs"), window, variant
        )
    return run_loop_variant(stack, settings, variant, events, repetition, batch, window)
