"""Summaries (medians over repetitions), the issue's targets, the stdout tables, and
bench/results/latest.{json,md,png}."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from bench import plot
from bench.latency import HALF, LatencyResult
from bench.stack import KAFKA_VERSION
from bench.throughput import VARIANTS, RunResult

METHOD = (
    "Each throughput variant drains the same preloaded backlog (N valid events in the 13 "
    "touchpoint.<channel> topics, 8 partitions each, lz4, murmur2 keys) with its own consumer "
    "group, starting from the earliest offset.",
    "Window: from 'can consume' (loops: partitions assigned; worker: first /readyz 200 = "
    "assigned and table recovered, polled every 20 ms) to 'N events processed' (loops: their own "
    "counter; worker: omni_events_processed_total on /metrics, polled at 1 Hz and at 10 Hz "
    "near the end, since each scrape costs the worker CPU). Process start-up, imports and group "
    "join are excluded and shown as startup_s.",
    "'Processed' means folded into state with outputs queued, as the worker's counter counts; "
    "the final producer flush and offset commit are not timed for any variant.",
    "Output producers: acks=all, linger=OMNI_PRODUCER_LINGER_MS (5 ms), no compression, for the "
    "loops as for the worker; offsets are committed every OMNI_COMMIT_INTERVAL_SECONDS (1 s) after "
    "a producer flush (at-least-once).",
    "(a) ceiling: poll + consume(batch-1, 0), orjson.loads, one small output record per event. "
    "(b) hand-written: EventValidator, group by customer, processors.domain.step.step over a "
    "rocksdict Rdict, one changelog record per changed customer (the worker's table does the "
    "same), triggers and decisions, project() to Redis in one pipeline per batch. "
    "(c) python -m processors worker as shipped (ingest agent -> omni.customer-events -> "
    "customer agent). "
    "(d) naive Faust: (b)'s logic as Faust's docs show it (bench/naive_faust.py): one agent over "
    "the 13 topics iterating per event, two Faust tables set per event (each set a changelog "
    "record), one awaited topic.send() per output and one awaited redis.asyncio command per "
    "read-model write; Faust's own transport; window from assigned + tables recovered (polled "
    "in-process every 10 ms). "
    "(e) Quix Streams (bench/quix_loop.py, its own venv from bench/quix-requirements.txt): the "
    "13 topics concat-ed into one StreamingDataFrame, a stateful apply (state.get_bytes/set_bytes "
    "per customer key, Quix's changelog), outputs via to_topic with a topic callback, Redis via a "
    "BatchingSink writing one pipeline per checkpoint; window from assignment to the first "
    "checkpoint (sink flush) after N events. (d) and (e) run (b)'s per-event steps through "
    "bench/perevent.py, one event per step() call.",
    "Slow window: a variant that has not drained the backlog --slow-window seconds (default 90; "
    "0 = no limit) after its window opened stops there, and its events/s is over the events it "
    "processed in that window ('events timed'), not over the whole backlog; 'triggers' then "
    "counts that part only. The worker's counter is read at its progress poll.",
    "CPU: user+system seconds of the variant's process (all threads) over the window, per "
    "event. Peak RSS: the kernel's VmHWM of that process. Broker/Redis CPU over the same window "
    "are shown because on a 2-core machine they compete with the variant.",
    "Latency: an open-loop generator sends roaming events (each a new foreign country for a "
    "customer whose home profile was processed before) at a fixed rate with the SDK producer "
    "settings; a probe consumer of trigger.sms (ceiling: its output topic) notes each trigger's "
    "arrival; latency = arrival wall time - the event's scheduled send time "
    "(no coordinated omission). HdrHistogram, 3 significant digits; the warm-up is not recorded. "
    "One run per (rate, variant), variants interleaved per rate; 'half' = half of c's median "
    "throughput above. Saturated (the processor could not sustain the rate): triggers missing "
    "after the drain; the median latency of the last quarter of the seconds over 3x (and 20 ms "
    "above) the first quarter's (rising) or over 1 s (backlog: never drained); or the run cut "
    "once an event waited 10 s. A saturated run's percentiles are over the triggers that "
    "arrived, so they understate.",
)

#: The issue's throughput targets: (ratio, at least, label).
THROUGHPUT_TARGETS = (
    ("c/b", 0.5, "C ≥ 0.5 x B"),
    ("c/d", 10.0, "C ≥ 10 x D"),
    ("c/e", 1.0, "C ≥ 1.0 x E"),
)
#: The issue's latency targets for the worker: (rate: events/s or HALF, p99 at most, ms).
LATENCY_TARGETS: tuple[tuple[float | str, float], ...] = ((5000.0, 50.0), (HALF, 100.0))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize_throughput(runs: list[RunResult]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for variant, name in VARIANTS.items():
        mine = [run.as_dict() for run in runs if run.variant == variant]
        if not mine:
            continue
        summary[variant] = (
            {"name": name, "runs": len(mine)}
            | {
                field: median([float(run[field]) for run in mine])
                for field in (
                    "events_per_s",
                    "cpu_us_per_event",
                    "peak_rss_mb",
                    "startup_s",
                    "broker_cpu_us_per_event",
                    "redis_cpu_us_per_event",
                    "seconds",
                    "events",
                )
            }
            | {
                "events_per_s_all": [round(float(run["events_per_s"])) for run in mine],
                "triggers": mine[-1]["triggers"],
                "deadletters": mine[-1]["deadletters"],
                "mean_batch": mine[-1]["mean_batch"],
            }
        )
    return summary


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "c" in summary:
        for other in ("a", "b", "d", "e", "i"):
            if other in summary:
                out[f"c/{other}"] = summary["c"]["events_per_s"] / summary[other]["events_per_s"]
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def target_lines(ratios_found: dict[str, float], latency: list[dict[str, Any]]) -> list[str]:
    """One line per target of the issue: met / not met / not measured, with the figure."""
    lines = []
    for key, least, label in THROUGHPUT_TARGETS:
        value = ratios_found.get(key)
        if value is None:
            lines.append(f"throughput {label}: not measured ({key[-1]} or c did not run)")
        else:
            lines.append(f"throughput {label}: {_met(value >= least)} ({key} = {value:.3f})")
    for rate, most in LATENCY_TARGETS:
        where = "half of C's max" if rate == HALF else f"{_num(rate)}/s"
        label = f"latency C p99 ≤ {most:g} ms at {where}"
        found = [
            r
            for r in latency
            if r["variant"] == "c"
            and (r.get("rate_label") == HALF if rate == HALF else r["rate"] == rate)
        ]
        if not found:
            lines.append(f"{label}: not measured")
            continue
        r = found[-1]
        at = f"{_num(r['rate'])}/s, " if rate == HALF else ""
        p99 = f"p99 {_num(r['p99_ms'], 1)} ms"
        if r.get("saturated"):
            why = f" ({r['saturation']})" if r.get("saturation") else ""
            lost = f" of the arrived, {_num(r['missing'])} missing" if r.get("missing") else ""
            lines.append(f"{label}: not met ({at}saturated{why}: {p99}{lost})")
        else:
            ok = r["p99_ms"] == r["p99_ms"] and r["p99_ms"] <= most  # NaN: nothing arrived
            lines.append(f"{label}: {_met(ok)} ({at}{p99})")
    return lines


def targets(report: dict[str, Any]) -> list[str]:
    return target_lines(report["throughput"]["ratios"], report["latency"])


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kafka_version": KAFKA_VERSION,
    }


def build(
    config: dict[str, Any],
    started: datetime,
    runs: list[RunResult],
    latencies: list[LatencyResult],
    extra: dict[str, Any],
) -> dict[str, Any]:
    summary = summarize_throughput(runs)
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "config": config,
        **extra,
        "throughput": {
            "summary": summary,
            "ratios": ratios(summary),
            "runs": [run.as_dict() for run in runs],
        },
        "latency": [result.as_dict() for result in latencies],
        "method": list(METHOD),
    }


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:,.{digits}f}"


def throughput_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = [
        [
            "variant",
            "events/s",
            "events timed",
            "runs (events/s)",
            "CPU µs/event",
            "peak RSS MiB",
            "startup s",
            "broker µs/event",
            "redis µs/event",
            "triggers",
        ]
    ]
    for variant, s in report["throughput"]["summary"].items():
        rows.append(
            [
                f"{variant} {s['name']}",
                _num(s["events_per_s"]),
                _num(s["events"]),
                " ".join(_num(v) for v in s["events_per_s_all"]),
                _num(s["cpu_us_per_event"], 1),
                _num(s["peak_rss_mb"]),
                _num(s["startup_s"], 1),
                _num(s["broker_cpu_us_per_event"], 1),
                _num(s["redis_cpu_us_per_event"], 1),
                _num(s["triggers"]),
            ]
        )
    return rows


def latency_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = [
        [
            "variant",
            "rate/s",
            "count",
            "missing",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "mean ms",
            "median 1st s → last s",
            "send lag max ms",
            "late sends",
            "verdict",
        ]
    ]
    for r in report["latency"]:
        rows.append(
            [
                f"{r['variant']} {r['name']}",
                _num(r["rate"]) + (" (half)" if r.get("rate_label") == HALF else ""),
                _num(r["received"]),
                _num(r["missing"]),
                _num(r["p50_ms"], 1),
                _num(r["p99_ms"], 1),
                _num(r["p999_ms"], 1),
                _num(r["max_ms"], 1),
                _num(r["mean_ms"], 1),
                _trend(r["timeline"]),
                _num(r["send_lag_max_ms"], 1),
                _num(r["late_sends"]),
                _verdict(r),
            ]
        )
    return rows


def _verdict(r: dict[str, Any]) -> str:
    if not r.get("saturated"):
        return "keeps up"
    cut = r.get("cut_at_s")
    why = f"cut at {cut:g} s" if cut is not None else r.get("saturation", "")
    return "saturated" + (f" ({why})" if why else "")


def _trend(timeline: list[list[float]]) -> str:
    """Median latency of the first and last second: rising = the rate was too much."""
    if not timeline:
        return "-"
    return f"{_num(timeline[0][1])} → {_num(timeline[-1][1])}"


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def markdown_table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _ratio_line(report: dict[str, Any]) -> str:
    found = report["throughput"]["ratios"]
    line = "   ".join(f"{name} = {value:.3f}" for name, value in found.items()) or "(no ratio)"
    worker = report["throughput"]["summary"].get("c")
    if worker and worker.get("mean_batch"):
        batches = ", ".join(f"{agent} {size:.1f}" for agent, size in worker["mean_batch"].items())
        line += f"   (worker's mean events per agent batch: {batches})"
    return line


def headline(report: dict[str, Any]) -> str:
    config = report["config"]
    return (
        f"{config['events']:,} events, {config['customers']:,} customers, "
        f"{config['partitions']} partitions, median of {config['repeat']} run(s) per variant"
        + (f", slow window {config['slow_window_s']:g} s" if config.get("slow_window_s") else "")
    )


def _latency_headline(report: dict[str, Any]) -> str:
    config = report["config"]
    return (
        f"Open loop, {config['seconds']:g} s per run after a {config['warmup']:g} s warm-up, "
        f"one run per rate and variant (rates {', '.join(config['rates']) or 'none'})."
    )


def print_report(report: dict[str, Any]) -> None:
    print(f"\nThroughput ({headline(report)})")
    print(text_table(throughput_rows(report)))
    print(_ratio_line(report))
    if report["latency"]:
        print(f"\nEvent-to-trigger latency. {_latency_headline(report)}")
        print(text_table(latency_rows(report)))
    for note in report.get("latency_notes", []):
        print(f"note: {note}")
    print("\nTargets of the issue:")
    for line in targets(report):
        print(f"  {line}")


def markdown(report: dict[str, Any]) -> str:
    m, config = report["machine"], report["config"]
    mix = ", ".join(f"{name} {count:,}" for name, count in report["workload"]["mix"].items())
    parts = [
        "# Benchmark: latest results",
        f"Generated by `python -m bench.run{' ' + config['argv'] if config['argv'] else ''}` "
        f"(`make bench` runs it without arguments) on {report['date']}.",
        "",
        "## Summary: the issue's targets",
        "",
        *(f"- {line}" for line in targets(report)),
        "",
        "![throughput per variant; latency percentiles vs rate](latest.png)",
        "",
        "## Setup",
        "",
        f"- machine: nproc {m['nproc']}, {m['cpu_model']}, {m['platform']}, Python {m['python']}",
        f"- Apache Kafka {m['kafka_version']} (local KRaft broker, devstack), redis-server local",
        f"- load average before/after: {report['loadavg_before']} / {report['loadavg_after']} "
        "(a shared, noisy machine: compare variants within one run, not across runs)",
        f"- workload: {headline(report)}; mean event {report['workload']['mean_bytes']:.0f} B; "
        f"mix: {mix}",
        f"- preload rate: {', '.join(_num(r) for r in report['preload_events_per_s'])} events/s",
        "",
        "## Throughput",
        "",
        markdown_table(throughput_rows(report)),
        "",
        f"Ratios (events/s): {_ratio_line(report)}",
    ]
    if report["latency"]:
        parts += [
            "",
            "## Event-to-trigger latency",
            "",
            _latency_headline(report),
            "",
            markdown_table(latency_rows(report)),
        ]
    if report.get("latency_notes"):
        parts += ["", *(f"Note: {note}" for note in report["latency_notes"])]
    parts += ["", "## Method", "", *(f"- {line}" for line in report["method"])]
    return "\n".join(parts) + "\n"


def write(report: dict[str, Any], results_dir: Path) -> None:
    """latest.json, .md and .png, each written to a .tmp file first (gitignored) then renamed."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("latest.json", orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n"),
        ("latest.md", markdown(report).encode()),
        ("latest.png", plot.png(report)),
    ):
        tmp = results_dir / f"{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(results_dir / name)
