"""The issue's targets in the bench summary: met / not met / not measured, with the figure."""

from __future__ import annotations

from typing import Any

from bench.latency import HALF
from bench.report import target_lines


def lat(rate: float, p99: float, saturated: bool = False, label: str = "", **kw: Any) -> dict:
    return {
        "variant": kw.get("variant", "c"),
        "rate": rate,
        "rate_label": label,
        "p99_ms": p99,
        "saturated": saturated,
        "missing": kw.get("missing", 0),
    }


def line(lines: list[str], start: str) -> str:
    (found,) = [text for text in lines if text.startswith(start)]
    return found


def test_throughput_ratios_against_their_targets() -> None:
    lines = target_lines({"c/a": 0.01, "c/b": 0.26, "c/d": 12.0, "c/e": 0.9}, [])
    assert line(lines, "throughput C ≥ 0.5 x B").endswith("not met (c/b = 0.260)")
    assert line(lines, "throughput C ≥ 10 x D").endswith(": met (c/d = 12.000)")
    assert line(lines, "throughput C ≥ 1.0 x E").endswith("not met (c/e = 0.900)")
    assert target_lines({"c/b": 0.5}, [])[0].endswith(": met (c/b = 0.500)")


def test_variants_that_did_not_run_are_not_measured() -> None:
    lines = target_lines({"c/b": 0.6}, [])
    assert "not measured" in line(lines, "throughput C ≥ 10 x D")
    assert "not measured" in line(lines, "latency C p99 ≤ 50 ms at 5,000/s")
    assert "not measured" in line(lines, "latency C p99 ≤ 100 ms at half")


def test_latency_targets_use_the_workers_p99_at_5k_and_half() -> None:
    runs = [
        lat(5000.0, 49.0),
        lat(5000.0, 5.0, variant="a"),  # the ceiling's figures must not count for C
        lat(566.0, 101.0, label=HALF),
        lat(566.0, 20.0, variant="b", label=HALF),
        lat(1000.0, 1.0),
    ]
    lines = target_lines({}, runs)
    assert line(lines, "latency C p99 ≤ 50 ms at 5,000/s").endswith(": met (p99 49.0 ms)")
    assert line(lines, "latency C p99 ≤ 100 ms at half").endswith("not met (566/s, p99 101.0 ms)")


def test_a_saturated_run_is_not_met_whatever_its_p99() -> None:
    lines = target_lines({}, [lat(5000.0, 30.0, saturated=True, missing=1200)])
    assert line(lines, "latency C p99 ≤ 50 ms").endswith(
        "not met (saturated: p99 30.0 ms of the arrived, 1,200 missing)"
    )
    backlog = lat(600.0, 90.0, saturated=True, label=HALF) | {"saturation": "backlog"}
    assert line(target_lines({}, [backlog]), "latency C p99 ≤ 100 ms").endswith(
        "not met (600/s, saturated (backlog): p99 90.0 ms)"
    )


def test_nothing_arrived_is_not_met() -> None:
    lines = target_lines({}, [lat(5000.0, float("nan"))])
    assert "not met" in line(lines, "latency C p99 ≤ 50 ms")
