"""Latency bench logic: --rates parsing, 'half' of c, the saturated verdict, the generator."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from bench import latency
from bench.latency import HALF, Plan, parse_rates, play, resolve_rates, saturated, saturation
from bench.run import parse


def test_rates_parse_numbers_and_half() -> None:
    assert parse_rates("1000,5000,half") == ["1000", "5000", "half"]
    assert parse_rates(" 250.5 , HALF ,") == ["250.5", "half"]
    assert parse_rates("") == []


@pytest.mark.parametrize("text", ["fast", "0", "-5", "nan", "inf", "1000,twice"])
def test_rates_reject_non_positive_or_unknown(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rates(text)


def test_cli_default_rates_and_rate_alias() -> None:
    assert parse([]).rates == ["1000", "5000", "half"]
    assert parse(["--rate", "500"]).rates == ["500"]
    assert parse(["--rates", "1000,half"]).rates == ["1000", "half"]
    assert parse([]).latency == ["c", "a", "b"]
    assert parse(["--latency", "c,d,e"]).latency == ["c", "d", "e"]
    with pytest.raises(SystemExit):
        parse(["--rates", "1000,lots"])


def test_half_is_half_of_the_workers_throughput_in_order() -> None:
    rates, notes = resolve_rates(["1000", HALF, "5000"], 1201.0)
    assert rates == [(1000.0, ""), (600.0, HALF), (5000.0, "")]
    assert notes == []


def test_half_is_skipped_with_a_note_without_the_workers_throughput() -> None:
    for measured in (None, 0.0):
        rates, notes = resolve_rates(["1000", HALF], measured)
        assert rates == [(1000.0, "")]
        assert len(notes) == 1 and "half" in notes[0]


def test_flat_timeline_keeps_up() -> None:
    assert not saturated([(0, 12.0, 30.0), (1, 13.0, 25.0), (19, 12.5, 40.0)], missing=0)
    assert not saturated([], missing=0)
    assert not saturated([(0, 900.0, 1000.0)], missing=0)


def test_falling_timeline_keeps_up() -> None:
    # The worker's first second is slow (warm-up), then it keeps up.
    assert not saturated([(0, 1299.0, 4000.0), (19, 182.0, 300.0)], missing=0)


def test_rising_timeline_missing_or_cut_is_saturated() -> None:
    rising = [(0, 40.0, 50.0), (10, 90.0, 100.0), (19, 130.0, 150.0)]
    assert saturated(rising, missing=0) and saturation(rising, missing=0) == "rising"
    assert saturation([(0, 12.0, 20.0), (19, 12.0, 20.0)], missing=1) == "missing"
    assert saturation([(0, 12.0, 20.0), (19, 12.0, 20.0)], missing=0, cut=True) == "cut"
    steady_rise = [(s, 20.0 + 10.0 * s, 0.0) for s in range(20)]  # +10 ms per second
    assert saturation(steady_rise, missing=0) == "rising"


def test_a_standing_backlog_is_saturated() -> None:
    # Behind by ~6 s from the warm-up on, never drained: the processor runs at its limit.
    medians = [6502.2, 6432.4, 7125.1, 6619.2, 6952.6, 6325.6, 6130.6, 5645.8]
    assert saturation([(s, m, m) for s, m in enumerate(medians)], missing=0) == "backlog"


def test_noise_and_a_last_second_spike_are_not_saturation() -> None:
    # A busy machine: per-second medians jump around without a trend.
    noisy = [17.2, 150.6, 75.6, 114.5, 60.9, 14.4, 127.1, 220.4]
    assert not saturated([(s, m, m) for s, m in enumerate(noisy)], missing=0)
    spike = [(s, 12.0, 20.0) for s in range(19)] + [(19, 80.0, 95.0)]
    assert not saturated(spike, missing=0)


def test_a_small_absolute_rise_is_noise_not_saturation() -> None:
    # 4x, but only 15 ms: a ms-level wobble of a fast processor.
    assert not saturated([(0, 5.0, 9.0), (19, 20.0, 30.0)], missing=0)


class FakeProducer:
    def __init__(self) -> None:
        self.produced: list[bytes | None] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.produced.append(key)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def test_generator_sends_every_event_on_its_own_schedule() -> None:
    plan = Plan(rate=4000.0, seconds=0.3, warmup=0.1)
    producer, sent = FakeProducer(), dict[str, float]()
    played = play(producer, "t", plan, sent)  # type: ignore[arg-type]
    assert len(producer.produced) == plan.total == len(sent)
    assert len(played.measured) == plan.total - 400 and played.cut_at_s is None
    # Scheduled times, not send times: exactly 1/rate apart even when sent in batches.
    times = [sent[f"lat-{seq}"] for seq in range(plan.total)]
    gaps = {round(b - a, 6) for a, b in pairwise(times)}
    assert gaps == {0.00025}


def test_generator_cuts_a_run_whose_triggers_do_not_come(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(latency, "CUT_AFTER_S", 0.2)
    plan = Plan(rate=1000.0, seconds=30.0, warmup=0.1)
    never: dict[str, Any] = {}
    played = play(FakeProducer(), "t", plan, {}, never)  # type: ignore[arg-type]
    assert played.cut_at_s is not None and played.cut_at_s < 5
    assert len(played.measured) < plan.total / 5
