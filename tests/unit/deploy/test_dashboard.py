"""The Grafana dashboard's JSON, against the worker's metrics, without a server.

tests/integration/test_dashboard.py evaluates every query on a real Prometheus; this
keeps the cheap invariants here: names exported, windows and variables as Grafana
wants them, and the idle worker's zero series that keep panels from "no data".
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from bench.dashboard_png import DEFAULT_VARIABLES, load_dashboard, panel_queries, substitute
from processors.metrics import Metrics
from processors.rulebook.ruleset import load_ruleset
from processors.settings import DEFAULT_RULES_DIR, TRIGGER_CHANNELS, Settings
from schemas import REJECTION_REASONS

DASHBOARD = load_dashboard()
QUERIES = panel_queries(DASHBOARD)
RULES = load_ruleset(DEFAULT_RULES_DIR, Settings().rule_delays())
#: PromQL words that look like metric names in an expression.
PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "increase",
    "histogram_quantile",
    "max",
    "min",
    "count",
    "clamp_min",
    "le",
}


def exported(metrics_text: str) -> dict[str, set[str]]:
    """Sample name -> the label sets it is exported with (as text)."""
    samples: dict[str, set[str]] = {}
    for line in metrics_text.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            samples.setdefault(name.split()[0], set()).add(rest.rpartition("}")[0])
    return samples


def idle_worker_metrics() -> dict[str, set[str]]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.know_rules(RULES.rules)
    return exported(generate_latest(registry).decode())


def exported_names() -> set[str]:
    """Every sample name the worker can export, labelled children or not (the ingest
    counter has none before the first event: its channel x type pairs are not listed)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    registry = CollectorRegistry()
    Metrics(registry)
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_every_metric_a_query_names_is_exported() -> None:
    names = exported_names()
    for query in QUERIES:
        words = set(re.findall(r"\bomni_\w+", query.expr))
        assert words, f"{query.panel}: {query.expr} reads no worker metric"
        missing = words - names
        assert not missing, f"{query.panel}: the worker exports no {sorted(missing)}"


def test_windows_and_variables_are_grafanas() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert {"worker", "channel"} <= variables.keys()
    for name in ("worker", "channel"):
        # "All" must be a regex that matches every value, not a list Grafana builds.
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    assert "instance" in variables["worker"]["query"]["query"]
    for query in QUERIES:
        assert 'instance=~"$worker"' in query.expr, f"{query.panel}: ignores $worker"
        for function, window in re.findall(r"\b(rate|increase)\(.*?\[([^\]]+)\]", query.expr):
            expected = "$__rate_interval" if function == "rate" else "$__range"
            assert window == expected, f"{query.panel}: {function}() over [{window}]"
        substitute(query.expr, DEFAULT_VARIABLES)  # no variable without a value


def test_panels_are_unique_and_laid_out() -> None:
    titles = [panel["title"] for panel in DASHBOARD["panels"]]
    assert len(titles) == len(set(titles))
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


def test_an_idle_worker_exports_zeros_for_known_labels() -> None:
    samples = idle_worker_metrics()
    dead = samples["omni_events_deadlettered_total"]
    for reason in REJECTION_REASONS:
        assert f'reason="{reason}"' in dead
    triggers = samples["omni_triggers_emitted_total"]
    for rule in RULES.rules:
        assert any(f'trigger_type="{rule.trigger_type}"' in labels for labels in triggers)
        assert any(f'rule="{rule.id}"' in labels for labels in samples["omni_offer_outcomes_total"])
    channels = {re.search(r'channel="(\w+)"', labels)[1] for labels in triggers}  # type: ignore[index]
    assert channels <= set(TRIGGER_CHANNELS), "a trigger channel the worker cannot send to"
    assert {'result="ok"', 'result="refused"'} <= samples["omni_ruleset_reloads_total"]
    # Low cardinality: bounded by the rule files, never by customers.
    assert len(triggers) <= len(RULES.rules) * 4
