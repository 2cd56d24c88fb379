"""``make chaos``: faults on a schedule against the real worker, scored against an oracle.

    python -m bench.chaos                       # the full run (~20 min): 100k events, 2k customers
    python -m bench.chaos --profile short       # what tests/integration/test_chaos.py runs (~2 min)
    python -m bench.chaos --events 20000 --customers 1000 --faults worker_kill,redis_stop

Figures, not a test (the short profile inside ``make test`` asserts on them). It
starts its own broker and Redis on free ports (``devstack``), a worker child
process, and produces the workload (:mod:`bench.chaos_workload`: the bench's real
mix, producer duplicates, 5 % poison of 13 kinds) at a steady rate while
:mod:`bench.chaos_faults` injects faults: SIGKILLs of the worker every 20-60 s,
some right after it becomes ready while it drains a backlog, a second worker that
joins and leaves (SIGKILL, and SIGTERM), the broker SIGKILLed and restarted, Redis
stopped for 45 s, the worker SIGSTOPped past the session timeout, one restart with
the state dir wiped. Then it waits until every source partition's committed offset
is at its end, reads every output topic, stops the worker cleanly, reads its
RocksDB and Redis, and scores all of it against :mod:`bench.chaos_oracle`.

Writes ``bench/results/chaos.md`` and ``chaos.json`` (``--out``) and prints the
figures. Everything it started is stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from bench import chaos_oracle as oc
from bench.chaos_faults import (
    FAULT_KINDS,
    PROFILES,
    WORKER_KILL,
    ChaosWorker,
    FaultDriver,
    OffsetSample,
    OffsetSampler,
    fault_summary,
    make_fault,
    plan_faults,
)
from bench.chaos_workload import (
    DUPLICATE,
    POISON_BUILDERS,
    POISON_KINDS,
    VALID,
    ChaosWorkload,
    generate,
)
from bench.procs import settings_env
from bench.recovery import code_version
from bench.stack import bench_stack, terminate_as_interrupt
from devstack.kafka import REPO_ROOT, LocalKafka
from devstack.ports import free_port
from devstack.redis import LocalRedis
from processors.domain.identity import KIND_HEADER, IdentityPolicy
from processors.domain.record_codec import decode_record
from processors.settings import TRIGGER_CHANNELS, Settings
from processors.topics import ensure_topics
from producers.actions import new_action_token_key

log = logging.getLogger("bench.chaos")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Faust's bookkeeping keys in a table's RocksDB (the persisted offset and the like).
_FAUST_KEY_PREFIX = b"__faust"


@dataclass(frozen=True)
class ChaosConfig:
    events: int = 100_000
    customers: int = 2_000
    seed: int = 7
    #: Records produced per second (valid, duplicates and poison together).
    rate: float = 100.0
    partitions: int = 8
    profile: str = "full"
    poison_share: float = 0.05
    duplicate_share: float = 0.005
    poison_kinds: tuple[str, ...] = POISON_KINDS
    faults: tuple[str, ...] = FAULT_KINDS
    #: Give up on one fault's recovery after this long (it is reported as not recovered).
    recovery_timeout: float = 240.0
    converge_timeout: float = 600.0
    #: Development only: BROKER_SESSION_TIMEOUT for the workers (Faust reads it from the
    #: environment); None runs the worker as shipped.
    session_timeout: float | None = None
    #: Only the plan's first n faults (None: all of them).
    max_faults: int | None = None


SHORT = ChaosConfig(
    events=3_000,
    customers=300,
    rate=50.0,
    partitions=3,
    profile="short",
    faults=("worker_kill", "worker_kill_after_ready", "redis_stop"),
    recovery_timeout=120.0,
    converge_timeout=150.0,
)


#: ``--profile failover``: two workers with standby replicas; the second leaves cleanly
#: once and is SIGKILLed (not restarted) three times, the first takes over. 4 partitions so
#: both workers have some; enough input to outlast the faults (~4 min).
FAILOVER = ChaosConfig(
    events=12_000,
    customers=1_000,
    rate=50.0,
    partitions=4,
    profile="failover",
    faults=("second_worker_term", "second_worker_kill"),
    recovery_timeout=120.0,
    converge_timeout=180.0,
)
PRESETS = {"short": SHORT, "failover": FAILOVER}


def chaos_settings(
    bootstrap: str, redis_url: str, workdir: Path, partitions: int, name: str = "worker-1"
) -> Settings:
    """The run's worker settings: they make time irrelevant (see bench.chaos_oracle)."""
    tag = uuid.uuid4().hex[:8]
    data_dir = workdir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    return Settings(
        kafka_bootstrap=bootstrap,
        redis_url=redis_url,
        topic_namespace=f"chaos-{tag}",
        app_id=f"omni-chaos-{tag}",
        partitions=partitions,
        data_dir=str(data_dir),
        web_port=free_port(),
        metrics_port=free_port(),
        # The worker refuses to run without a secret key; each run gets its own (both
        # workers of a run share it: second_worker copies these settings).
        action_token_key=new_action_token_key(),
        # Nothing goes stale within a run; no quiet hours (nothing deferred to tonight);
        # journey delays short (the mix has no timer rules; poison that gets in might).
        max_event_age_seconds=86_400.0,
        quiet_hours_start="00:00",
        quiet_hours_end="00:00",
        cart_abandon_after_seconds=30.0,
        coupon_reminder_before_seconds=30.0,
        appointment_reminder_before_seconds=30.0,
    )


def second_worker(settings: Settings, workdir: Path) -> Settings:
    """Same group and topics, its own data dir and ports."""
    data_dir = workdir / "worker-2"
    data_dir.mkdir(parents=True, exist_ok=True)
    return settings.model_copy(
        update={"data_dir": str(data_dir), "web_port": free_port(), "metrics_port": free_port()}
    )


def session_timeout_of(settings: Settings) -> float:
    """The worker's effective consumer session timeout, asked of the app it builds.

    In a child process: building the app opens clients we do not want in this one.
    """
    code = (
        "import os\n"
        "from prometheus_client import CollectorRegistry\n"
        "from processors.app import create_app\n"
        "from processors.settings import Settings\n"
        "app = create_app(Settings(), CollectorRegistry())\n"
        "print(float(app.conf.broker_session_timeout), flush=True)\n"
        "os._exit(0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        log.warning("session timeout unknown (%s); assuming Faust's 60 s", result.stderr[-300:])
        return 60.0


# --- producing --------------------------------------------------------------------------------

PRODUCE_CONFIG: dict[str, Any] = {
    # The contract's producer settings (README): same partition as the worker's murmur2.
    "partitioner": "murmur2_random",
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 5,
    # The 1,000,000-byte key must leave the producer (the broker sees it compressed).
    "message.max.bytes": 2_000_000,
    # Keep retrying through a broker outage instead of failing records.
    "message.timeout.ms": 600_000,
    "queue.buffering.max.messages": 1_000_000,
    # "Connection refused" every 50 ms while the broker is down is the fault, not news.
    "log_level": 2,
}


class SteadyProducer(threading.Thread):
    """Sends record ``i`` at ``workload.send_at(i)`` (its occurred_at), whatever happens."""

    def __init__(self, settings: Settings, workload: ChaosWorkload) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        self.settings = settings
        self.workload = workload
        #: record index -> (topic, partition, offset) once the broker acknowledged it.
        self.sources: dict[int, oc.Source] = {}
        self.failed: dict[int, str] = {}
        self.behind_max = 0.0
        self.done = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        producer = Producer({**self.settings.kafka_client_config(), **PRODUCE_CONFIG})
        topic = self.settings.touchpoint_topic
        try:
            for record in self.workload.records:
                due = self.workload.send_at(record.index)
                while (delay := due - time.time()) > 0:
                    producer.poll(min(delay, 0.05))
                    if self._halt.is_set():
                        return
                self.behind_max = max(self.behind_max, -delay)
                while True:
                    try:
                        producer.produce(
                            topic(record.channel),
                            record.value,
                            record.key,
                            on_delivery=self._delivered(record.index),
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)
            while producer.flush(1.0) > 0 and not self._halt.is_set():
                pass
        finally:
            self.done.set()

    def _delivered(self, index: int) -> Any:
        def on_delivery(err: KafkaError | None, message: Any) -> None:
            if err is not None:
                self.failed[index] = str(err)
            else:
                self.sources[index] = (message.topic(), message.partition(), message.offset())

        return on_delivery

    def producing(self) -> bool:
        return not self.done.is_set()

    def stop(self) -> None:
        self._halt.set()


# --- reading what the worker did -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: The ``omni-kind`` header: the record is an identifier's (processors/identity.py).
    kind: str | None = None


def _kind(message: Any) -> str | None:
    for name, value in message.headers() or ():
        if name == KIND_HEADER and value is not None:
            return bytes(value).decode()
    return None


def read_topics(settings: Settings, topics: Sequence[str], timeout: float = 300.0) -> list[Read]:
    """Every record of ``topics`` from the beginning up to their current end."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    try:
        wanted: dict[tuple[str, int], int] = {}
        for topic in topics:
            for partition in range(settings.partitions):
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
                if high > 0:
                    wanted[(topic, partition)] = high
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in wanted])
        records: list[Read] = []
        deadline = time.monotonic() + timeout
        remaining = dict(wanted)
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {len(remaining)} partitions timed out: {remaining}")
            for message in consumer.consume(10_000, timeout=0.5):
                if message.error() is not None:
                    continue
                tp = (message.topic() or "", message.partition() or 0)
                offset = message.offset() or 0
                if tp in remaining and offset < wanted[tp]:
                    records.append(
                        Read(tp[0], tp[1], offset, message.key(), message.value(), _kind(message))
                    )
                    if offset + 1 >= wanted[tp]:
                        del remaining[tp]
        return records
    finally:
        consumer.close()


def read_table(data_dir: Path, table: str) -> dict[tuple[int, bytes], bytes]:
    """(partition, key) -> value of a Faust table's RocksDB files (a stopped worker's)."""
    from rocksdict import AccessType, Options, Rdict

    found: dict[tuple[int, bytes], bytes] = {}
    for path in sorted(data_dir.glob(f"**/{table}-*.db")):
        partition = int(path.name[len(table) + 1 : -3])
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if (
                    isinstance(key, bytes)
                    and isinstance(value, bytes)
                    and not key.startswith(_FAUST_KEY_PREFIX)
                ):
                    found[(partition, key)] = value
        finally:
            db.close()
    return found


def read_redis(
    url: str, expectation: oc.ReadModelExpectation
) -> tuple[dict[str, bytes | None], dict[str, dict[str, bytes]], list[str]]:
    client = redis.Redis.from_url(url)
    try:
        keys = list(expectation.strings)
        strings: dict[str, bytes | None] = {}
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            values: list[Any] = list(client.mget(chunk))
            strings.update(zip(chunk, values, strict=True))
        hashes: dict[str, dict[str, bytes]] = {}
        for key in expectation.hashes:
            raw: dict[Any, Any] = dict(client.hgetall(key))
            hashes[key] = {bytes(k).decode(): bytes(v) for k, v in raw.items()}
        present = [k.decode() for k in client.scan_iter(match="omni:*", count=1000)]
        return strings, hashes, present
    finally:
        client.close()


# --- convergence -----------------------------------------------------------------------------


@dataclass
class Convergence:
    converged: bool
    seconds: float
    lag: int
    stuck: list[str] = field(default_factory=list)


def wait_converged(
    sampler: OffsetSampler, ready: Callable[[], bool], timeout: float, quiet: float = 3.0
) -> Convergence:
    """Every source partition committed to its end, and still so ``quiet`` s later, with
    the worker ready (a worker restarted by the last fault has finished starting)."""
    started = time.monotonic()
    zero_since: float | None = None
    last: OffsetSample | None = None
    said = started
    while time.monotonic() - started < timeout:
        sample = sampler.fresh((last.at if last else started) + 1e-6, timeout=30.0)
        if sample is None:
            continue
        last = sample
        if sample.at - said >= 15.0:
            said = sample.at
            waiting = sorted(f"{t}[{p}]" for t, p in sample.pending())
            log.info("lag %d in %s", sample.lag(), ", ".join(waiting[:6]) or "-")
        if sample.lag() == 0 and ready():
            zero_since = zero_since if zero_since is not None else sample.at
            if sample.at - zero_since >= quiet:
                return Convergence(True, round(sample.at - started, 1), 0)
        else:
            zero_since = None
    stuck = [] if last is None else sorted(f"{t}[{p}]" for t, p in last.pending())
    waited = round(time.monotonic() - started, 1)
    return Convergence(False, waited, last.lag() if last else -1, stuck)


# --- the run ----------------------------------------------------------------------------------


def run_chaos(
    config: ChaosConfig,
    bootstrap: str,
    redis_server: LocalRedis,
    kafka: LocalKafka | None,
    workdir: Path,
) -> dict[str, Any]:
    """One chaos run; returns every figure (what chaos.json holds)."""
    t_run = time.monotonic()
    profile = PROFILES[config.profile]
    saved_env = os.environ.get("BROKER_SESSION_TIMEOUT")
    if config.session_timeout is not None:
        # Faust reads it from the environment, which the workers inherit.
        os.environ["BROKER_SESSION_TIMEOUT"] = str(config.session_timeout)
    settings = chaos_settings(bootstrap, redis_server.url, workdir, config.partitions)
    ensure_topics(settings)
    session_timeout = session_timeout_of(settings)
    allowed = [k for k in config.faults if k != "broker_kill" or kafka is not None]
    plan = plan_faults(profile, config.seed, session_timeout, allowed)[: config.max_faults]
    w1 = ChaosWorker("worker-1", settings, workdir / "worker-1.log")
    w2 = ChaosWorker("worker-2", second_worker(settings, workdir), workdir / "worker-2.log")
    sources_topics = [*settings.touchpoint_topics, settings.customer_events_topic]
    sampler = OffsetSampler(settings, sources_topics)
    result: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "session_timeout_s": session_timeout,
        "plan": [dataclasses.asdict(f) for f in plan],
        "settings": {
            k: v
            for k, v in settings.model_dump(mode="json").items()
            if k
            not in (
                "redis_url",
                "action_token_key",
                "action_token_previous_keys",
                "kafka_sasl_password",
            )
        },
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": code_version(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    driver: FaultDriver | None = None
    producer: SteadyProducer | None = None
    try:
        log.info("starting worker-1 (session timeout %.0f s)", session_timeout)
        spawned = w1.start()
        ready = w1.wait_ready(240)
        if ready is None:
            tail = w1.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker-1 never became ready; log:\n{tail}")
        result["first_ready_s"] = round(ready - spawned, 2)
        workload = generate(
            config.events,
            config.customers,
            config.seed,
            time.time() + 1.0,
            config.rate,
            config.poison_share,
            config.duplicate_share,
            config.poison_kinds,
        )
        producer = SteadyProducer(settings, workload)
        sampler.start()
        t0 = time.monotonic()
        producer.start()
        driver = FaultDriver(
            w1,
            w2,
            sampler,
            redis_server,
            kafka,
            producer.producing,
            t0,
            config.recovery_timeout,
        )
        driver.start_supervisor()
        log.info(
            "producing %d records at %.0f/s (%.0f s); %d faults planned",
            len(workload.records),
            config.rate,
            len(workload.records) / config.rate,
            len(plan),
        )
        rng = random.Random(f"filler-{config.seed}")
        filler = (
            (lambda: make_fault(WORKER_KILL, profile, rng, session_timeout))
            if profile.filler and WORKER_KILL in allowed
            else None
        )
        driver.run(plan, filler)
        faults_done = driver.now()
        producer.join()
        result["production_s"] = round(time.monotonic() - t0, 1)
        result["faults_done_s"] = round(faults_done, 1)
        driver.note("all records produced and faults done; waiting for convergence")
        convergence = wait_converged(sampler, w1.ready, config.converge_timeout)
        driver.note(
            ("converged" if convergence.converged else "did NOT converge")
            + f" after {convergence.seconds:.0f}s (lag {convergence.lag})"
        )
        result["convergence"] = dataclasses.asdict(convergence)
        outputs = read_topics(
            settings,
            [
                settings.customer_events_topic,
                settings.decision_topic,
                settings.deadletter_topic,
                *(settings.trigger_topic(c) for c in TRIGGER_CHANNELS),
            ],
        )
        driver.stop_supervisor()
        w2.terminate()
        w1.terminate()
        driver.note("workers stopped (SIGTERM)")
        customers = read_table(Path(w1.settings.data_dir), "customers")
        timelines = read_table(Path(w1.settings.data_dir), "timelines")
        stats = read_table(Path(w1.settings.data_dir), "stats")
        identities = read_table(Path(w1.settings.data_dir), "identities")
        compare_at = time.time()
        result.update(
            score(
                settings,
                workload,
                producer,
                outputs,
                customers,
                timelines,
                stats,
                compare_at,
                identities,
            )
        )
        expectation = expected_from_worker(customers, timelines, stats, compare_at, identities)
        oracle_view = result.pop("_expected_read_model")
        strings, hashes, present = read_redis(redis_server.url, oracle_view)
        vs_oracle = oc.score_read_model(oracle_view, strings, hashes, present)
        strings2, hashes2, _ = read_redis(redis_server.url, expectation)
        vs_state = oc.score_read_model(expectation, strings2, hashes2, present)
        result["read_model"] = {
            "vs_oracle": _score_dict(vs_oracle),
            "vs_worker_state": _score_dict(vs_state),
        }
        result["faults"] = fault_summary(driver.measured)
        result["measured"] = [dataclasses.asdict(m) for m in driver.measured]
        result["restarts"] = [dataclasses.asdict(r) for r in driver.restarts]
        ready_times = [r.ready_after for r in driver.restarts if r.ready_after is not None]
        result["restart_to_ready"] = oc.percentiles(ready_times)
        result["restarts_never_ready"] = sum(1 for r in driver.restarts if r.ready_after is None)
        result["unexpected_stops"] = [dataclasses.asdict(u) for u in driver.unexpected]
        result["timeline"] = driver.timeline
        result["producer"] = {
            "records": len(workload.records),
            "delivered": len(producer.sources),
            "failed": len(producer.failed),
            "behind_max_s": round(producer.behind_max, 3),
        }
        result["duration_s"] = round(time.monotonic() - t_run, 1)
        result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        result["verdict"] = verdict(result)
        return result
    finally:
        if config.session_timeout is not None:
            os.environ.pop("BROKER_SESSION_TIMEOUT", None)
            if saved_env is not None:
                os.environ["BROKER_SESSION_TIMEOUT"] = saved_env
        if driver is not None:
            driver.resume_everything()
            driver.stop_supervisor()
        if producer is not None:
            producer.stop()
        sampler.stop()
        for worker in (w2, w1):
            worker.expected_down = True
            if worker.child is not None:
                worker.child.stop(timeout=30)


def expected_from_worker(
    customers: dict[tuple[int, bytes], bytes],
    timelines: dict[tuple[int, bytes], bytes],
    stats: dict[tuple[int, bytes], bytes],
    now: float,
    identities: dict[tuple[int, bytes], bytes] | None = None,
) -> oc.ReadModelExpectation:
    """What Redis must hold according to the worker's own final state."""
    states, lines = customer_views(customers, timelines)
    return oc.expected_read_model(
        states, lines, stats_totals(stats), now, identity_views(identities or {})
    )


def identity_views(identities: dict[tuple[int, bytes], bytes]) -> dict[str, dict[str, Any]]:
    """Each identifier's record (JSON types) without its time-dependent fields."""
    return {
        key.decode(): oc.without(orjson.loads(value), oc.TIME_DEPENDENT_IDENTITY_FIELDS)
        for (_, key), value in identities.items()
    }


def customer_views(
    customers: dict[tuple[int, bytes], bytes], timelines: dict[tuple[int, bytes], bytes]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each customer's state and timeline by id, whatever her record's format: a record
    holds both; a legacy one's timeline (if any) is in the ``timelines`` table."""
    states: dict[str, Any] = {}
    lines: dict[str, Any] = {}
    for (partition, key), value in customers.items():
        record = decode_record(value)
        states[key.decode()] = orjson.loads(record.state)
        timeline = record.timeline
        if timeline is None:
            timeline = timelines.get((partition, key))
        if timeline is not None:
            lines[key.decode()] = orjson.loads(timeline)
    return states, lines


def stats_totals(
    stats: dict[tuple[int, bytes], bytes],
) -> dict[tuple[str, str, int], dict[str, float]]:
    """The ``stats`` table's records by (rule, channel, partition); keys are b"rule|channel"."""
    totals: dict[tuple[str, str, int], dict[str, float]] = {}
    for (partition, key), value in stats.items():
        rule, _, channel = key.decode().partition("|")
        totals[(rule, channel, partition)] = orjson.loads(value)
    return totals


def _score_dict(score: Any) -> dict[str, Any]:
    data = dataclasses.asdict(score)
    # Lists of ids: counts in the figures, the first few as examples.
    out: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, list):
            out[name] = len(value)
            out[f"{name}_examples"] = value[:10]
        elif isinstance(value, dict) and name == "differing":
            out[name] = len(value)
            out["differing_examples"] = dict(list(value.items())[:10])
            out["differing_fields"] = dict(Counter(f for fs in value.values() for f in fs))
        else:
            out[name] = value
    return out


def _poison_kind_of(event_id: Any) -> str | None:
    if isinstance(event_id, str) and event_id.startswith("px-"):
        return event_id[3:].rsplit("-", 1)[0]
    return None


def score(
    settings: Settings,
    workload: ChaosWorkload,
    producer: SteadyProducer,
    outputs: list[Read],
    customers: dict[tuple[int, bytes], bytes],
    timelines: dict[tuple[int, bytes], bytes],
    stats: dict[tuple[int, bytes], bytes],
    compare_at: float,
    identities: dict[tuple[int, bytes], bytes] | None = None,
) -> dict[str, Any]:
    """The oracle against what the worker emitted and stored."""
    from pathlib import Path as _Path

    from processors.app import step_context
    from processors.rulebook import load_ruleset

    ce_topic = settings.customer_events_topic
    trigger_topics = {settings.trigger_topic(c) for c in TRIGGER_CHANNELS}
    valid_ids = {r.event_id: r.customer for r in workload.records if r.kind == VALID}
    forwarded = [
        oc.Forwarded(r.partition, r.offset, r.key, r.value)
        for r in outputs
        # Empty values are the worker's timer markers; records with a kind header are
        # identifiers' (identified events before resolution, link commands).
        if r.topic == ce_topic and r.value and r.kind is None
    ]
    order, other = oc.customer_order(forwarded, valid_ids)  # type: ignore[arg-type]
    got = {orjson.loads(f.value)["event_id"] for rs in order.values() for f in rs}
    never_forwarded = sorted(str(e) for e in set(valid_ids) - got)
    # One source partition = one topic and key (identified events are keyed by identifier).
    source_rank = {
        r.event_id: (f"{r.channel}|{r.key!r}", r.index)
        for r in workload.records
        if r.kind == VALID and r.event_id
    }
    violations = oc.ingest_order_violations(order, source_rank)
    source_of: dict[str, oc.Source] = {}
    for index, where in sorted(producer.sources.items()):
        record = workload.records[index]
        if record.kind == VALID and record.event_id is not None:
            source_of[record.event_id] = where
    # Events the worker never got are still expected: appended in produce order.
    by_id = {r.event_id: r for r in workload.records if r.kind == VALID}
    for event_id in never_forwarded:
        record = by_id[event_id]
        partition = order[record.customer][0].partition if record.customer in order else 0
        order.setdefault(str(record.customer), []).append(
            oc.Forwarded(partition, -1, record.key, record.value or b"")
        )
    ruleset = load_ruleset(_Path(settings.rules_dir), settings.rule_delays())
    ctx = step_context(settings, ruleset)
    started = time.monotonic()
    oracle = oc.run_oracle(order, ctx, compare_at)
    # Identifiers: identity_step over their records (identified events, link commands).
    identity_oracle = oc.run_identity_oracle(
        (
            oc.IdentityInput(r.partition, r.offset, r.key or b"", r.kind, r.value or b"")
            for r in outputs
            if r.topic == ce_topic and r.kind is not None
        ),
        IdentityPolicy.from_settings(settings),
        compare_at,
    )
    actual_identities = identity_views(identities or {})
    identities_differ = sorted(
        key
        for key in set(identity_oracle) | set(actual_identities)
        if identity_oracle.get(key) != actual_identities.get(key)
    )
    still_parked = sorted(k for k, r in actual_identities.items() if r.get("parked"))
    oracle_s = time.monotonic() - started

    triggers = [orjson.loads(r.value) for r in outputs if r.topic in trigger_topics and r.value]
    decisions = [
        orjson.loads(r.value) for r in outputs if r.topic == settings.decision_topic and r.value
    ]
    letters = [
        orjson.loads(r.value) for r in outputs if r.topic == settings.deadletter_topic and r.value
    ]
    t_score = oc.score_triggers(oracle.triggers, triggers)
    d_score = oc.score_decisions(oracle.decisions, decisions)

    # Poison: every record's source -> kind; the customer-events copies of records that
    # got past ingest point at their record (a customer-stage dead letter names the copy).
    sources: dict[oc.Source, str] = {
        where: workload.records[index].kind for index, where in producer.sources.items()
    }
    first_source: dict[str, oc.Source] = {}
    for index, where in sorted(producer.sources.items()):
        record_id = workload.records[index].event_id
        if record_id is not None:
            first_source.setdefault(record_id, where)
    aliases: dict[oc.Source, oc.Source] = {}
    forwarded_poison: Counter[str] = Counter()
    poisoned_customers: set[str] = set()
    for r in forwarded:
        try:
            event = orjson.loads(r.value)
            event_id = event.get("event_id")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        kind = _poison_kind_of(event_id)
        if kind is not None:
            forwarded_poison[kind] += 1
            poisoned_customers.add(str(event.get("customer_id")))
        if event_id in first_source:
            aliases[(ce_topic, r.partition, r.offset)] = first_source[event_id]
    p_score = oc.score_poison(sources, letters, aliases)

    actual_states, actual_lines = customer_views(customers, timelines)
    s_score = oc.score_states(oracle.states, actual_states)
    # How the dedup rings differ tells lost updates from missing events: the same ids in
    # another order = an event applied again later (its first application was lost);
    # ids missing = events never applied.
    rings: Counter[str] = Counter()
    for customer in s_score.differing:
        want: list[int] = oracle.states[customer].get("seen_ids") or []
        have: list[int] = actual_states[customer].get("seen_ids") or []
        if want == have:
            continue
        if sorted(want) == sorted(have):
            rings["same ids, other order"] += 1
        elif set(want) - set(have):
            rings["ids missing"] += 1
        else:
            rings["extra ids"] += 1
    timeline_differs = sorted(
        c for c, line in oracle.timelines.items() if line and actual_lines.get(c) != line
    )
    actual_stats = stats_totals(stats)
    stats_differ = sorted(
        f"{rule}|{channel}|p{p}"
        for rule, channel, p in set(oracle.stats) | set(actual_stats)
        if oracle.stats.get((rule, channel, p)) != actual_stats.get((rule, channel, p))
    )
    # The largest lag behind event time: what makes "time irrelevant" hold.
    occurred = {r.event_id: workload.send_at(r.index) for r in workload.records if r.kind == VALID}
    lags = [
        datetime.fromisoformat(d["decided_at"]).timestamp() - occurred[d["source_event_id"]]
        for d in decisions
        if d.get("source_event_id") in occurred
    ]
    poison_kinds = {k: n for k, n in workload.kinds.items() if k not in (VALID, DUPLICATE)}
    return {
        "workload": {
            "valid_events": len(valid_ids),
            "customers": len(workload.customers),
            "duplicates": workload.kinds[DUPLICATE],
            "poison": sum(poison_kinds.values()),
            "poison_kinds": poison_kinds,
            "records": len(workload.records),
            "mix": dict(workload.mix),
        },
        "ingest": {
            "forwarded_records": len(forwarded),
            "copies": other["copies"],
            "foreign": other["foreign"],
            "valid_never_forwarded": len(never_forwarded),
            # Where the lost ones came from: a stuck or skipped stretch of one partition
            # shows as one source partition with a run of offsets.
            "never_forwarded_by_source": dict(
                Counter(
                    f"{where[0]}[{where[1]}]"
                    for where in (source_of.get(e) for e in never_forwarded)
                    if where is not None
                ).most_common(10)
            ),
            "never_forwarded_examples": [
                [e, *(source_of.get(e) or ())] for e in never_forwarded[:10]
            ],
            "order_violations": len(violations),
            "order_violation_examples": [[e, *(source_of.get(e) or ())] for e in violations[:10]],
            "poison_forwarded": dict(forwarded_poison),
        },
        "oracle": {
            "events": oracle.events,
            "seconds": round(oracle_s, 1),
            "timers_due_by_end": oracle.timers_due,
            "now_offset_s": oc.NOW_OFFSET,
        },
        "triggers": _score_dict(t_score),
        "decisions": _score_dict(d_score),
        "states": {
            **_score_dict(s_score),
            "dedup_rings": dict(rings),
            "poisoned_customers_differing": sorted(
                c for c in s_score.differing if c in poisoned_customers
            )[:10],
        },
        "timelines": {"differing": len(timeline_differs), "examples": timeline_differs[:10]},
        "identities": {
            "keys": len(identity_oracle),
            "differing": len(identities_differ),
            "examples": identities_differ[:10],
            # Every identifier of the run is linked by its customer's home profile: an
            # event still parked at the end waited for a link that was lost.
            "still_parked": len(still_parked),
            "identified_events": sum(
                1 for r in workload.records if r.kind == VALID and r.key and b":" in r.key
            ),
        },
        "stats": {
            "keys": len(oracle.stats),
            "differing": len(stats_differ),
            "examples": stats_differ[:10],
        },
        "poison": {
            "sent": p_score.total_sent,
            "deadlettered": p_score.total_deadlettered,
            "share": round(p_score.share, 6),
            "by_kind": {
                k: {
                    "sent": n,
                    "deadlettered": p_score.deadlettered.get(k, 0),
                    "reasons": p_score.reasons.get(k, {}),
                }
                for k, n in sorted(p_score.sent.items())
            },
            "valid_deadlettered": p_score.valid_deadlettered,
            "unknown_deadletters": p_score.unknown_deadletters,
        },
        "time": {
            "max_lag_s": round(max(lags), 1) if lags else None,
            "bound_s": oc.TIME_BOUND_SECONDS,
            "held": (max(lags) if lags else 0.0) < oc.TIME_BOUND_SECONDS - oc.NOW_OFFSET,
        },
        "_expected_read_model": oc.expected_read_model(
            oracle.states, oracle.timelines, oracle.stats, compare_at, identity_oracle
        ),
    }


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, met or not (what the short test asserts)."""
    rm = result["read_model"]["vs_worker_state"]
    stops = len(result["unexpected_stops"])
    checks = {
        "converged": result["convergence"]["converged"],
        "triggers_lost": result["triggers"]["lost"] == 0,
        "duplicates_after_dedup": result["triggers"]["duplicates_after_dedup"] == 0,
        "customers_wrong_state": result["states"]["differing"] + result["states"]["missing"] == 0,
        "identities_wrong": result["identities"]["differing"] + result["identities"]["still_parked"]
        == 0,
        "redis_keys_differing": rm["differing"] + rm["missing"] + rm["extra"] == 0,
        "poison_deadlettered": result["poison"]["deadlettered"] == result["poison"]["sent"],
        "worker_stops_caused_by_input": stops == 0,
        "time_irrelevant": result["time"]["held"],
    }
    return {"all_met": all(checks.values()), **checks}


# --- the report ---------------------------------------------------------------------------------


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(result: dict[str, Any]) -> str:
    c = result["config"]
    w = result["workload"]
    t = result["triggers"]
    d = result["decisions"]
    s = result["states"]
    p = result["poison"]
    v = result["verdict"]
    rm_state = result["read_model"]["vs_worker_state"]
    rm_oracle = result["read_model"]["vs_oracle"]
    conv = result["convergence"]
    stuck = "" if conv["converged"] else f" (lag {conv['lag']}: {', '.join(conv['stuck'][:5])})"
    code = result.get("code") or {}
    lines = [
        "# Chaos run",
        "",
        f"{result['started_at']}, profile `{c['profile']}`, seed {c['seed']}, "
        f"commit {str(code.get('commit'))[:10]}"
        + (" with local changes in processors/" if code.get("processors_modified") else "")
        + f", {os.cpu_count()} cores, load average {result['loadavg_before']} → "
        f"{result['loadavg_after']}; {result['duration_s']:.0f} s in all.",
        "",
        f"{w['valid_events']:,} valid events of {w['customers']:,} customers (the bench's mix), "
        f"{w['duplicates']:,} producer duplicates and {w['poison']:,} poison records "
        f"({w['poison'] / max(1, w['records']):.1%} of {w['records']:,}) at {c['rate']:.0f} "
        f"records/s over {result['production_s']:.0f} s; {c['partitions']} partitions; "
        f"session timeout {result['session_timeout_s']:.0f} s"
        + (" (set for the run, not the shipped one)" if c.get("session_timeout") else "")
        + ".",
        "",
        *([result["note"], ""] if result.get("note") else []),
        "## Targets",
        "",
        "| figure | value | target | |",
        "| --- | --- | --- | --- |",
        f"| triggers lost against the oracle (by trigger_id) | {t['lost']:,} of {t['expected']:,}"
        f" | 0 | {_met(v['triggers_lost'])} |",
        f"| trigger records received / distinct ids | {t['records']:,} / {t['distinct']:,} | | |",
        f"| duplicates raw (copies of a trigger_id) | {t['duplicates_raw']:,} | | |",
        f"| duplicates after dedup by trigger_id | {t['duplicates_after_dedup']:,} | 0 | "
        f"{_met(v['duplicates_after_dedup'])} |",
        f"| triggers the oracle does not expect | {t['unexpected']:,} | 0 | |",
        f"| expected triggers received with other content | {t['content_differs']:,} | 0 | |",
        f"| decisions lost / differing / unexpected | {d['lost']:,} / {d['differing']:,} / "
        f"{d['unexpected']:,} of {d['expected']:,} | 0 | |",
        f"| customers whose final state differs from the oracle | {s['differing'] + s['missing']:,}"
        f" of {s['customers']:,} | 0 | {_met(v['customers_wrong_state'])} |",
        f"| customer records the oracle has no customer for | {s['extra']:,} | 0 | |",
        f"| identifier records differing from the oracle (identity_step) / events still parked"
        f" | {result['identities']['differing']:,} of {result['identities']['keys']:,} / "
        f"{result['identities']['still_parked']:,} | 0 / 0 | {_met(v['identities_wrong'])} |",
        f"| timelines differing / offer counters differing | {result['timelines']['differing']:,}"
        f" / {result['stats']['differing']:,} of {result['stats']['keys']:,} | 0 | |",
        f"| Redis keys differing from the worker's state | "
        f"{rm_state['differing'] + rm_state['missing'] + rm_state['extra']:,} of "
        f"{rm_state['keys']:,} | 0 | {_met(v['redis_keys_differing'])} |",
        f"| Redis keys differing from the oracle's state | "
        f"{rm_oracle['differing'] + rm_oracle['missing'] + rm_oracle['extra']:,} of "
        f"{rm_oracle['keys']:,} | 0 | |",
        f"| poison dead-lettered with a reason | {p['deadlettered']:,} of {p['sent']:,} "
        f"({p['share']:.1%}) | 100 % | {_met(v['poison_deadlettered'])} |",
        f"| valid events dead-lettered | {sum(p['valid_deadlettered'].values()):,} | 0 | |",
        f"| worker stops the schedule did not cause (crash exits, /livez 503s) | "
        f"{len(result['unexpected_stops'])} | 0 | {_met(v['worker_stops_caused_by_input'])} |",
        f"| converged (every source partition committed to its end) | "
        f"{'yes' if conv['converged'] else 'no'} after {conv['seconds']:.0f} s{stuck}"
        f" | yes | {_met(v['converged'])} |",
        f"| largest lag behind event time (decided_at - occurred_at) | "
        f"{_n(result['time']['max_lag_s'])} s | < {result['time']['bound_s']:.0f} s | "
        f"{_met(v['time_irrelevant'])} |",
        "",
        "## Time to processing again",
        "",
        "From the moment a fault is lifted until every source partition that had input "
        "waiting has committed again (commits follow Redis, so this is the whole path). "
        "Faults after the producer finished, with no input waiting, are counted but not "
        "timed.",
        "",
        "Longest stall: from the fault's start (a joining worker's spawn) until that "
        "recovery, the longest any partition with input waiting went without a commit "
        "(0.5 s samples; about the 1 s commit interval when nothing happens).",
        "",
        "| fault | count | p50 s | p95 s | max s | not recovered | no input waiting | "
        "longest stall p50 s | max s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, f in result["faults"].items():
        lines.append(
            f"| {label} | {f['count']} | {_n(f['p50'])} | {_n(f['p95'])} | {_n(f['max'])} | "
            f"{f['not_recovered']} | {f['nothing_waiting']} | {_n(f.get('stall_p50'))} | "
            f"{_n(f.get('stall_max'))} |"
        )
    r = result["restart_to_ready"]
    lines += [
        "",
        f"Worker start to `/readyz` 200: p50 {_n(r['p50'])} s, p95 {_n(r['p95'])} s, max "
        f"{_n(r['max'])} s over {r['n']} starts ({result['restarts_never_ready']} never ready).",
        "",
        "## Poison",
        "",
        "| kind | sent | dead-lettered | reasons |",
        "| --- | --- | --- | --- |",
    ]
    for kind, k in p["by_kind"].items():
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(k["reasons"].items())) or "-"
        lines.append(f"| {kind} | {k['sent']} | {k['deadlettered']} | {reasons} |")
    ing = result["ingest"]
    lines += [
        "",
        f"Poison that got past ingest: {ing['poison_forwarded'] or 'none'}. Valid events "
        f"never forwarded: {ing['valid_never_forwarded']}; forwarded copies of an id "
        f"(duplicates, replays): {ing['copies']:,}; source-order violations: "
        f"{ing['order_violations']}.",
        "",
    ]
    if s["differing"]:
        lines += [
            f"State fields that differ (customers per field): {s['differing_fields']}. "
            f"Dedup rings (seen_ids) against the oracle's: {s.get('dedup_rings') or '-'}. "
            f"Examples: {', '.join(list(s['differing_examples'])[:5])}.",
            "",
        ]
    if t["lost"]:
        lines += [f"Lost trigger ids (first ones): {', '.join(t['lost_examples'][:5])}.", ""]
    if result["unexpected_stops"]:
        lines += [
            "Worker stops not caused by the schedule, each with the ERROR/CRITICAL lines and "
            "tracebacks its start logged, then its last lines (chaos.json has all of it):",
            "",
        ]
        for stop in result["unexpected_stops"]:
            lines += [
                f"- {stop['worker']} at {stop['at']:.0f} s {stop['how']} "
                f"(exit {stop['exit_code']}):",
                "",
                "  ```",
                *(f"  {x[:300]}" for x in stop_excerpt(stop["log_tail"])),
                "  ```",
                "",
            ]
    lines += [
        "## How it is compared",
        "",
        "- The oracle: `processors.domain.step.step` in-process, each customer's valid events "
        "in the order the worker's customer agent got them (the first copy of each event id "
        f"on `omni.customer-events`), one event per call, `now` = occurred_at + "
        f"{oc.NOW_OFFSET:.0f} s; timelines, offer counters per partition and "
        "`fire_timers` at the end, as `processors/customer.py` does "
        f"({result['oracle']['timers_due_by_end']} timers were due by the end).",
        "- Time is irrelevant by the settings: `OMNI_MAX_EVENT_AGE_SECONDS` = 86,400, no quiet "
        "hours, journey delays 30 s, every rule in the mix expires ≥ 1 h after its event, "
        "occurred_at = send time. The bench mix has no timer rules (see bench/chaos_oracle.py "
        'for why they are left out); the only timers, marketing offers\' "ignored" checks, '
        "fall due after the run.",
        "- Left out as processing time: state `seen_days`, trigger `created_at`, decision "
        "`decided_at`, Redis TTLs. Everything else is compared exactly.",
        "- Final state: the worker's RocksDB (`customers`, `timelines`, `stats`) after a "
        "SIGTERM stop, once every source partition was committed to its end.",
        "- Redis: `project(state, now)` of each record, the timelines and the offer-counter "
        "hashes, against GET/HGETALL; extra `omni:*` keys count too.",
        "",
        "## Fault timeline",
        "",
        "```",
        *(f"{at:8.1f}s  {text}" for at, text in result["timeline"]),
        "```",
        "",
    ]
    return "\n".join(lines)


def stop_excerpt(report: str, head: int = 60, tail: int = 15) -> list[str]:
    """At most ``head + tail`` lines of an unexpected stop's log report: the first errors
    (the cause) and the last lines (how it ended)."""
    text = report.strip().splitlines()
    if len(text) <= head + tail:
        return text
    return [*text[:head], f"[... {len(text) - head - tail} lines ...]", *text[-tail:]]


def figures(result: dict[str, Any]) -> str:
    """The short version for the terminal."""
    t, s, p, v = result["triggers"], result["states"], result["poison"], result["verdict"]
    rm = result["read_model"]["vs_worker_state"]
    out = [
        f"triggers lost {t['lost']}/{t['expected']}, unexpected {t['unexpected']}, "
        f"duplicates raw {t['duplicates_raw']}, after dedup {t['duplicates_after_dedup']}",
        f"customers with wrong state {s['differing'] + s['missing']}/{s['customers']}, "
        f"Redis keys differing {rm['differing'] + rm['missing'] + rm['extra']}/{rm['keys']}",
        f"poison dead-lettered {p['deadlettered']}/{p['sent']}, "
        f"unscheduled worker stops {len(result['unexpected_stops'])}, "
        f"converged {result['convergence']['converged']}",
    ]
    for label, f in result["faults"].items():
        out.append(
            f"{label}: n={f['count']} p50 {_n(f['p50'])}s p95 {_n(f['p95'])}s max {_n(f['max'])}s"
            f" not recovered {f['not_recovered']}, longest stall p50 {_n(f.get('stall_p50'))}s"
            f" max {_n(f.get('stall_max'))}s"
        )
    out.append(
        "targets "
        + (
            "met"
            if v["all_met"]
            else "NOT met: " + ", ".join(k for k, ok in v.items() if k != "all_met" and not ok)
        )
    )
    return "\n".join(out)


def write_results(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


# --- command line -----------------------------------------------------------------------------


def _kinds(known: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(k.strip() for k in text.split(",") if k.strip())
        unknown = set(chosen) - set(known)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {sorted(unknown)}; use {', '.join(known)}")
        return chosen

    return parse


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="full")
    p.add_argument("--events", type=int, help="valid events (full 100,000; short 3,000)")
    p.add_argument("--customers", type=int, help="customers (full 2,000; short 300)")
    p.add_argument("--rate", type=float, help="records per second (full 100; short 50)")
    p.add_argument("--partitions", type=int)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--poison-kinds",
        type=_kinds(tuple(POISON_BUILDERS)),
        help=f"comma-separated (default: all but colon_id); known: {', '.join(POISON_BUILDERS)}",
    )
    p.add_argument("--faults", type=_kinds(FAULT_KINDS), help="comma-separated fault kinds")
    p.add_argument(
        "--session-timeout",
        type=float,
        help="development only: BROKER_SESSION_TIMEOUT for the workers (default: as shipped)",
    )
    p.add_argument(
        "--out", type=Path, default=RESULTS_DIR / "chaos", help="writes OUT.md and OUT.json"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data dirs)")
    p.add_argument("--note", default="", help="a sentence for the top of the report")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> ChaosConfig:
    base = PRESETS.get(args.profile, ChaosConfig())
    changes: dict[str, Any] = {"seed": args.seed}
    for name in (
        "events",
        "customers",
        "rate",
        "partitions",
        "poison_kinds",
        "faults",
        "session_timeout",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    return dataclasses.replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    args = parse(argv)
    config = config_from(args)
    terminate_as_interrupt()
    with bench_stack(keep_workdir=args.keep) as stack:
        if args.keep:
            log.info("workdir %s", stack.workdir)
        workdir = Path(tempfile.mkdtemp(prefix="chaos-", dir=stack.workdir))
        result = run_chaos(config, stack.bootstrap, stack.redis_server, stack.kafka, workdir)
    if args.note:
        result["note"] = args.note
    write_results(result, args.out)
    print(figures(result))
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
