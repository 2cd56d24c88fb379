"""Every query of the Grafana dashboard, evaluated by a real Prometheus scraping a real
worker while the stories play (deploy/grafana/dashboards/omnichannel.json).

A query that does not parse, names a metric or label the worker does not export, or
selects nothing for an idle label value fails here rather than as an empty panel in
an incident. With ``OMNI_DASHBOARD_PNG=<path>`` the run also draws the dashboard
(bench.dashboard_png) from this Prometheus: that is how docs/dashboard.png is made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bench.dashboard_png import (
    DEFAULT_VARIABLES,
    load_dashboard,
    panel_queries,
    prometheus_get,
    render,
    substitute,
)
from devstack.ports import free_port
from producers.simulator import run_simulation
from tests.integration.harness import WorkerProcess, http_status, wait_for

pytestmark = pytest.mark.integration

SCRAPE_SECONDS = 1
#: Samples of the worker Prometheus must hold before the queries run: a 15 s rate()
#: window then has enough points, and every gauge has been seen.
SCRAPES_BEFORE_QUERYING = 5


@pytest.fixture
def prometheus(worker: WorkerProcess, tmp_path: Path) -> Iterator[str]:
    """Debian's Prometheus on a free port, scraping the worker every second."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make bootstrap` installs it (apt)"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": f"{SCRAPE_SECONDS}s",
                    "evaluation_interval": f"{SCRAPE_SECONDS}s",
                },
                "scrape_configs": [
                    {
                        "job_name": "omni-worker",
                        "static_configs": [
                            {"targets": [f"127.0.0.1:{worker.settings.metrics_port}"]}
                        ],
                    }
                ],
            }
        )
    )
    log_path = tmp_path / "prometheus.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{log_path.read_text()[-3000:]}")
            return http_status(f"{base}/-/ready") == 200

        wait_for(ready, 30, "Prometheus to be ready", interval=0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def scrapes(base: str) -> int:
    """Successful scrapes of the worker Prometheus holds (0 before the first)."""
    answer = prometheus_get(
        base, "/api/v1/query", {"query": 'sum_over_time(up{job="omni-worker"}[5m])'}
    )
    result = answer["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def test_every_dashboard_query_parses_and_returns_data(
    worker: WorkerProcess, prometheus: str
) -> None:
    # The check can fail: Prometheus answers an error for a query that does not parse
    # and nothing for a metric nobody exports; a variable without a value is refused.
    bad = prometheus_get(prometheus, "/api/v1/query", {"query": "sum by (reason (rate(x[1m]))"})
    assert bad["status"] == "error"
    empty = prometheus_get(prometheus, "/api/v1/query", {"query": "omni_no_such_metric_total"})
    assert empty["status"] == "success" and empty["data"]["result"] == []
    with pytest.raises(KeyError, match="interval"):
        substitute("rate(x[$__interval])", DEFAULT_VARIABLES)

    png = os.environ.get("OMNI_DASHBOARD_PNG")
    started = time.time()
    stop = threading.Event()
    # The stories (triggers, suppressions, timers, offers), a buggy backend's dead
    # letters and background traffic, while Prometheus scrapes.
    player = threading.Thread(
        target=run_simulation,
        kwargs={
            "settings": worker.settings,
            "customers": 50,
            "rate": 20.0,
            # The picture wants a longer run of traffic than the check.
            "seconds": 60.0 if png else 30.0,
            "story_pause": 0.2,
            "printer": lambda line: None,
            "stop": stop,
        },
        daemon=True,
    )
    player.start()
    try:
        wait_for(
            lambda: scrapes(prometheus) >= SCRAPES_BEFORE_QUERYING,
            30,
            f"{SCRAPES_BEFORE_QUERYING} scrapes of the worker",
            interval=0.5,
        )
        # Counters moved: the stories reached the worker and Prometheus saw it.
        wait_for(
            lambda: prometheus_get(
                prometheus,
                "/api/v1/query",
                {
                    "query": "sum(omni_triggers_emitted_total) > 0"
                    " and sum(omni_events_deadlettered_total) > 0"
                },
            )["data"]["result"],
            60,
            "triggers and dead letters in Prometheus",
            interval=0.5,
        )
        queries = panel_queries(load_dashboard())
        assert len({q.panel for q in queries}) >= 13, "a panel went missing"
        failures = []
        for query in queries:
            expr = substitute(query.expr, DEFAULT_VARIABLES)
            answer = prometheus_get(prometheus, "/api/v1/query", {"query": expr})
            where = f"{query.panel} [{query.ref_id}] {expr}"
            if answer.get("status") != "success":
                failures.append(f"{where}: {answer.get('errorType')}: {answer.get('error')}")
            elif not answer["data"]["result"]:
                failures.append(f"{where}: no data")
        assert not failures, "dashboard queries failed:\n" + "\n".join(failures)
    finally:
        if not png:
            stop.set()  # the check is done: no need to play the rest
        player.join(90)
    if png:
        time.sleep(5)  # a few scrapes after the last event, so the plots settle
        render(prometheus, started, time.time(), Path(png))
