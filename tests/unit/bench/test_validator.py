"""The benchmark script still runs (its figures are not asserted)."""

from __future__ import annotations

import pytest

from bench import validator


def test_bench_runs_and_prints_microseconds_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    validator.main(["--events", "200"])
    out = capsys.readouterr().out
    assert "valid events:" in out and "µs/event" in out
