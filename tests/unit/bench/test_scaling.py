"""Scaling bench, its pure parts: the pause from arrival samples, latency stats, the tables."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.scaling import (
    latency_stats,
    markdown,
    parse,
    parse_counts,
    pause_from_arrivals,
    rss_per_partition,
)


def steady(partitions: int, start: float, end: float, every: float) -> list[tuple[float, int]]:
    """An arrival on every partition each ``every`` seconds in [start, end)."""
    out, t = [], start
    while t < end:
        out += [(round(t, 3), p) for p in range(partitions)]
        t += every
    return out


def test_no_rebalance_no_stall() -> None:
    pause = pause_from_arrivals(steady(4, 0.0, 20.0, 0.1), 10.0, 19.9, range(4))
    assert pause.stalled_partitions == 0
    assert pause.resumed_after_s == 0.0
    assert pause.max_gap_s == pytest.approx(0.1, abs=1e-6)
    assert pause.all_gap_s == pytest.approx(0.1, abs=1e-6)


def test_one_partition_stalls_from_its_last_arrival_before_the_event() -> None:
    arrivals = [a for a in steady(3, 0.0, 30.0, 0.1) if not (a[1] == 2 and 9.0 < a[0] < 14.0)]
    pause = pause_from_arrivals(arrivals, 10.0, 29.9, range(3))
    assert pause.stalled_partitions == 1
    # Silent from its last trigger at 9.0 to 14.0, the event being at 10.0.
    assert pause.max_gap_s == pytest.approx(5.0, abs=0.11)
    assert pause.resumed_after_s == pytest.approx(4.0, abs=0.11)
    assert pause.all_gap_s == pytest.approx(0.1, abs=1e-6)  # the others kept flowing


def test_every_partition_paused_is_a_whole_stream_gap() -> None:
    arrivals = [a for a in steady(2, 0.0, 30.0, 0.1) if not 12.0 < a[0] < 15.0]
    pause = pause_from_arrivals(arrivals, 10.0, 29.9, range(2))
    assert pause.stalled_partitions == 2
    assert pause.all_gap_s == pytest.approx(3.0, abs=0.11)
    assert pause.resumed_after_s == pytest.approx(5.0, abs=0.11)


def test_a_partition_that_never_resumes() -> None:
    arrivals = [a for a in steady(2, 0.0, 30.0, 0.1) if not (a[1] == 1 and a[0] > 11.0)]
    pause = pause_from_arrivals(arrivals, 10.0, 29.9, range(2))
    assert pause.resumed_after_s is None
    assert pause.max_gap_s == pytest.approx(18.9, abs=0.11)


def test_a_partition_without_any_arrival_counts_from_the_event() -> None:
    pause = pause_from_arrivals(steady(1, 0.0, 30.0, 0.1), 10.0, 20.0, range(2))
    assert pause.max_gap_s == pytest.approx(10.0)
    assert pause.resumed_after_s is None


def test_latency_stats() -> None:
    stats = latency_stats([0.010] * 98 + [0.500, 1.000])
    assert stats["count"] == 100
    assert stats["p50_ms"] == pytest.approx(10.0, rel=0.01)
    assert stats["p99_ms"] == pytest.approx(500.0, rel=0.01)
    assert stats["max_ms"] == pytest.approx(1000.0, rel=0.01)
    assert math.isnan(latency_stats([])["p99_ms"])


def test_counts_and_cli() -> None:
    assert parse_counts("3,1,2,2") == [1, 2, 3]
    assert parse_counts("") == []
    with pytest.raises(ValueError):
        parse_counts("0,1")
    args = parse(["--rate", "300", "--workers", "1,2", "--saturation", ""])
    assert (args.rate, args.workers, args.saturation) == (300.0, [1, 2], [])


def test_rss_per_partition() -> None:
    rss = [
        {"partitions": 32, "rss_idle_mb": 400.0, "rss_loaded_mb": 520.0},
        {"partitions": 8, "rss_idle_mb": 280.0, "rss_loaded_mb": 400.0},
    ]
    assert rss_per_partition(rss) == pytest.approx(5.0)
    assert rss_per_partition(rss, "rss_idle_mb") == pytest.approx(5.0)
    assert rss_per_partition(rss[:1]) is None


def sample_result() -> dict[str, Any]:
    window = {
        "input_rate": 400.0,
        "p50_ms": 40.0,
        "p99_ms": 120.0,
        "missing": 0,
        "cpu_us_per_event": 900.0,
        "mean_batch": 12.5,
        "broker_cpu_us_per_event": 80.0,
        "redis_cpu_us_per_event": 10.0,
        "loadavg": [1.5, 1.2, 1.0],
    }
    return {
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"nproc": 2, "cpu_model": "test cpu"},
        "config": {
            "argv": "python -m bench.scaling",
            "rate": 400.0,
            "seconds": 60.0,
            "partitions": 8,
            "customers": 60_000,
            "stall_s": 1.0,
            "saturation_events": 150_000,
            "saturation_window": 30.0,
            "write_buffer_mib": 16,
            "block_cache_mib": 32,
        },
        "loadavg_before": [1.0, 1.0, 1.0],
        "loadavg_after": [2.0, 2.0, 2.0],
        "windows": [
            {**window, "workers": 1, "events_per_s": 400.0, "rss_mb": [300]},
            {**window, "workers": 2, "events_per_s": 398.0, "rss_mb": [300, 250]},
        ],
        "rebalances": [
            {
                "kind": "join",
                "workers_before": 1,
                "workers_after": 2,
                "process_s": 4.2,
                "max_gap_s": 6.5,
                "all_gap_s": 3.1,
                "resumed_after_s": 7.0,
                "stalled_partitions": 8,
                "max_ms": 7100.0,
                "p99_ms": 6000.0,
                "settled_s": 16.0,
                "loadavg": [1.8, 1.0, 1.0],
            },
            {
                "kind": "leave",
                "workers_before": 2,
                "workers_after": 1,
                "process_s": 1.0,
                "max_gap_s": 12.0,
                "all_gap_s": 2.0,
                "resumed_after_s": None,
                "stalled_partitions": 4,
                "max_ms": math.nan,
                "p99_ms": math.nan,
                "settled_s": 30.0,
                "loadavg": [1.8, 1.0, 1.0],
            },
        ],
        "saturation": [
            {
                "workers": 1,
                "events_per_s": 3000.0,
                "cpu_us_per_event": 300.0,
                "events": 90_000,
                "loadavg": [2.0, 1.0, 1.0],
            },
            {
                "workers": 2,
                "events_per_s": 3600.0,
                "cpu_us_per_event": 480.0,
                "events": 108_000,
                "loadavg": [2.5, 1.0, 1.0],
            },
            {
                "workers": 1,
                "events_per_s": 2000.0,
                "cpu_us_per_event": 320.0,
                "events": 60_000,
                "loadavg": [4.0, 1.0, 1.0],
            },
            {
                "workers": 2,
                "events_per_s": 3000.0,
                "cpu_us_per_event": 500.0,
                "events": 90_000,
                "loadavg": [4.0, 1.0, 1.0],
            },
        ],
        "rss": [
            {
                "partitions": 8,
                "stores": 24,
                "rss_idle_mb": 280.0,
                "rss_loaded_mb": 400.0,
                "events": 20_000,
            },
            {
                "partitions": 32,
                "stores": 96,
                "rss_idle_mb": 400.0,
                "rss_loaded_mb": 520.0,
                "events": 20_000,
            },
        ],
        "notes": ["a note"],
    }


def test_markdown_renders_every_table() -> None:
    text = markdown(sample_result())
    assert (
        "| 2 | 400 | 398 | 0.99 | 40.0 | 120.0 | 0 | 900 | 12.5 | 80 | 10 | 300 / 250 | 1.50 |"
        in text
    )
    assert "| join 1 → 2 | 4.2 | 6.50 | 3.10 | 7.00 | 8/8 | 7,100 | 6,000 | 16.0 | 1.80 |" in text
    assert "| leave 2 → 1 | 1.0 | 12.00 | 2.00 | never | 4/8 | - | - | 30.0 | 1.80 |" in text
    # Medians over the interleaved runs of each count.
    assert "| 1 | 2,500 | 1.00 | 310 | 3,000 2,000 | 2.0 4.0 |" in text
    assert "| 2 | 3,300 | 1.32 | 490 | 3,600 3,000 | 2.5 4.0 |" in text
    assert "5.0 MiB after the load per extra partition" in text
    assert "`OMNI_PARTITIONS`, default 24" in text
    assert "- a note" in text


def test_markdown_without_optional_parts() -> None:
    result = sample_result()
    result.update(saturation=[], rss=[], notes=[])
    text = markdown(result)
    assert "Saturation" not in text and "Memory per partition" not in text
