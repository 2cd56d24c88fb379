"""bench/results/latest.png: throughput per variant (left), latency percentiles vs rate (right).

Drawn with Matplotlib's Agg canvas directly (no pyplot, no display, no global
backend state). Both y axes are logarithmic: the ceiling is ~100x the others'
throughput, and a saturated run's latency is seconds where a steady one's is ms.
"""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from bench.latency import HALF

COLORS = {"a": "#4c72b0", "b": "#dd8452", "c": "#55a868", "d": "#c44e52", "e": "#8172b3"}
#: (field, label, line style, marker): each percentile is told apart even at a single rate.
PERCENTILES = (
    ("p50_ms", "p50", "-", "o"),
    ("p99_ms", "p99", "--", "s"),
    ("p999_ms", "p99.9", ":", "^"),
)


def _color(variant: str) -> str:
    return COLORS.get(variant, "#777777")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _plain_log_y(ax: Axes) -> None:
    """Log y with decade labels as plain numbers (10, 100, 1,000), no minor labels."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def png(report: dict[str, Any]) -> bytes:
    figure = Figure(figsize=(13, 5.4), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=(1, 1.5))
    throughput(left, report)
    latency(right, report)
    config = report["config"]
    figure.suptitle(
        f"bench {report['date']}: {config['events']:,} events, {config['customers']:,} "
        f"customers, nproc {report['machine']['nproc']} (shared machine: compare within a run)",
        fontsize=10,
    )
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def throughput(ax: Axes, report: dict[str, Any]) -> None:
    summary = report["throughput"]["summary"]
    ax.set_title(f"Throughput: median of {report['config']['repeat']} run(s), dots = runs")
    if not summary:
        ax.text(0.5, 0.5, "no throughput runs", ha="center", va="center", transform=ax.transAxes)
        return
    variants = list(summary)
    for x, variant in enumerate(variants):
        s = summary[variant]
        ax.bar(x, s["events_per_s"], width=0.6, color=_color(variant), alpha=0.75)
        runs = s["events_per_s_all"]
        offsets = (
            [0.0]
            if len(runs) == 1
            else [-0.15 + 0.3 * i / (len(runs) - 1) for i in range(len(runs))]
        )
        ax.scatter([x + o for o in offsets], runs, color="black", s=14, zorder=3, label=None)
        ax.annotate(
            f"{s['events_per_s']:,.0f}",
            (x, s["events_per_s"]),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    _plain_log_y(ax)
    ax.set_ylabel("events/s (log)")
    ax.set_xticks(range(len(variants)), [f"{v}\n{summary[v]['name']}" for v in variants])
    low = min(min(summary[v]["events_per_s_all"] or [summary[v]["events_per_s"]]) for v in variants)
    high = max(
        max(summary[v]["events_per_s_all"] or [summary[v]["events_per_s"]]) for v in variants
    )
    ax.set_ylim(10 ** math.floor(math.log10(max(1.0, low))), high * 3)
    ratios = report["throughput"]["ratios"]
    if ratios:
        ax.text(
            0.02,
            0.98,
            "   ".join(f"{k} = {v:.3g}" for k, v in ratios.items()),
            transform=ax.transAxes,
            va="top",
            fontsize=8,
        )
    ax.grid(axis="y", which="both", alpha=0.25)


def latency(ax: Axes, report: dict[str, Any]) -> None:
    results = report["latency"]
    ax.set_title("Event -> trigger latency, open loop (hollow = saturated)")
    if not results:
        ax.text(0.5, 0.5, "no latency runs", ha="center", va="center", transform=ax.transAxes)
        return
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_variant.setdefault(r["variant"], []).append(r)
    for variant, mine in by_variant.items():
        mine.sort(key=lambda r: r["rate"])
        for key, _, style, marker in PERCENTILES:
            points = [(r["rate"], r[key], r.get("saturated")) for r in mine if _finite(r[key])]
            if not points:
                continue
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                linestyle=style,
                color=_color(variant),
                linewidth=1.4,
            )
            for rate, value, saturated in points:
                ax.plot(
                    rate,
                    value,
                    marker=marker,
                    markersize=7 if saturated else 5,
                    markeredgewidth=1.6,
                    markerfacecolor="white" if saturated else _color(variant),
                    color=_color(variant),
                )
    # The p99 targets for C.
    targets = [(5000.0, 50.0)] if any(r["rate"] == 5000.0 for r in results) else []
    targets += [(r["rate"], 100.0) for r in results if r.get("rate_label") == HALF][:1]
    for rate, most in targets:
        ax.plot(rate, most, marker="_", markersize=22, markeredgewidth=2.5, color="black")
    rates = sorted({r["rate"] for r in results})
    half = {r["rate"] for r in results if r.get("rate_label") == HALF}
    ax.set_xscale("log")
    _plain_log_y(ax)
    values = [r[key] for r in results for key, *_ in PERCENTILES if _finite(r[key])]
    if values:  # from a whole decade, so the lowest curve has a labelled tick below it
        ax.set_ylim(bottom=10 ** math.floor(math.log10(min(values))))
    ax.set_xticks(
        rates, [f"{rate:,.0f}" + ("\n(half c)" if rate in half else "") for rate in rates]
    )
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", which="minor", bottom=False)
    ax.set_xlim(min(rates) / 1.4, max(rates) * 1.4)
    ax.set_xlabel("rate, events/s (log)")
    ax.set_ylabel("ms (log)")
    ax.grid(which="major", alpha=0.25)
    handles = [
        Line2D([], [], color=_color(v), linewidth=3, label=f"{v} {by_variant[v][0]['name']}")
        for v in by_variant
    ]
    handles += [
        Line2D([], [], color="gray", linestyle=style, marker=marker, label=label)
        for _, label, style, marker in PERCENTILES
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="gray",
            marker="o",
            markerfacecolor="white",
            linestyle="",
            label="saturated",
        )
    )
    handles.append(
        Line2D([], [], color="black", marker="_", markersize=14, linestyle="", label="C p99 target")
    )
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
