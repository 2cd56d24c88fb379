"""``omni doctor``: the first command an SRE runs. Is the pipeline healthy, and if not,
what to do?

Two layers. The verdicts (``verdict_*``, ``partition_lag``, ``running_rulesets``,
``exit_code``) are pure: given facts, a :class:`Check` with a status and, when not ok,
one line saying what to do; the unit tests pin every verdict. The probes
(``gather_*``, :func:`run_doctor`) only fetch facts from the broker, Redis and the
worker, with short timeouts, and never change anything.

Exit codes (README "Operations"): 0 when every check is ok or only warns (a warning is
something to look at, not an outage: a lag above the threshold, a check the
credentials could not make); 1 when any check fails; ``--strict`` makes warnings
exit 1 too.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from processors.settings import Settings
from processors.topics import changelog_configs, changelog_topic_names

#: Messages past the group's committed offset, per topic, above which the lag warns.
#: The alert ``OmniCommittedLagHigh`` uses 1,000 per partition for 15 minutes; a
#: one-shot look cannot tell a backlog being worked off from a stuck one, so it warns.
DEFAULT_LAG_WARN = 1000


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One named check: what was found (``detail``) and, when not ok, what to do."""

    name: str
    status: Status
    detail: str
    action: str = ""

    def as_json(self) -> dict[str, str]:
        return {**asdict(self), "status": self.status.value}


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, action: str) -> Check:
    return Check(name, Status.WARN, detail, action)


def fail(name: str, detail: str, action: str) -> Check:
    return Check(name, Status.FAIL, detail, action)


def exit_code(checks: Iterable[Check], strict: bool = False) -> int:
    """0 when all is well (warnings allowed unless ``strict``), else 1."""
    statuses = {check.status for check in checks}
    if Status.FAIL in statuses or (strict and Status.WARN in statuses):
        return 1
    return 0


def _names(names: Iterable[str], most: int = 5) -> str:
    listed = sorted(names)
    shown = ", ".join(listed[:most])
    return shown if len(listed) <= most else f"{shown} and {len(listed) - most} more"


# --- Verdicts: Kafka -------------------------------------------------------------------


def verdict_broker(bootstrap: str, brokers: int, error: str | None) -> Check:
    name = "kafka broker"
    if error is not None:
        return fail(
            name,
            f"no answer from {bootstrap}: {error}",
            "start the broker (make up) or fix OMNI_KAFKA_BOOTSTRAP and the OMNI_KAFKA_SECURITY_"
            "PROTOCOL / SASL / SSL settings; topic, group and lag checks need it",
        )
    return ok(name, f"{bootstrap}: {brokers} broker(s) answer")


def verdict_topics_exist(wanted: Sequence[str], present: Mapping[str, int]) -> Check:
    name = "contract topics"
    missing = [topic for topic in wanted if topic not in present]
    if missing:
        return fail(
            name,
            f"{len(missing)} of {len(wanted)} missing: {_names(missing)}",
            "create them: start the worker as a principal allowed to create topics (it creates "
            "the missing ones), or `make up` locally; a new OMNI_TOPIC_NAMESPACE starts empty",
        )
    return ok(name, f"all {len(wanted)} exist")


def verdict_partitions(wanted: Sequence[str], present: Mapping[str, int], partitions: int) -> Check:
    name = "partition counts"
    wrong = {topic: present[topic] for topic in wanted if topic in present}
    wrong = {topic: count for topic, count in wrong.items() if count != partitions}
    if wrong:
        found = ", ".join(f"{topic}={count}" for topic, count in sorted(wrong.items()))
        return fail(
            name,
            f"OMNI_PARTITIONS={partitions} but {found}",
            "all contract topics need the same count (a customer's events must meet on one "
            "partition): recreate the odd topics, or set OMNI_PARTITIONS to the cluster's count",
        )
    return ok(name, f"every existing contract topic has {partitions}")


def verdict_topic_configs(
    wanted: Mapping[str, Mapping[str, str]],
    actual: Mapping[str, Mapping[str, str] | None],
) -> Check:
    """``wanted``: topic -> config -> value (retention, compaction); ``actual``: what the
    broker reports, None for a topic that does not exist (yet)."""
    name = "retention / compaction"
    differ: list[str] = []
    absent: list[str] = []
    for topic, configs in sorted(wanted.items()):
        current = actual.get(topic)
        if current is None:
            absent.append(topic)
            continue
        differ.extend(
            f"{topic} {key}={current.get(key, 'unset')} (want {value})"
            for key, value in sorted(configs.items())
            if current.get(key) != value
        )
    if differ:
        return fail(
            name,
            "; ".join(differ),
            "restart the worker (it sets these at start, processors/topics.py) or set them with "
            "kafka-configs.sh --alter --entity-type topics; README 'Erasure and retention'",
        )
    if absent:
        return warn(
            name,
            f"not created yet: {_names(absent)}",
            "start the worker: it creates the changelogs with these settings",
        )
    return ok(name, f"as documented on {len(wanted)} topics")


def wanted_topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """What README "Erasure and retention" promises, per topic."""
    wanted = {topic: dict(configs) for topic, configs in settings.topic_configs().items()}
    for topic in changelog_topic_names(settings):
        # Faust makes changelogs compacted; without it nothing is ever compacted away and
        # an erased customer's values stay until plain retention deletes them.
        wanted[topic] = {"cleanup.policy": "compact", **changelog_configs(settings)}
    return wanted


#: Group states (confluent-kafka ConsumerGroupState names) -> (status, what it means).
_GROUP_STATES: dict[str, tuple[Status, str]] = {
    "STABLE": (Status.OK, "consuming"),
    "PREPARING_REBALANCING": (Status.WARN, "rebalancing"),
    "COMPLETING_REBALANCING": (Status.WARN, "rebalancing"),
    "EMPTY": (Status.WARN, "no member: no worker is consuming"),
    "DEAD": (Status.WARN, "unknown to the broker: no worker has joined it"),
}


def verdict_group(group: str, state: str | None, members: int, error: str | None) -> Check:
    name = "consumer group"
    if error is not None:
        return warn(
            name,
            f"{group}: could not be described: {error}",
            f"run as a principal allowed to Describe group {group} (e.g. omni-admin)",
        )
    status, meaning = _GROUP_STATES.get(state or "", (Status.WARN, "in an unknown state"))
    detail = f"{group}: {state}, {members} member(s) ({meaning})"
    if status is Status.OK:
        return ok(name, detail)
    if state in ("PREPARING_REBALANCING", "COMPLETING_REBALANCING"):
        action = "run doctor again in a minute; a rebalance that never ends: see the worker logs"
    else:
        action = "start the worker (same OMNI_APP_ID) and check its /readyz"
    return warn(name, detail, action)


def partition_lag(committed: int | None, low: int, high: int) -> int:
    """Messages past the committed offset. Without a commit the worker would start at the
    log start (Faust reads from the earliest offset), so all retained messages count."""
    start = low if committed is None or committed < 0 else max(committed, low)
    return max(0, high - start)


def verdict_lag(lag_by_topic: Mapping[str, int], threshold: int, error: str | None = None) -> Check:
    name = "consumer lag"
    if error is not None:
        return warn(
            name,
            f"could not be read: {error}",
            "run as a principal allowed to Describe the group and its topics (e.g. omni-admin)",
        )
    total = sum(lag_by_topic.values())
    high = {topic: lag for topic, lag in lag_by_topic.items() if lag > threshold}
    if high:
        worst = ", ".join(f"{topic}={lag}" for topic, lag in sorted(high.items()))
        return warn(
            name,
            f"above {threshold} uncommitted: {worst}",
            "look at omni_consumer_committed_lag_messages: going down = a backlog being worked "
            "off; flat while Redis is up = a stuck worker (check /livez and its logs)",
        )
    return ok(name, f"{total} uncommitted message(s) on {len(lag_by_topic)} source topics")


# --- Verdicts: Redis -------------------------------------------------------------------


def verdict_redis(where: str, error: str | None) -> Check:
    name = "redis"
    if error is not None:
        return fail(
            name,
            f"{where}: {error}",
            "start Redis (make up) or fix OMNI_REDIS_URL / OMNI_REDIS_CA_FILE (user, password, "
            "TLS); the read model is behind while it is down",
        )
    return ok(name, f"{where} answers PING")


def verdict_eviction(policy: str | None, refused: str | None) -> Check:
    name = "redis maxmemory-policy"
    if policy is None:
        return warn(
            name,
            f"could not be checked: {refused or 'no answer'}",
            "ask a Redis admin to run `redis-cli CONFIG GET maxmemory-policy` (or read "
            "redis.conf / the managed service's settings): it must be noeviction",
        )
    if policy != "noeviction":
        return fail(
            name,
            f"{policy}: Redis may evict read-model keys (entitlements, coupons) under memory "
            "pressure",
            "set maxmemory-policy noeviction (CONFIG SET and redis.conf) and give Redis more "
            "memory if it is near maxmemory",
        )
    return ok(name, "noeviction")


# --- Verdicts: the worker --------------------------------------------------------------


def verdict_endpoint(path: str, url: str, status: int | None, error: str | None) -> Check:
    name = f"worker {path}"
    if status is None:
        return fail(
            name,
            f"nothing answers at {url}: {error or 'no response'}",
            "start the worker (make up, or its Deployment), or point --worker-url at it",
        )
    if status == 200:
        return ok(name, f"200 from {url}")
    if path == "/readyz":
        action = "wait for recovery or the rebalance to end; still not ready: the worker's log"
    else:
        action = "stalled partitions (see the body and omni_partition_stalled): restart the worker"
    return fail(name, f"{status} from {url}", action)


_RULESET_SAMPLE = re.compile(r'^omni_ruleset_info\{[^}]*ruleset="([^"]*)"[^}]*\}\s+(\S+)', re.M)


def running_rulesets(metrics_text: str) -> list[str]:
    """Rule set ids the worker reports in ``omni_ruleset_info`` with value 1."""
    return sorted(
        {ruleset for ruleset, value in _RULESET_SAMPLE.findall(metrics_text) if float(value) == 1}
    )


def verdict_ruleset(
    rules_dir: str,
    on_disk: str | None,
    disk_error: str | None,
    running: Sequence[str] | None,
    metrics_error: str | None,
) -> Check:
    name = "ruleset"
    if disk_error is not None:
        return fail(
            name,
            f"{rules_dir} does not load: {disk_error}",
            "fix the rule files (the worker keeps its old rule set and refuses this one)",
        )
    if running is None:
        return fail(
            name,
            f"{rules_dir} is {on_disk}; the worker's metrics are unreadable: {metrics_error}",
            "start the worker, or point --metrics-url at its metrics port (OMNI_METRICS_PORT)",
        )
    if not running:
        return fail(
            name,
            f"{rules_dir} is {on_disk}; the worker's metrics have no omni_ruleset_info",
            "check that --metrics-url is this pipeline's worker",
        )
    if list(running) != [on_disk]:
        return fail(
            name,
            f"the worker runs {', '.join(running)}, {rules_dir} is {on_disk}",
            "reload: send the worker SIGHUP (a refused reload is logged as 'Rule reload refused'"
            "), or check that OMNI_RULES_DIR is the folder the worker reads",
        )
    return ok(name, f"the worker runs {on_disk}, as in {rules_dir}")


# --- Probes (I/O, thin) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    worker_url: str
    metrics_url: str
    lag_warn: int = DEFAULT_LAG_WARN
    timeout: float = 5.0


def default_options(settings: Settings, timeout: float = 5.0) -> Options:
    # A worker bound to every address is reached on loopback from the same host.
    host = "127.0.0.1" if settings.web_bind in ("0.0.0.0", "::", "") else settings.web_bind
    return Options(
        worker_url=f"http://{host}:{settings.web_port}",
        metrics_url=f"http://{host}:{settings.metrics_port}/metrics",
        timeout=timeout,
    )


def _error(exc: BaseException) -> str:
    # A KafkaException carries a KafkaError whose str() is a repr: its .str() reads well.
    from confluent_kafka import KafkaError

    first = exc.args[0] if exc.args else None
    if isinstance(first, KafkaError):
        text = str(first.str())
    else:
        text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _http_get(url: str, timeout: float) -> tuple[int | None, str, str | None]:
    """(status, body, error); status None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace"), None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), None
    except (OSError, ValueError) as exc:
        return None, "", _error(exc)


def kafka_checks(settings: Settings, options: Options) -> list[Check]:
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource, OffsetSpec

    # librdkafka logs every failed connection attempt to stderr; the broker check says it
    # once, in the table.
    admin = AdminClient({**settings.kafka_client_config(), "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=options.timeout)
    except KafkaException as exc:
        return [verdict_broker(settings.kafka_bootstrap, 0, _error(exc))]
    checks = [verdict_broker(settings.kafka_bootstrap, len(metadata.brokers), None)]
    present = {name: len(topic.partitions) for name, topic in metadata.topics.items()}
    wanted = settings.contract_topics()
    checks.append(verdict_topics_exist(wanted, present))
    checks.append(verdict_partitions(wanted, present, settings.partitions))

    configs = wanted_topic_configs(settings)
    actual: dict[str, Mapping[str, str] | None] = {t: None for t in configs if t not in present}
    described = [t for t in configs if t in present]
    try:
        if described:
            futures = admin.describe_configs(
                [ConfigResource(ConfigResource.Type.TOPIC, t) for t in described],
                request_timeout=options.timeout,
            )
            for resource, future in futures.items():
                entries = future.result()
                actual[resource.name] = {key: entry.value for key, entry in entries.items()}
        checks.append(verdict_topic_configs(configs, actual))
    except KafkaException as exc:
        checks.append(
            warn(
                "retention / compaction",
                f"could not be read: {_error(exc)}",
                "run as a principal allowed to DescribeConfigs on the topics (e.g. omni-admin)",
            )
        )

    group = settings.app_id
    try:
        description = admin.describe_consumer_groups([group], request_timeout=options.timeout)[
            group
        ].result()
        state = getattr(description.state, "name", str(description.state))
        checks.append(verdict_group(group, state, len(description.members), None))
    except KafkaException as exc:
        checks.append(verdict_group(group, None, 0, _error(exc)))

    sources = [
        t for t in [*settings.touchpoint_topics, settings.customer_events_topic] if t in present
    ]
    try:
        listed = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=options.timeout
        )[group].result()
        committed = {(tp.topic, tp.partition): tp.offset for tp in listed.topic_partitions or []}
        partitions = [TopicPartition(t, p) for t in sources for p in range(present[t])]
        ends: dict[tuple[str, int], list[int]] = {}
        for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
            if not partitions:
                break
            answered = admin.list_offsets(
                {tp: spec for tp in partitions}, request_timeout=options.timeout
            )
            for tp, future in answered.items():
                ends.setdefault((tp.topic, tp.partition), []).append(future.result().offset)
        lag_by_topic = {topic: 0 for topic in sources}
        for (topic, partition), (low, high) in ends.items():
            lag_by_topic[topic] += partition_lag(committed.get((topic, partition)), low, high)
        checks.append(verdict_lag(lag_by_topic, options.lag_warn))
    except KafkaException as exc:
        checks.append(verdict_lag({}, options.lag_warn, _error(exc)))
    return checks


def redis_checks(settings: Settings, options: Options) -> list[Check]:
    from redis.exceptions import RedisError, ResponseError

    url = settings.redis_url.get_secret_value()
    # Never print the password: host, port and db only.
    where = url.rsplit("@", 1)[-1] if "@" in url else url.split("://", 1)[-1]
    try:
        client = settings.redis_client()
        client.connection_pool.connection_kwargs.update(
            socket_timeout=options.timeout, socket_connect_timeout=options.timeout
        )
        client.ping()
    except (RedisError, OSError) as exc:
        return [verdict_redis(where, _error(exc))]
    checks = [verdict_redis(where, None)]
    try:
        answer: dict[str, Any] = client.config_get("maxmemory-policy")
        policy = answer.get("maxmemory-policy")
        checks.append(verdict_eviction(None if policy is None else str(policy), None))
    except ResponseError as exc:
        # A least-privilege user (README "Redis: users and TLS") may not run CONFIG.
        checks.append(verdict_eviction(None, f"CONFIG GET refused: {_error(exc)}"))
    except (RedisError, OSError) as exc:
        checks.append(verdict_eviction(None, _error(exc)))
    finally:
        client.close()
    return checks


def worker_checks(settings: Settings, options: Options) -> list[Check]:
    from processors.rulebook import load_ruleset
    from processors.rulebook.loading import RuleFileError

    base = options.worker_url.rstrip("/")
    checks = []
    for path in ("/livez", "/readyz"):
        status, _, error = _http_get(base + path, options.timeout)
        checks.append(verdict_endpoint(path, base + path, status, error))
    on_disk: str | None = None
    disk_error: str | None = None
    try:
        on_disk = load_ruleset(Path(settings.rules_dir), settings.rule_delays()).ruleset_id
    except (RuleFileError, OSError) as exc:
        disk_error = _error(exc)
    status, body, error = _http_get(options.metrics_url, options.timeout)
    running = running_rulesets(body) if status == 200 else None
    if status not in (None, 200):
        error = f"HTTP {status} from {options.metrics_url}"
    elif status is None:
        error = f"{options.metrics_url}: {error}"
    checks.append(verdict_ruleset(settings.rules_dir, on_disk, disk_error, running, error))
    return checks


def run_doctor(settings: Settings, options: Options) -> list[Check]:
    """Every check, in the order an SRE reads them: Kafka, Redis, the worker."""
    return [
        *kafka_checks(settings, options),
        *redis_checks(settings, options),
        *worker_checks(settings, options),
    ]
