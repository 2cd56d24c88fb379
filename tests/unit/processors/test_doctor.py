"""``omni doctor``'s verdicts: given facts, the status and what to do (pure, no I/O)."""

from __future__ import annotations

import pytest

from processors.settings import Settings
from processors.tools.doctor import (
    Check,
    Status,
    default_options,
    exit_code,
    partition_lag,
    running_rulesets,
    verdict_broker,
    verdict_endpoint,
    verdict_eviction,
    verdict_group,
    verdict_lag,
    verdict_partitions,
    verdict_redis,
    verdict_ruleset,
    verdict_topic_configs,
    verdict_topics_exist,
    wanted_topic_configs,
)


def assert_not_ok(check: Check, status: Status) -> None:
    assert check.status is status
    assert check.action, f"{check.name}: a check that is not ok must say what to do"


def test_exit_code_is_0_with_warnings_and_1_on_a_failure_or_strict_warnings() -> None:
    good = Check("a", Status.OK, "")
    warned = Check("b", Status.WARN, "", "look")
    failed = Check("c", Status.FAIL, "", "fix")
    assert exit_code([good]) == 0
    assert exit_code([good, warned]) == 0
    assert exit_code([good, warned], strict=True) == 1
    assert exit_code([good, failed]) == 1
    assert exit_code([good], strict=True) == 0


def test_broker() -> None:
    assert verdict_broker("k:9092", 1, None).status is Status.OK
    down = verdict_broker("k:9092", 0, "Broker transport failure")
    assert_not_ok(down, Status.FAIL)
    assert "k:9092" in down.detail and "transport" in down.detail


def test_topics_missing_are_named() -> None:
    wanted = ["a", "b", "c"]
    assert verdict_topics_exist(wanted, {"a": 8, "b": 8, "c": 8}).status is Status.OK
    missing = verdict_topics_exist(wanted, {"a": 8})
    assert_not_ok(missing, Status.FAIL)
    assert "2 of 3 missing: b, c" in missing.detail


def test_partition_counts_must_all_equal_the_setting() -> None:
    assert verdict_partitions(["a", "b"], {"a": 8, "b": 8}, 8).status is Status.OK
    # A missing topic is the topics check's business, not this one's.
    assert verdict_partitions(["a", "b"], {"a": 8}, 8).status is Status.OK
    odd = verdict_partitions(["a", "b"], {"a": 8, "b": 3}, 8)
    assert_not_ok(odd, Status.FAIL)
    assert "OMNI_PARTITIONS=8 but b=3" in odd.detail


def test_topic_configs_differing_fail_and_absent_changelogs_warn() -> None:
    wanted = {"dl": {"retention.ms": "1000"}, "cl": {"cleanup.policy": "compact"}}
    right = {"dl": {"retention.ms": "1000"}, "cl": {"cleanup.policy": "compact"}}
    assert verdict_topic_configs(wanted, right).status is Status.OK
    wrong = verdict_topic_configs(
        wanted, {"dl": {"retention.ms": "604800000"}, "cl": {"cleanup.policy": "delete"}}
    )
    assert_not_ok(wrong, Status.FAIL)
    assert "dl retention.ms=604800000 (want 1000)" in wrong.detail
    assert "cl cleanup.policy=delete (want compact)" in wrong.detail
    absent = verdict_topic_configs(wanted, {"dl": {"retention.ms": "1000"}, "cl": None})
    assert_not_ok(absent, Status.WARN)
    assert "cl" in absent.detail


def test_wanted_configs_are_the_documented_retention_and_compaction() -> None:
    settings = Settings(
        app_id="app",
        deadletter_retention_hours=2,
        changelog_max_compaction_lag_seconds=3600,
        changelog_min_compaction_lag_seconds=60,
        changelog_delete_retention_seconds=120,
    )
    wanted = wanted_topic_configs(settings)
    assert wanted["touchpoint.deadletter"] == {"retention.ms": "7200000"}
    for table in ("customers", "timelines", "stats"):
        assert wanted[f"app-{table}-changelog"] == {
            "cleanup.policy": "compact",
            "min.compaction.lag.ms": "60000",
            "max.compaction.lag.ms": "3600000",
            "delete.retention.ms": "120000",
        }


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("STABLE", Status.OK),
        ("EMPTY", Status.WARN),
        ("DEAD", Status.WARN),
        ("PREPARING_REBALANCING", Status.WARN),
        ("COMPLETING_REBALANCING", Status.WARN),
        ("UNKNOWN", Status.WARN),
    ],
)
def test_group_states(state: str, status: Status) -> None:
    check = verdict_group("omni-pipeline", state, 1, None)
    assert check.status is status
    assert "omni-pipeline" in check.detail and state in check.detail
    if status is not Status.OK:
        assert check.action


def test_group_that_cannot_be_described_warns_with_the_principal_to_use() -> None:
    check = verdict_group("g", None, 0, "GROUP_AUTHORIZATION_FAILED")
    assert_not_ok(check, Status.WARN)
    assert "Describe group g" in check.action


def test_partition_lag_from_the_commit_or_the_log_start() -> None:
    assert partition_lag(committed=10, low=0, high=15) == 5
    assert partition_lag(committed=15, low=0, high=15) == 0
    # No commit (librdkafka reports -1001): everything retained would be read.
    assert partition_lag(committed=None, low=3, high=10) == 7
    assert partition_lag(committed=-1001, low=3, high=10) == 7
    # A commit before the log start (retention deleted past it) reads from the start.
    assert partition_lag(committed=1, low=5, high=10) == 5


def test_lag_warns_above_the_threshold_per_topic() -> None:
    assert verdict_lag({"a": 10, "b": 1000}, 1000).status is Status.OK
    high = verdict_lag({"a": 10, "b": 1001}, 1000)
    assert_not_ok(high, Status.WARN)
    assert "b=1001" in high.detail and "a=" not in high.detail
    assert_not_ok(verdict_lag({}, 1000, "GROUP_AUTHORIZATION_FAILED"), Status.WARN)


def test_redis_reachability() -> None:
    assert verdict_redis("h:6379/0", None).status is Status.OK
    down = verdict_redis("h:6379/0", "Connection refused")
    assert_not_ok(down, Status.FAIL)
    assert "h:6379/0" in down.detail


def test_eviction_policy_must_be_noeviction_and_a_refused_check_warns() -> None:
    assert verdict_eviction("noeviction", None).status is Status.OK
    lru = verdict_eviction("allkeys-lru", None)
    assert_not_ok(lru, Status.FAIL)
    assert "allkeys-lru" in lru.detail and "noeviction" in lru.action
    refused = verdict_eviction(None, "CONFIG GET refused: NOPERM")
    assert_not_ok(refused, Status.WARN)
    assert "could not be checked" in refused.detail and "NOPERM" in refused.detail
    assert "CONFIG GET maxmemory-policy" in refused.action


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_worker_endpoints(path: str) -> None:
    url = f"http://w:6066{path}"
    assert verdict_endpoint(path, url, 200, None).status is Status.OK
    assert_not_ok(verdict_endpoint(path, url, 503, None), Status.FAIL)
    unreachable = verdict_endpoint(path, url, None, "Connection refused")
    assert_not_ok(unreachable, Status.FAIL)
    assert url in unreachable.detail and "--worker-url" in unreachable.action


METRICS = """# HELP omni_ruleset_info The running rule set (value 1)
# TYPE omni_ruleset_info gauge
omni_ruleset_info{ruleset="9fed6cbc0aed"} 1.0
omni_ruleset_reloads_total{result="ok"} 0.0
"""


def test_running_rulesets_read_from_the_info_gauge() -> None:
    assert running_rulesets(METRICS) == ["9fed6cbc0aed"]
    assert running_rulesets('omni_ruleset_info{ruleset="old"} 0.0\n') == []
    assert running_rulesets("omni_events_processed_total 3.0\n") == []


def test_ruleset_verdicts() -> None:
    assert verdict_ruleset("rules", "abc", None, ["abc"], None).status is Status.OK
    differs = verdict_ruleset("rules", "abc", None, ["old"], None)
    assert_not_ok(differs, Status.FAIL)
    assert "old" in differs.detail and "abc" in differs.detail and "SIGHUP" in differs.action
    assert_not_ok(verdict_ruleset("rules", None, "bad CEL", None, None), Status.FAIL)
    unreadable = verdict_ruleset("rules", "abc", None, None, "Connection refused")
    assert_not_ok(unreadable, Status.FAIL)
    assert "--metrics-url" in unreadable.action
    assert_not_ok(verdict_ruleset("rules", "abc", None, [], None), Status.FAIL)


def test_default_urls_reach_a_worker_bound_to_every_address_on_loopback() -> None:
    options = default_options(Settings(web_bind="0.0.0.0", web_port=7000, metrics_port=7001))
    assert options.worker_url == "http://127.0.0.1:7000"
    assert options.metrics_url == "http://127.0.0.1:7001/metrics"
    assert default_options(Settings(web_bind="10.0.0.5")).worker_url == "http://10.0.0.5:6066"
