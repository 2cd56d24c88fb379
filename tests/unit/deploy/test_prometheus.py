"""deploy/prometheus: promtool validates the configs and rules and runs the rule
unit tests; the metric names in the alerts must be ones the worker exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from processors.metrics import Metrics
from processors.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
PROM_DIR = ROOT / "deploy/prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
COMPOSE_CONFIG = PROM_DIR / "prometheus.compose.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
RUNBOOK = ROOT / "deploy/runbook.md"

#: What the worker exports (processors/metrics.py) and the alerts may use.
WORKER_METRICS: dict[str, str] = {
    "omni_events_ingested_total": "counter",
    "omni_events_deadlettered_total": "counter",
    "omni_events_deadlettered_by_channel_total": "counter",
    "omni_events_processed_total": "counter",
    "omni_events_duplicate_total": "counter",
    "omni_triggers_emitted_total": "counter",
    "omni_decisions_suppressed_total": "counter",
    "omni_event_to_trigger_latency_seconds": "histogram",
    "omni_redis_write_errors_total": "counter",
    "omni_read_model_lag_seconds": "gauge",
    "omni_consumer_lag_messages": "gauge",
    "omni_table_recovery_remaining_messages": "gauge",
    "omni_worker_ready": "gauge",
    "omni_batch_events": "histogram",
    # Health: per-partition progress (processors/health.py).
    "omni_consumer_committed_lag_messages": "gauge",
    "omni_partition_stall_seconds": "gauge",
    "omni_partition_stalled": "gauge",
    # Journeys and rules.
    "omni_timer_lag_seconds": "histogram",
    "omni_ruleset_reloads_total": "counter",
    "omni_ruleset_reload_refused": "gauge",
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
REQUIRED_ALERTS = {
    "OmniDeadLetterRateHigh",
    "OmniNoProgress",
    "OmniTriggerLatencyHigh",
    "OmniReadModelLagging",
    "OmniRedisWriteErrors",
    "OmniWorkerDown",
    "OmniWorkerNotReady",
    "OmniPartitionStalled",
    "OmniCommittedLagHigh",
    "OmniDeadLetterSpike",
    "OmniTimerLagHigh",
    "OmniRulesetReloadRefused",
}
METRIC_NAME = re.compile(r"\bomni_\w+")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: run `make bootstrap` (it installs the Debian package "
            "prometheus, which provides promtool)",
            pytrace=False,
        )
    return path


def run_promtool(promtool: str, *args: str | Path, cwd: Path = ROOT) -> None:
    result = subprocess.run(
        [promtool, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"promtool {' '.join(map(str, args))} failed ({result.returncode}):\n"
        f"{result.stdout}\n{result.stderr}"
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# --- promtool ----------------------------------------------------------------------


@pytest.mark.parametrize("config", [CONFIG, COMPOSE_CONFIG], ids=lambda p: p.name)
def test_promtool_check_config(promtool: str, config: Path) -> None:
    run_promtool(promtool, "check", "config", config.relative_to(ROOT))


def test_promtool_check_rules(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", ALERTS.relative_to(ROOT))


def test_promtool_rule_unit_tests(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", ALERTS_TEST.relative_to(ROOT))


# Broken variants of alerts.yml that alerts_test.yml must reject: proof that the
# rule unit tests can fail, on the mistakes that are easy to make.
MUTATIONS = {
    # Lag has topic/partition labels, the counter has none: never matches.
    "no-progress-unaggregated": (
        """(sum by (job, instance) (omni_consumer_lag_messages) > 0)
          and on (job, instance)
          (sum by (job, instance) (rate(omni_events_processed_total[5m])) == 0)""",
        "omni_consumer_lag_messages > 0 and rate(omni_events_processed_total[5m]) == 0",
    ),
    # Silences a worker that says it is ready but is stuck.
    "no-progress-only-when-not-ready": (
        "(sum by (job, instance) (omni_consumer_lag_messages) > 0)",
        "(sum by (job, instance) (omni_consumer_lag_messages) > 0"
        " unless on (job, instance) omni_worker_ready == 1)",
    ),
    # Without the `or`, a pipeline that rejects everything has no ratio at all.
    "dead-letters-without-fallback": (
        """
                    or
                      0 * sum by (job) (rate(omni_events_deadlettered_total[10m]))""",
        "",
    ),
    "latency-threshold-1s": ("        ) > 0.5\n", "        ) > 1\n"),
    # Without the window, a restart loop (stalled for one scrape each time) never fires.
    "stalled-without-window": (
        """max by (job, topic, partition) (max_over_time(omni_partition_stall_seconds[10m]))
          and on (job, topic, partition)
          (max by (job, topic, partition) (max_over_time(omni_partition_stalled[10m])) == 1)""",
        """max by (job, topic, partition) (omni_partition_stall_seconds)
          and on (job, topic, partition)
          (max by (job, topic, partition) (omni_partition_stalled) == 1)""",
    ),
    # Per instance: one alert per worker that held the partition, each restarting its
    # clock whenever the partition moves.
    "stalled-per-instance": (
        "max by (job, topic, partition) (max_over_time(",
        "max by (job, instance, topic, partition) (max_over_time(",
    ),
    # A backlog being worked off after an outage is progress, not an alert.
    "committed-lag-fires-on-catch-up": (
        """          unless on (job, topic, partition)
          (max by (job, topic, partition) (deriv(omni_consumer_committed_lag_messages[10m])) < 0)
""",
        "",
    ),
    # The instantaneous value misses the commits between evaluations: a busy, healthy
    # partition would fire.
    "committed-lag-instantaneous": (
        "(min_over_time(omni_consumer_committed_lag_messages[10m]))",
        "(omni_consumer_committed_lag_messages)",
    ),
    # Without the floor, a quiet channel that goes from 0.5 to 5 a minute fires.
    "spike-without-floor": (
        """{channel!="none"}[10m]))
            > 0.1
""",
        """{channel!="none"}[10m]))
            > 0
""",
    ),
    # Without the baseline, a channel's usual trickle above the floor fires.
    "spike-without-baseline": (
        "            >\n              3 * (",
        "            >\n              0 * (",
    ),
    # Without the fallback (`and` keeps the baseline only), a channel with no history
    # waits 10 more minutes.
    "spike-without-fallback": (
        "\n                or\n                  0 * sum by (job, channel) (rate(",
        "\n                and\n                  0 * sum by (job, channel) (rate(",
    ),
    # The customer step's processing_error is not a channel's spike.
    "spike-counts-channel-none": ('{channel!="none"}', ""),
    "timer-lag-threshold-10s": ("          ) > 5\n", "          ) > 10\n"),
    "reload-refused-on-any-reload": (
        "max by (job, instance) (omni_ruleset_reload_refused) == 1",
        "max by (job, instance) (omni_ruleset_reload_refused) >= 0",
    ),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_rule_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path, name: str) -> None:
    old, new = MUTATIONS[name]
    rules = ALERTS.read_text()
    assert old in rules, f"mutation {name} no longer applies to alerts.yml: update it"
    (tmp_path / "alerts.yml").write_text(rules.replace(old, new))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    run_promtool(promtool, "check", "rules", "alerts.yml", cwd=tmp_path)  # still valid
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0, f"alerts_test.yml accepts the broken rule ({name})"


# --- metric names ------------------------------------------------------------------


def test_metric_list_follows_prometheus_conventions() -> None:
    for name, kind in WORKER_METRICS.items():
        assert re.fullmatch(r"omni_[a-z0-9_]+", name), name
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{kind} {name} must not end in _total"
        words = set(name.split("_"))
        assert not words & {"ms", "milliseconds", "minutes", "hours"}, (
            f"{name}: durations are in seconds, the base unit"
        )
        if words & {"latency", "duration", "age", "seconds"}:
            base = name.removesuffix("_total")
            assert base.endswith("_seconds"), f"duration {name} must end in _seconds"


def test_metric_list_matches_what_the_worker_exports() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    exported = {}
    for family in registry.collect():
        # prometheus-client drops _total from a counter family's name.
        name = family.name + "_total" if family.type == "counter" else family.name
        exported[name] = family.type
    for name, kind in WORKER_METRICS.items():
        assert exported.get(name) == kind, (
            f"{name} ({kind}) is not exported as such by processors/metrics.py"
        )


def test_alerts_only_use_exported_metrics() -> None:
    allowed = set()
    for name, kind in WORKER_METRICS.items():
        if kind == "histogram":
            allowed.update(name + suffix for suffix in HISTOGRAM_SERIES)
        else:
            allowed.add(name)
    used = {match for rule in alert_rules() for match in METRIC_NAME.findall(rule["expr"])}
    assert used, "no omni_ metric found in alerts.yml"
    unknown = used - allowed
    assert not unknown, (
        f"alerts.yml uses series the worker does not export: {sorted(unknown)} "
        "(counters end in _total; histograms are read through _bucket, _sum and _count)"
    )


# --- the rules ---------------------------------------------------------------------


def test_every_required_alert_is_defined_once() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), f"duplicate alerts: {names}"
    missing = REQUIRED_ALERTS - set(names)
    assert not missing, f"alerts.yml lacks {sorted(missing)}"


def test_every_alert_is_actionable() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name} has no `for:`"
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key, "").strip(), f"{name} has no {key} annotation"
        assert len(annotations["description"]) > len(annotations["summary"]), (
            f"{name}: the description must say what to do, not repeat the summary"
        )


def test_alert_timings() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert rules["OmniWorkerDown"]["expr"].strip() == 'up{job="omni-worker"} == 0'
    expected_for = {
        "OmniWorkerDown": "2m",
        "OmniWorkerNotReady": "5m",
        "OmniReadModelLagging": "5m",
        "OmniNoProgress": "10m",
        "OmniTriggerLatencyHigh": "10m",
        "OmniPartitionStalled": "1m",
        "OmniCommittedLagHigh": "5m",
        "OmniDeadLetterSpike": "10m",
        "OmniTimerLagHigh": "10m",
        "OmniRulesetReloadRefused": "1m",
    }
    for name, duration in expected_for.items():
        assert rules[name]["for"] == duration, f"{name}: for {rules[name]['for']}"
    assert "[10m]" in rules["OmniDeadLetterRateHigh"]["expr"]
    assert "> 0.05" in rules["OmniDeadLetterRateHigh"]["expr"]
    assert "histogram_quantile(0.99" in rules["OmniTriggerLatencyHigh"]["expr"]
    assert "> 30" in rules["OmniReadModelLagging"]["expr"]
    assert "omni_partition_stalled" in rules["OmniPartitionStalled"]["expr"]
    assert "> 1000" in rules["OmniCommittedLagHigh"]["expr"]
    spike = rules["OmniDeadLetterSpike"]["expr"]
    assert "> 0.1" in spike and "3 * (" in spike and "[1d] offset 10m" in spike
    assert "by (job, channel)" in spike
    assert "histogram_quantile(0.99" in rules["OmniTimerLagHigh"]["expr"]
    assert "> 5" in rules["OmniTimerLagHigh"]["expr"]


def runbook_sections() -> dict[str, str]:
    """Anchor -> the text of its section (up to the next anchor)."""
    parts = re.split(r'^<a id="([^"]+)"></a>\n', RUNBOOK.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    sections = runbook_sections()
    names = [rule["alert"] for rule in alert_rules()]
    for name in names:
        url = rule_by_name(name)["annotations"]["runbook_url"]
        assert url == f"deploy/runbook.md#{name}", f"{name}: runbook_url is {url!r}"
        assert (ROOT / url.split("#")[0]).is_file()
        assert name in sections, f'deploy/runbook.md has no <a id="{name}"> section'
        section = sections[name]
        assert section.startswith(f"## {name}\n"), f"{name}: the anchor must precede its heading"
        for part in ("**Means**", "**Confirm**", "**Do**", "**Resolves**"):
            assert part in section, f"runbook section {name} lacks {part}"
    assert set(sections) == set(names), (
        f"runbook sections without an alert: {sorted(set(sections) - set(names))}"
    )


def test_readme_operations_lists_every_alert_and_the_runbook() -> None:
    readme = (ROOT / "README.md").read_text()
    operations = readme.split("\n## Operations\n", 1)[1].split("\n## ", 1)[0]
    assert "deploy/runbook.md" in operations
    for rule in alert_rules():
        name = rule["alert"]
        assert f"`{name}`" in operations, f"README Operations does not list {name}"


def rule_by_name(name: str) -> dict[str, Any]:
    [rule] = [rule for rule in alert_rules() if rule["alert"] == name]
    return rule


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    spec = yaml.safe_load(ALERTS_TEST.read_text())
    assert spec["rule_files"] == ["alerts.yml"]
    fires, quiet = set(), set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
            for alert in check.get("exp_alerts") or []:
                # The annotations are checked whole, runbook_url included.
                assert alert["exp_annotations"]["runbook_url"] == (
                    f"deploy/runbook.md#{check['alertname']}"
                ), case["name"]
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= fires, f"no test where these fire: {sorted(names - fires)}"
    assert names <= quiet, f"no test where these stay quiet: {sorted(names - quiet)}"


# --- scrape configs ----------------------------------------------------------------


def test_scrape_config() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["omni-worker"]["static_configs"] for t in sc["targets"]]
    metrics_port = Settings.model_fields["metrics_port"].default
    assert targets == [f"127.0.0.1:{metrics_port}"]
    # The alerts select the job by name.
    assert 'job="omni-worker"' in ALERTS.read_text()


def test_compose_config_differs_only_in_targets() -> None:
    def without_targets(path: Path) -> dict[str, Any]:
        config = yaml.safe_load(path.read_text())
        for job in config["scrape_configs"]:
            for static in job["static_configs"]:
                static.pop("targets")
        return config

    assert without_targets(COMPOSE_CONFIG) == without_targets(CONFIG), (
        "prometheus.compose.yml has drifted from prometheus.yml"
    )
