"""The Grafana dashboard's queries, drawn from a real Prometheus into a PNG.

    python -m bench.dashboard_png --prometheus http://127.0.0.1:9090 --minutes 15

reads ``deploy/grafana/dashboards/omnichannel.json``, substitutes Grafana's
variables the way Grafana would for "All" (:func:`substitute`), asks Prometheus'
range API for every target of every panel and draws one small plot per panel into
``docs/dashboard.png``. ``tests/integration/test_dashboard.py`` evaluates the same
queries (with :func:`panel_queries`) and, with ``OMNI_DASHBOARD_PNG`` set, draws the
picture from its run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/dashboards/omnichannel.json"
DEFAULT_PNG = ROOT / "docs/dashboard.png"

#: What Grafana puts in place of its variables with "All" selected (allValue ".*"),
#: for a 1 s scrape interval: $__rate_interval is max(4 x scrape, step + scrape).
DEFAULT_VARIABLES: Mapping[str, str] = {
    "__rate_interval": "15s",
    "__range": "5m",
    "worker": ".*",
    "channel": ".*",
}


@dataclass(frozen=True, slots=True)
class Query:
    panel: str
    ref_id: str
    expr: str
    legend: str


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panel_queries(dashboard: Mapping[str, Any]) -> list[Query]:
    """Every target of every panel (rows' nested panels too), in dashboard order."""
    queries = []
    panels = list(dashboard["panels"])
    for panel in panels:
        panels.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
        for target in panel.get("targets", []):
            queries.append(
                Query(
                    panel["title"], target["refId"], target["expr"], target.get("legendFormat", "")
                )
            )
    return queries


def substitute(expr: str, variables: Mapping[str, str] = DEFAULT_VARIABLES) -> str:
    """``$name`` and ``${name}`` replaced; an unknown variable is an error, not left in."""

    def one(found: re.Match[str]) -> str:
        name = found["braced"] or found["plain"]
        if name not in variables:
            raise KeyError(f"no value for the Grafana variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$(?:\{(?P<braced>\w+)\}|(?P<plain>\w+))", one, expr)


def prometheus_get(base: str, path: str, params: Mapping[str, str]) -> dict[str, Any]:
    """One Prometheus HTTP API call; an error answer (HTTP 400/422) is returned, not raised."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        body = error.read()
    answer: dict[str, Any] = json.loads(body)
    return answer


def legend(template: str, labels: Mapping[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template)
    return text or ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"


def render(
    prometheus: str,
    start: float,
    end: float,
    out: Path = DEFAULT_PNG,
    dashboard_path: Path = DASHBOARD,
    variables: Mapping[str, str] = DEFAULT_VARIABLES,
) -> Path:
    """Draw every panel's targets over [start, end] into ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    dashboard = load_dashboard(dashboard_path)
    queries = panel_queries(dashboard)
    titles = list(dict.fromkeys(q.panel for q in queries))
    columns = 3
    rows = math.ceil(len(titles) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 5.2, rows * 3.0), squeeze=False)
    step = max(1.0, (end - start) / 200)
    for index, title in enumerate(titles):
        ax = axes[index // columns][index % columns]
        lines = 0
        for query in (q for q in queries if q.panel == title):
            answer = prometheus_get(
                prometheus,
                "/api/v1/query_range",
                {
                    "query": substitute(query.expr, variables),
                    "start": f"{start:.3f}",
                    "end": f"{end:.3f}",
                    "step": f"{step:.3f}",
                },
            )
            if answer.get("status") != "success":
                raise RuntimeError(f"{title} {query.ref_id}: {answer.get('error')}")
            # The 8 series with the largest peak: a legend of 60 zero lines says nothing.
            series = sorted(
                answer["data"]["result"],
                key=lambda s: -max(_finite(float(v)) for _, v in s["values"]),
            )[:8]
            for s in series:
                xs = [(float(t) - end) / 60 for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=legend(query.legend, s["metric"])[:40])
                lines += 1
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("minutes before the end", fontsize=7)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=6, loc="upper left")
    for index in range(len(titles), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(
        f"{dashboard['title']} (deploy/grafana/dashboards/omnichannel.json, "
        f"drawn from Prometheus with every variable = All)",
        fontsize=11,
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15.0, help="the window, ending now")
    parser.add_argument("--rate-interval", default="1m", help="$__rate_interval (4 scrapes)")
    parser.add_argument("--out", type=Path, default=DEFAULT_PNG)
    args = parser.parse_args(argv)
    end = time.time()
    variables = {
        **DEFAULT_VARIABLES,
        "__rate_interval": args.rate_interval,
        "__range": f"{int(args.minutes * 60)}s",
    }
    print(render(args.prometheus, end - args.minutes * 60, end, args.out, variables=variables))


if __name__ == "__main__":
    main()
