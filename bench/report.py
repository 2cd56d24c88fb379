"""Summaries (medians over repetitions), the stdout table, and bench/results/latest.*."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from bench.latency import LatencyResult
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
    "customer agent).",
    "CPU: user+system seconds of the variant's process (all threads) over the window, per "
    "event. Peak RSS: the kernel's VmHWM of that process. Broker/Redis CPU over the same window "
    "are shown because on a 2-core machine they compete with the variant.",
    "Latency: an open-loop generator sends roaming events (each a new foreign country for a "
    "customer whose home profile was processed before) at a fixed rate with the SDK producer "
    "settings; a probe consumer of trigger.sms (ceiling: its output topic) notes each trigger's "
    "arrival; latency = arrival wall time - the event's scheduled send time "
    "(no coordinated omission). HdrHistogram, 3 significant digits; the warm-up is not recorded.",
)


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
        for other in ("a", "b"):
            if other in summary:
                out[f"c/{other}"] = summary["c"]["events_per_s"] / summary[other]["events_per_s"]
    return out


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
        ]
    ]
    for r in report["latency"]:
        rows.append(
            [
                f"{r['variant']} {r['name']}",
                _num(r["rate"]),
                _num(r["received"]),
                _num(r["missing"]),
                _num(r["p50_ms"], 1),
                _num(r["p99_ms"], 1),
                _num(r["p999_ms"], 1),
                _num(r["max_ms"], 1),
                _num(r["mean_ms"], 1),
                _trend(r["timeline"]),
                _num(r["send_lag_max_ms"], 1),
            ]
        )
    return rows


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
    )


def print_report(report: dict[str, Any]) -> None:
    config = report["config"]
    print(f"\nThroughput ({headline(report)})")
    print(text_table(throughput_rows(report)))
    print(_ratio_line(report))
    if report["latency"]:
        print(
            f"\nEvent-to-trigger latency (open loop, {config['rate']:g} events/s for "
            f"{config['seconds']:g} s after a {config['warmup']:g} s warm-up)"
        )
        print(text_table(latency_rows(report)))


def markdown(report: dict[str, Any]) -> str:
    m, config = report["machine"], report["config"]
    mix = ", ".join(f"{name} {count:,}" for name, count in report["workload"]["mix"].items())
    parts = [
        "# Benchmark: latest results",
        f"Generated by `python -m bench.run{' ' + config['argv'] if config['argv'] else ''}` "
        f"(`make bench` runs it without arguments) on {report['date']}.",
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
            f"Open loop, {config['rate']:g} events/s for {config['seconds']:g} s after a "
            f"{config['warmup']:g} s warm-up.",
            "",
            markdown_table(latency_rows(report)),
        ]
    parts += ["", "## Method", "", *(f"- {line}" for line in report["method"])]
    return "\n".join(parts) + "\n"


def write(report: dict[str, Any], results_dir: Path) -> None:
    """latest.json and latest.md, each written to a .tmp file first (gitignored) then renamed."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("latest.json", orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n"),
        ("latest.md", markdown(report).encode()),
    ):
        tmp = results_dir / f"{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(results_dir / name)
