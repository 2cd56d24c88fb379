"""Faults on a schedule against real processes, and how long the pipeline takes to recover.

:func:`plan_faults` (pure, seeded) says what happens and when; :class:`FaultDriver`
does it to a real worker child process (``python -m processors worker``), a
second worker with its own data dir and ports, the broker and Redis, one fault at
a time: wait ``gap`` seconds, inject, then wait until the pipeline processes again.

**Time to processing again** is measured from outside, the same way for every
fault: from the moment the fault is lifted (the killed worker restarted, the
stopped process resumed, the broker answering again, the second worker ready or
gone) until every source partition (the 13 touchpoint topics and
``omni.customer-events``) that had input waiting at that moment has had its
committed offset move. A commit is the end of the whole path (outputs flushed
and acknowledged, the read model written: the worker commits only after Redis has
the batch), so a partition that is stuck, whatever the reason, never counts as
recovered. An orchestrator's restart delay is not included (we restart at once).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from bench.procs import Worker, http_get
from devstack.kafka import LocalKafka
from devstack.redis import LocalRedis
from processors.settings import Settings

log = logging.getLogger("bench.chaos")

WORKER_KILL = "worker_kill"
KILL_AFTER_READY = "worker_kill_after_ready"
SECOND_WORKER_KILL = "second_worker_kill"
SECOND_WORKER_PAUSE_TERM = "second_worker_pause_term"
SECOND_WORKER_TERM = "second_worker_term"
BROKER_KILL = "broker_kill"
REDIS_STOP = "redis_stop"
WIPE_RESTART = "wipe_restart"
FAULT_KINDS: tuple[str, ...] = (
    WORKER_KILL,
    KILL_AFTER_READY,
    SECOND_WORKER_KILL,
    SECOND_WORKER_PAUSE_TERM,
    SECOND_WORKER_TERM,
    BROKER_KILL,
    REDIS_STOP,
    WIPE_RESTART,
)

#: What is measured (one row each in the report), by the fault that causes it.
MEASURES: dict[str, tuple[str, ...]] = {
    WORKER_KILL: ("worker SIGKILL + restart",),
    KILL_AFTER_READY: ("worker SIGKILL right after ready + restart",),
    SECOND_WORKER_KILL: ("second worker joins", "second worker SIGKILL"),
    SECOND_WORKER_PAUSE_TERM: (
        "second worker joins",
        "worker SIGSTOP past the session timeout, resumed",
        "second worker SIGTERM",
    ),
    SECOND_WORKER_TERM: ("second worker joins", "second worker SIGTERM"),
    BROKER_KILL: ("broker SIGKILL + restart",),
    REDIS_STOP: ("Redis stopped (SIGSTOP), resumed",),
    WIPE_RESTART: ("worker SIGKILL + restart with its state dir wiped",),
}


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    #: Seconds to let the pipeline run (after the previous fault recovered) first.
    gap: float
    #: Kind-specific durations in seconds (``down``, ``after_ready``, ``work``, ...).
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Profile:
    """How a run injects faults: the mandatory sequence, then SIGKILLs until input ends."""

    name: str
    sequence: tuple[str, ...]
    gap: tuple[float, float]
    #: Keep killing the worker every ``gap`` seconds while events are still produced.
    filler: bool
    redis_seconds: float
    #: The worker stays down this long before the restart it is killed right after.
    down: tuple[float, float]
    #: The second worker works this long before it leaves.
    work: tuple[float, float]
    broker_down: float = 5.0


FULL = Profile(
    name="full",
    sequence=(
        WORKER_KILL,
        KILL_AFTER_READY,
        WORKER_KILL,
        SECOND_WORKER_KILL,
        WORKER_KILL,
        BROKER_KILL,
        KILL_AFTER_READY,
        REDIS_STOP,
        WORKER_KILL,
        SECOND_WORKER_PAUSE_TERM,
        WORKER_KILL,
        WIPE_RESTART,
        KILL_AFTER_READY,
    ),
    gap=(20.0, 60.0),
    filler=True,
    redis_seconds=45.0,
    down=(10.0, 20.0),
    work=(15.0, 30.0),
)
SHORT = Profile(
    name="short",
    sequence=(WORKER_KILL, KILL_AFTER_READY, REDIS_STOP),
    gap=(3.0, 6.0),
    filler=False,
    redis_seconds=5.0,
    down=(3.0, 3.0),
    work=(5.0, 8.0),
)
#: Two workers with standby replicas: the second joins, leaves cleanly, joins again and is
#: SIGKILLed and not restarted (until the next cycle's join) three times; the first
#: takes over its partitions from its standby copies (python -m bench.chaos --profile
#: failover; tests/integration/test_failover.py runs one leave and one kill).
FAILOVER = Profile(
    name="failover",
    sequence=(SECOND_WORKER_TERM, SECOND_WORKER_KILL, SECOND_WORKER_KILL, SECOND_WORKER_KILL),
    gap=(3.0, 5.0),
    filler=False,
    redis_seconds=5.0,
    down=(3.0, 3.0),
    # Long enough for the standby to follow the active worker mid-stream.
    work=(12.0, 18.0),
)
PROFILES = {p.name: p for p in (FULL, SHORT, FAILOVER)}


def make_fault(kind: str, profile: Profile, rng: random.Random, session_timeout: float) -> Fault:
    gap = rng.uniform(*profile.gap)
    params: dict[str, float] = {}
    if kind == KILL_AFTER_READY:
        params = {"down": rng.uniform(*profile.down), "after_ready": rng.uniform(0.3, 2.0)}
    elif kind in (SECOND_WORKER_KILL, SECOND_WORKER_TERM):
        params = {"work": rng.uniform(*profile.work)}
    elif kind == SECOND_WORKER_PAUSE_TERM:
        params = {
            "before_pause": 5.0,
            # Past the session timeout, so the group moves on without it.
            "pause": session_timeout + 10.0,
            "work": rng.uniform(*profile.work),
        }
    elif kind == BROKER_KILL:
        params = {"down": profile.broker_down}
    elif kind == REDIS_STOP:
        params = {"stopped": profile.redis_seconds}
    return Fault(kind, round(gap, 3), {k: round(v, 3) for k, v in params.items()})


def plan_faults(
    profile: Profile,
    seed: int,
    session_timeout: float,
    allowed: Sequence[str] = FAULT_KINDS,
) -> list[Fault]:
    """The profile's mandatory faults in order (those ``allowed``), gaps and durations drawn
    from ``seed``. Same arguments, same plan."""
    rng = random.Random(f"faults-{seed}")
    return [
        make_fault(kind, profile, rng, session_timeout)
        for kind in profile.sequence
        if kind in allowed
    ]


# --- processes ----------------------------------------------------------------------------------


class ChaosWorker:
    """A worker child we may kill, pause and restart; knows when an exit was ours."""

    def __init__(self, name: str, settings: Settings, log_path: Path) -> None:
        self.name = name
        self.settings = settings
        self.log_path = log_path
        self.child: Worker | None = None
        self.starts = 0
        #: Set while an exit or a stop is our doing (the supervisor ignores it then).
        self.expected_down = True
        #: SIGSTOPped by a fault: /livez cannot answer, and that is no news.
        self.paused = False
        #: Consecutive /livez answers other than 200.
        self.livez_failures = 0
        self.lock = threading.RLock()

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None and self.child.proc else None

    def start(self) -> float:
        with self.lock:
            self.starts += 1
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as handle:
                handle.write(f"\n===== chaos: {self.name} start #{self.starts} at {time.time()}\n")
            self.child = Worker(self.settings, self.log_path).start()
            self.expected_down = False
            self.livez_failures = 0
            return time.monotonic()

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def ready(self) -> bool:
        try:
            return self.child is not None and self.child.ready()
        except RuntimeError:  # exited
            return False

    def wait_ready(self, timeout: float) -> float | None:
        """Monotonic time of the first /readyz 200, None on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return None
            if self.ready():
                return time.monotonic()
            time.sleep(0.05)
        return None

    def livez(self) -> int | None:
        """The /livez status (None: no answer)."""
        status, _ = http_get(f"http://127.0.0.1:{self.settings.web_port}/livez", timeout=2.0)
        return status

    def signal(self, sig: signal.Signals) -> None:
        kill_group(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap (the process is gone when this returns)."""
        with self.lock:
            self.expected_down = True
            self.signal(signal.SIGKILL)
            if self.child is not None and self.child.proc is not None:
                self.child.proc.wait(30)

    def terminate(self, timeout: float = 60.0) -> None:
        """SIGTERM (clean leave); SIGKILL if it has not exited within ``timeout``."""
        with self.lock:
            self.expected_down = True
            if self.child is not None:
                self.child.stop(timeout=timeout)

    def wipe(self) -> None:
        shutil.rmtree(self.settings.data_dir, ignore_errors=True)
        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)


def kill_group(pid: int | None, sig: signal.Signals) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)


# --- offsets ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OffsetSample:
    at: float
    #: (topic, partition) -> committed offset of the worker's group (-1: none yet).
    committed: dict[tuple[str, int], int]
    #: (topic, partition) -> log end offset.
    high: dict[tuple[str, int], int]

    def pending(self) -> dict[tuple[str, int], int]:
        """Partitions with input not committed yet -> their committed offset."""
        # No commit yet (-1) on an empty partition is no lag: its log starts at 0.
        return {tp: c for tp, c in self.committed.items() if max(c, 0) < self.high.get(tp, 0)}

    def lag(self) -> int:
        return sum(max(0, self.high.get(tp, 0) - max(c, 0)) for tp, c in self.committed.items())


def recovered(pending: dict[tuple[str, int], int], sample: OffsetSample) -> bool:
    """Every partition that had input waiting has committed past where it was."""
    return all(sample.committed.get(tp, -1) > at for tp, at in pending.items())


def longest_stall(samples: Sequence[OffsetSample], start: float, end: float) -> float:
    """The longest time, within [start, end], that a partition with input waiting saw its
    committed offset stand still: the pause a rebalance causes, whoever caused it (a join
    pauses every partition of both workers before the joining one is ready). Resolution:
    the sampling interval; normal operation shows about the commit interval."""
    window = [s for s in samples if start <= s.at <= end]
    if not window:
        return 0.0
    longest = 0.0
    for tp in window[0].committed:
        since = window[0].at
        previous = window[0].committed.get(tp, -1)
        for sample in window[1:]:
            committed = sample.committed.get(tp, -1)
            if committed != previous or max(committed, 0) >= sample.high.get(tp, 0):
                # It moved, or it has nothing to do: no stall up to here.
                if committed != previous:
                    longest = max(longest, sample.at - since)
                since, previous = sample.at, committed
        longest = max(longest, window[-1].at - since)
    return round(longest, 2)


class OffsetSampler(threading.Thread):
    """Committed offsets of the worker's group and log end offsets, every ``interval`` s.

    A plain consumer of the worker's group id that never subscribes (so it never joins
    the group) asks for them. Not the admin API: confluent-kafka 2.16.1's
    ``list_consumer_group_offsets`` crashed the process (SIGSEGV) against a fresh
    broker, and one admin client did not recover from a broker restart in a test.
    """

    def __init__(self, settings: Settings, topics: Sequence[str], interval: float = 0.5) -> None:
        super().__init__(name="chaos-offsets", daemon=True)
        self.partitions = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        self.config = {
            **settings.kafka_client_config(),
            "group.id": settings.app_id,
            "enable.auto.commit": False,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "log_level": 0,  # connection refused while the broker is down is the point
        }
        self.client = Consumer(self.config)
        self.interval = interval
        self.latest: OffsetSample | None = None
        #: Recent samples, for :func:`longest_stall` (an hour at the default interval).
        self.history: deque[OffsetSample] = deque(maxlen=7_200)
        self.samples = 0
        self.failures = 0
        self.failing_since: float | None = None
        self.last_error = ""
        self._halt = threading.Event()
        self._changed = threading.Condition()

    def sample(self, timeout: float = 5.0) -> OffsetSample:
        committed = {
            (tp.topic, tp.partition): tp.offset if tp.offset >= 0 else -1
            for tp in self.client.committed(list(self.partitions), timeout=timeout)
        }
        # Log end offsets of every partition in one request: "offset for time" -1 = the end.
        ends = self.client.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in self.partitions],
            timeout=timeout,
        )
        high = {(tp.topic, tp.partition): max(0, tp.offset) for tp in ends if tp.error is None}
        for tp in high:
            committed.setdefault(tp, -1)
        return OffsetSample(time.monotonic(), committed, high)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                sample = self.sample()
            except Exception as exc:  # the broker is down or restarting: sample again
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                now = time.monotonic()
                self.failing_since = self.failing_since or now
                if now - self.failing_since > 20.0:
                    # A client that lost its broker for long may not come back: a new one.
                    log.info("offset sampling failing for 20 s (%s); new client", exc)
                    self.client.close()
                    self.client = Consumer(self.config)
                    self.failing_since = now
            else:
                self.failing_since = None
                with self._changed:
                    self.latest = sample
                    self.history.append(sample)
                    self.samples += 1
                    self._changed.notify_all()
            self._halt.wait(self.interval)

    def recent(self) -> list[OffsetSample]:
        with self._changed:  # the sampling thread appends under it
            return list(self.history)

    def fresh(self, after: float, timeout: float) -> OffsetSample | None:
        """The first sample taken at or after monotonic ``after``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.latest is None or self.latest.at < after:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return self.latest

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(15)
        if not self.is_alive():  # never close a client another thread is still in
            self.client.close()


# --- the driver --------------------------------------------------------------------------------


@dataclass
class Measured:
    """One fault's (or fault phase's) recovery."""

    label: str
    kind: str
    #: Seconds since the run started, when the fault began and when it was lifted.
    started: float
    lifted: float
    #: Seconds from lifted to every pending partition committing again (None: not within
    #: the timeout).
    recovery: float | None
    pending_partitions: int
    during_input: bool
    note: str = ""
    #: The longest a partition with input waiting did not commit, from the fault's start
    #: until it recovered (:func:`longest_stall`); None: not measured.
    stall: float | None = None


@dataclass
class Restart:
    """A worker start: seconds from spawn to the first /readyz 200 (None: never ready)."""

    worker: str
    cause: str
    ready_after: float | None


@dataclass
class UnexpectedStop:
    """A worker that stopped processing without the schedule asking: it exited on its own,
    or its /livez failed twice in a row (a stalled partition; we then restart it, as an
    orchestrator's liveness probe would)."""

    worker: str
    at: float
    how: str
    exit_code: int | None
    #: That start's ERROR/CRITICAL lines and tracebacks, then its last lines
    #: (:func:`incarnation_report`): the cause, not only Faust's "We experienced a crash!".
    log_tail: str


class FaultDriver:
    """Injects the plan's faults one at a time and measures the recovery from each."""

    def __init__(
        self,
        w1: ChaosWorker,
        w2: ChaosWorker,
        sampler: OffsetSampler,
        redis_server: LocalRedis,
        kafka: LocalKafka | None,
        producing: Callable[[], bool],
        t0: float,
        recovery_timeout: float,
        ready_timeout: float = 180.0,
    ) -> None:
        self.w1 = w1
        self.w2 = w2
        self.sampler = sampler
        self.redis = redis_server
        self.kafka = kafka
        self.producing = producing
        self.t0 = t0
        self.recovery_timeout = recovery_timeout
        self.ready_timeout = ready_timeout
        self.measured: list[Measured] = []
        self.restarts: list[Restart] = []
        self.unexpected: list[UnexpectedStop] = []
        self.timeline: list[tuple[float, str]] = []
        self._supervisor_stop = threading.Event()
        self._supervisor = threading.Thread(
            target=self._supervise, name="chaos-supervisor", daemon=True
        )
        self._stopped_processes: list[Callable[[], None]] = []

    # -- bookkeeping --

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str) -> None:
        self.timeline.append((round(self.now(), 2), text))
        log.info("[chaos %7.1fs] %s", self.now(), text)

    def start_supervisor(self) -> None:
        self._supervisor.start()

    def stop_supervisor(self) -> None:
        self._supervisor_stop.set()
        self._supervisor.join(5)

    def _supervise(self) -> None:
        """Like an orchestrator: a worker that exits on its own, or fails its liveness
        probe twice, is noted and (worker-1) restarted."""
        ticks = 0
        while not self._supervisor_stop.wait(0.25):
            ticks += 1
            for worker in (self.w1, self.w2):
                with worker.lock:
                    if worker.expected_down or worker.child is None:
                        continue
                    if not worker.alive():
                        proc = worker.child.proc
                        code = proc.returncode if proc is not None else None
                        self._unexpected(worker, "exited on its own", code)
                        continue
                if ticks % 8 or worker.paused:  # probe /livez every 2 s
                    continue
                status = worker.livez()
                worker.livez_failures = worker.livez_failures + 1 if status == 503 else 0
                if worker.livez_failures >= 2:
                    with worker.lock:
                        if worker.expected_down or worker.paused:
                            continue
                        worker.terminate(timeout=10.0)
                        self._unexpected(worker, "failed /livez twice (503)", None)

    def _unexpected(self, worker: ChaosWorker, how: str, code: int | None) -> None:
        tail = _log_tail(worker.log_path, worker.starts)
        self.unexpected.append(UnexpectedStop(worker.name, round(self.now(), 1), how, code, tail))
        # The cause on the console too, not only in chaos.json: the log is appended to.
        log.warning("%s start #%d %s; what it logged:\n%s", worker.name, worker.starts, how, tail)
        if worker is self.w1:
            self.note(f"{worker.name} {how} (code {code}); restarting it")
            self._start(worker, f"restart: {how}", wait=False)
        else:
            self.note(f"{worker.name} {how} (code {code})")
            worker.expected_down = True

    def _start(self, worker: ChaosWorker, cause: str, wait: bool = True) -> float | None:
        spawned = worker.start()
        incarnation = worker.starts
        if not wait:
            threading.Thread(
                target=self._await_ready, args=(worker, cause, spawned, incarnation), daemon=True
            ).start()
            return None
        return self._await_ready(worker, cause, spawned, incarnation)

    def _await_ready(
        self, worker: ChaosWorker, cause: str, spawned: float, incarnation: int
    ) -> float | None:
        ready = worker.wait_ready(self.ready_timeout)
        if ready is None and (worker.starts != incarnation or worker.expected_down):
            return None  # killed by the schedule before it was ready: no start time to tell
        self.restarts.append(
            Restart(worker.name, cause, None if ready is None else round(ready - spawned, 3))
        )
        return ready

    def measure(self, label: str, kind: str, started: float, lifted: float, note: str = "") -> None:
        """Wait until every partition with input waiting at ``lifted`` commits again."""
        during_input = self.producing()
        base = self.sampler.fresh(lifted, timeout=120.0)
        if base is None:
            why = f"no offsets readable after the fault ({self.sampler.last_error})"
            self.measured.append(
                Measured(
                    label, kind, started - self.t0, lifted - self.t0, None, -1, during_input, why
                )
            )
            self.note(f"{label}: {why}")
            return
        pending = base.pending()
        recovery: float | None = None
        deadline = lifted + self.recovery_timeout
        sample = base
        while True:
            if recovered(pending, sample):
                recovery = max(0.0, sample.at - lifted)
                break
            if time.monotonic() > deadline:
                stuck = sorted(
                    f"{t}[{p}]"
                    for (t, p), at in pending.items()
                    if sample.committed.get((t, p), -1) <= at
                )
                note = (note + "; " if note else "") + "not recovered: " + ", ".join(stuck[:6])
                break
            next_sample = self.sampler.fresh(sample.at + 1e-6, timeout=30.0)
            if next_sample is not None:
                sample = next_sample
        stall = longest_stall(self.sampler.recent(), started, sample.at)
        self.measured.append(
            Measured(
                label,
                kind,
                round(started - self.t0, 2),
                round(lifted - self.t0, 2),
                None if recovery is None else round(recovery, 3),
                len(pending),
                during_input,
                note,
                stall,
            )
        )
        self.note(
            f"{label}: processing again after "
            + ("(not within the timeout)" if recovery is None else f"{recovery:.1f}s")
            + f" ({len(pending)} partitions had input waiting; longest stall {stall:.1f}s)"
        )

    # -- faults --

    def run(self, plan: Sequence[Fault], filler: Callable[[], Fault] | None = None) -> None:
        """The plan's faults in order; then ``filler()`` ones while events are produced."""
        for fault in plan:
            self._sleep(fault.gap)
            self.inject(fault)
        while filler is not None and self.producing():
            fault = filler()
            self._sleep(fault.gap)
            if not self.producing():
                return
            self.inject(fault)

    def _sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def inject(self, fault: Fault) -> None:
        handler = {
            WORKER_KILL: self._worker_kill,
            KILL_AFTER_READY: self._kill_after_ready,
            SECOND_WORKER_KILL: self._second_worker_kill,
            SECOND_WORKER_PAUSE_TERM: self._second_worker_pause_term,
            SECOND_WORKER_TERM: self._second_worker_term,
            BROKER_KILL: self._broker_kill,
            REDIS_STOP: self._redis_stop,
            WIPE_RESTART: self._wipe_restart,
        }[fault.kind]
        handler(fault)

    def _worker_kill(self, fault: Fault) -> None:
        label = MEASURES[WORKER_KILL][0]
        started = time.monotonic()
        self.note(f"{label}: SIGKILL worker-1")
        self.w1.kill()
        lifted = time.monotonic()
        self._start(self.w1, "after SIGKILL", wait=False)
        self.measure(label, fault.kind, started, lifted)

    def _kill_after_ready(self, fault: Fault) -> None:
        label = MEASURES[KILL_AFTER_READY][0]
        started = time.monotonic()
        self.note(f"{label}: SIGKILL worker-1, down {fault.params['down']:.0f}s (a backlog builds)")
        self.w1.kill()
        self._sleep(fault.params["down"])
        ready = self._start(self.w1, "after SIGKILL (to be killed right after ready)")
        if ready is not None:
            self._sleep(fault.params["after_ready"])
            self.note(f"SIGKILL worker-1 {fault.params['after_ready']:.1f}s after /readyz")
        else:
            self.note("worker-1 did not become ready; SIGKILL anyway")
        self.w1.kill()
        lifted = time.monotonic()
        self._start(self.w1, "after SIGKILL right after ready", wait=False)
        self.measure(label, fault.kind, started, lifted)

    def _join(self, kind: str) -> bool:
        label = MEASURES[kind][0]
        started = time.monotonic()
        self.note(f"{label}: start worker-2 (own data dir and ports)")
        ready = self._start(self.w2, "second worker joins")
        if ready is None:
            self.note("worker-2 did not become ready")
            self.measure(label, kind, started, time.monotonic(), "worker-2 never ready")
            return False
        self.measure(label, kind, started, ready)
        return True

    def _second_worker_kill(self, fault: Fault) -> None:
        self._join(fault.kind)
        self._sleep(fault.params["work"])
        label = MEASURES[SECOND_WORKER_KILL][1]
        started = time.monotonic()
        self.note(f"{label}: SIGKILL worker-2 after {fault.params['work']:.0f}s of work")
        self.w2.kill()
        self.measure(label, fault.kind, started, time.monotonic())

    def _second_worker_term(self, fault: Fault) -> None:
        self._join(fault.kind)
        self._sleep(fault.params["work"])
        label = MEASURES[SECOND_WORKER_TERM][1]
        started = time.monotonic()
        self.note(f"{label}: SIGTERM worker-2 after {fault.params['work']:.0f}s of work")
        self.w2.terminate()
        self.measure(label, fault.kind, started, time.monotonic())

    def _second_worker_pause_term(self, fault: Fault) -> None:
        self._join(fault.kind)
        self._sleep(fault.params["before_pause"])
        label = MEASURES[SECOND_WORKER_PAUSE_TERM][1]
        started = time.monotonic()
        self.note(f"{label}: SIGSTOP worker-1 for {fault.params['pause']:.0f}s")
        self.w1.paused = True
        self.w1.signal(signal.SIGSTOP)
        self._stopped_processes.append(lambda: self.w1.signal(signal.SIGCONT))
        try:
            self._sleep(fault.params["pause"])
        finally:
            self.w1.signal(signal.SIGCONT)
            self._stopped_processes.pop()
            self.w1.paused = False
        self.note("SIGCONT worker-1")
        self.measure(label, fault.kind, started, time.monotonic())
        self._sleep(fault.params["work"])
        label = MEASURES[SECOND_WORKER_PAUSE_TERM][2]
        started = time.monotonic()
        self.note(f"{label}: SIGTERM worker-2")
        self.w2.terminate()
        self.measure(label, fault.kind, started, time.monotonic())

    def _broker_kill(self, fault: Fault) -> None:
        label = MEASURES[BROKER_KILL][0]
        kafka = self.kafka
        if kafka is None:
            self.note("broker fault skipped: the broker is not ours")
            return
        started = time.monotonic()
        self.note(f"{label}: SIGKILL the broker, down {fault.params['down']:.0f}s")
        kill_group(kafka.pid, signal.SIGKILL)
        while kafka.is_running():
            time.sleep(0.05)
        self._sleep(fault.params["down"])
        kafka.start()
        kafka.wait_ready(timeout=180)
        lifted = time.monotonic()
        self.note(f"broker answering again after {lifted - started:.1f}s")
        self.measure(label, fault.kind, started, lifted)

    def _redis_stop(self, fault: Fault) -> None:
        label = MEASURES[REDIS_STOP][0]
        pid = self.redis.pid
        started = time.monotonic()
        self.note(f"{label}: SIGSTOP Redis for {fault.params['stopped']:.0f}s")
        kill_group(pid, signal.SIGSTOP)
        self._stopped_processes.append(lambda: kill_group(pid, signal.SIGCONT))
        try:
            self._sleep(fault.params["stopped"])
        finally:
            kill_group(pid, signal.SIGCONT)
            self._stopped_processes.pop()
        self.note("SIGCONT Redis")
        self.measure(label, fault.kind, started, time.monotonic())

    def _wipe_restart(self, fault: Fault) -> None:
        label = MEASURES[WIPE_RESTART][0]
        started = time.monotonic()
        self.note(f"{label}: SIGKILL worker-1, delete {self.w1.settings.data_dir}")
        self.w1.kill()
        self.w1.wipe()
        lifted = time.monotonic()
        self._start(self.w1, "after SIGKILL with the state dir wiped", wait=False)
        self.measure(label, fault.kind, started, lifted)

    def resume_everything(self) -> None:
        """SIGCONT whatever a fault left stopped (an interrupted run)."""
        while self._stopped_processes:
            self._stopped_processes.pop()()


#: A start's section of a worker log (ChaosWorker.start writes the line).
START_MARKER = "===== chaos: "
#: Log lines kept whatever else is cut: Faust's and our ``[LEVEL]`` format, the
#: ``LEVEL name:`` one of ``logging.basicConfig``, librdkafka's syslog levels 0-3.
_SEVERE = ("[ERROR]", "[CRITICAL]", "[FATAL]")
_SEVERE_PREFIXES = ("ERROR ", "CRITICAL ", "%0|", "%1|", "%2|", "%3|")


def _incarnation(lines: list[str], start: int | None) -> list[str]:
    """The lines of start ``start`` (None: the last start); all of them without markers."""
    marks = [i for i, line in enumerate(lines) if line.startswith(START_MARKER)]
    if not marks:
        return lines
    index = len(marks) - 1
    if start is not None:
        wanted = [i for i, at in enumerate(marks) if f" start #{start} at " in lines[at]]
        index = wanted[-1] if wanted else index
    end = marks[index + 1] if index + 1 < len(marks) else len(lines)
    return lines[marks[index] : end]


def _is_severe(line: str) -> bool:
    return any(level in line for level in _SEVERE) or line.startswith(_SEVERE_PREFIXES)


def _severe_and_tracebacks(lines: list[str]) -> tuple[list[int], list[int]]:
    """Indices of every line of every Python traceback (with CRITICAL lines), and of
    the other ERROR lines."""
    tracebacks: list[int] = []
    errors: list[int] = []
    in_traceback = False
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
            tracebacks.append(i)
        elif in_traceback:
            tracebacks.append(i)
            # Frames and source lines are indented; the chaining sentences and the blank
            # lines around them belong to it; the first other line is the exception.
            in_traceback = (
                line.startswith((" ", "\t"))
                or not line.strip()
                or line.startswith(("During handling of", "The above exception"))
            )
        elif "[CRITICAL]" in line or line.startswith("CRITICAL "):
            tracebacks.append(i)
        elif _is_severe(line):
            errors.append(i)
    return tracebacks, errors


def _render(header: list[str], body: list[str], picked: set[int], count: int) -> str:
    out = list(header)
    if count:
        out.append(f"-- {count} lines of errors and tracebacks, then the last lines --")
    previous = -1
    for i in sorted(picked):
        if i > previous + 1:
            out.append(f"[... {i - previous - 1} lines ...]")
        out.append(body[i])
        previous = i
    return "\n".join(out)


def incarnation_report(
    path: Path, start: int | None = None, tail_lines: int = 12, max_chars: int = 12_000
) -> str:
    """What one start of a worker logged that tells why it stopped, bounded in size.

    Every ERROR/CRITICAL line and every Python traceback of that start (its section
    of the log, from its ``===== chaos: ... start #N`` line), then its last
    ``tail_lines`` lines. Faust's last words ("We experienced a crash! Reraising
    original exception...") come long after the exception that caused them, so the
    last lines alone never said why. Over ``max_chars`` (a start that lost its broker
    logs thousands of connection errors), the plain ERROR lines are thinned from the
    middle first (the first ones are the cause), then the whole text is.
    """
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    section = _incarnation(lines, start)
    header = section[:1] if section and section[0].startswith(START_MARKER) else []
    body = section[len(header) :]
    while body and not body[-1].strip():  # the blank line before the next start's marker
        body.pop()
    tracebacks, errors = _severe_and_tracebacks(body)
    count = len(tracebacks) + len(errors)
    always = set(tracebacks) | set(range(max(0, len(body) - tail_lines), len(body)))
    keep = len(errors)
    while True:
        thinned = errors if keep >= len(errors) else errors[: keep - keep // 3]
        if keep < len(errors) and keep // 3:
            thinned = thinned + errors[-(keep // 3) :]
        text = _render(header, body, always | set(thinned), count)
        if len(text) <= max_chars or keep == 0:
            break
        keep = min(keep, len(errors)) // 2
    if len(text) <= max_chars:
        return text
    head = text[: max_chars * 2 // 3]
    rest = text[-(max_chars - len(head)) :]
    return f"{head}\n[... {len(text) - len(head) - len(rest)} characters cut ...]\n{rest}"


def _log_tail(path: Path, start: int | None = None) -> str:
    """The log of the start that stopped, as :class:`UnexpectedStop` keeps it."""
    return incarnation_report(path, start)


def fault_summary(measured: Sequence[Measured]) -> dict[str, dict[str, Any]]:
    """Per measured label: count, recoveries (p50, p95, max), not recovered."""
    from bench.chaos_oracle import percentiles

    summary: dict[str, dict[str, Any]] = {}
    for m in measured:
        entry = summary.setdefault(
            m.label,
            {"count": 0, "values": [], "not_recovered": 0, "nothing_waiting": 0, "stalls": []},
        )
        entry["count"] += 1
        if m.stall is not None and m.pending_partitions > 0:
            entry["stalls"].append(m.stall)
        if m.recovery is None:
            entry["not_recovered"] += 1
        elif m.pending_partitions == 0:
            # No input waited (the producer had finished): nothing to time.
            entry["nothing_waiting"] += 1
        else:
            entry["values"].append(m.recovery)
    for entry in summary.values():
        entry.update(percentiles(entry.pop("values")))
        stalls = percentiles(entry.pop("stalls"))
        entry["stall_p50"], entry["stall_max"] = stalls["p50"], stalls["max"]
    return summary
