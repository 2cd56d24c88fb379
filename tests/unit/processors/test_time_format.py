"""``format_time``'s fast path writes exactly what ``datetime.fromtimestamp`` writes."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from processors.domain import model
from processors.domain.model import MAX_TIME, MIN_TIME, clamp_time, format_time, parse_time


def reference(epoch: float) -> str:
    """The definition: ``fromtimestamp`` of the time clamped to [MIN_TIME, MAX_TIME]."""
    return (
        datetime.fromtimestamp(clamp_time(epoch), UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def outcome(function: object, epoch: object) -> tuple[str, str]:
    try:
        return ("ok", function(epoch))  # type: ignore[operator]
    except Exception as exc:
        return ("raises", type(exc).__name__)


#: Seconds with a fraction right at, just under and just over a millisecond or a
#: microsecond boundary, and at the half microsecond (rounding ties).
def near_boundaries() -> st.SearchStrategy[float]:
    seconds = st.integers(min_value=0, max_value=253402300799)
    micros = st.integers(min_value=0, max_value=999_999)
    nudge = st.sampled_from((0.0, 0.5e-6, -0.5e-6, 1e-9, -1e-9, 0.4999e-6, 0.5001e-6))
    return st.builds(lambda s, u, d: s + u / 1e6 + d, seconds, micros, nudge)


@settings(max_examples=3000)
@given(
    st.one_of(
        st.floats(min_value=0.0, max_value=2.0**35, allow_nan=False),
        st.floats(min_value=1.5e9, max_value=2.1e9),
        near_boundaries(),
        st.floats(),  # anything: NaN, infinities, negative, huge
        st.integers(min_value=-(2**40), max_value=2**40),
    )
)
@example(0.0)
@example(-0.0)
@example(1.0005)
@example(1_760_000_000.9999995)
@example(1_760_000_000.9995)
@example(253402300798.9999)
@example(253402300799.9999999)
@example(253402300800.0)
@example(-1.5)
@example(math.inf)
@example(math.nan)
def test_the_fast_path_writes_what_datetime_writes(epoch: float) -> None:
    assert outcome(format_time, epoch) == outcome(reference, epoch)


@pytest.mark.parametrize("epoch", [True, False, 10**20, -(10**20)])
def test_other_inputs_behave_as_before(epoch: int) -> None:
    assert outcome(format_time, epoch) == outcome(reference, epoch)


@given(st.one_of(st.floats(), st.integers(min_value=-(2**70), max_value=2**70)))
@example(-1.5)
@example(-(2.0**62))
@example(253402300800.0 + 8760 * 3600)  # 9999-12-31 + 8760 h: the coupon of issue 9
@example(math.inf)
@example(-math.inf)
@example(math.nan)
def test_any_number_formats_within_the_documented_range(epoch: float) -> None:
    text = format_time(epoch)
    assert "1970-01-01T00:00:00.000Z" <= text <= "9999-12-31T23:59:59.999Z"
    assert MIN_TIME <= parse_time(text) <= MAX_TIME


def test_out_of_range_times_are_clamped_to_the_bounds() -> None:
    assert format_time(-2208988800.0) == "1970-01-01T00:00:00.000Z"  # 1900-01-01
    assert format_time(math.nan) == "1970-01-01T00:00:00.000Z"
    assert format_time(1e300) == "9999-12-31T23:59:59.999Z"
    assert format_time(math.inf) == "9999-12-31T23:59:59.999Z"
    with pytest.raises(TypeError):
        format_time("2026-01-01")  # type: ignore[arg-type]


def test_the_cache_of_seconds_stays_bounded() -> None:
    start = 1_760_000_000
    for offset in range(model._SECONDS_KEPT * 2 + 10):
        assert format_time(start + offset + 0.25) == reference(start + offset + 0.25)
    assert len(model._SECONDS) <= model._SECONDS_KEPT


def test_round_trip_with_parse_time() -> None:
    assert parse_time(format_time(1_760_000_000.125)) == 1_760_000_000.125
