"""The customer record codec: round trip, today's records still load, corrupt bytes
give a clear error, the timer due time is read without decompressing."""

from __future__ import annotations

import struct

import orjson
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from processors.domain.record_codec import (
    LEGACY,
    MAX_PAYLOAD_BYTES,
    V1,
    CustomerRecord,
    RecordDecodeError,
    decode_record,
    encode_record,
    record_next_due,
)

STATE = orjson.dumps(
    {
        "customer_id": "c1",
        "traits": {"language": "fr", "home_country": "FR"},
        "timers": [{"due_at": 1_700_000_100.5, "kind": "ignored_check"}],
    }
)
TIMELINE = orjson.dumps([{"at": "2026-01-02T03:04:05Z", "channel": "app", "type": "x"}] * 20)


def test_round_trip() -> None:
    record = encode_record(STATE, TIMELINE, 1_700_000_100.5)
    assert record[0] == V1
    assert decode_record(record) == CustomerRecord(STATE, TIMELINE)
    assert record_next_due(record) == 1_700_000_100.5


def test_no_timer_and_empty_timeline() -> None:
    record = encode_record(STATE, b"[]", None)
    assert decode_record(record) == CustomerRecord(STATE, b"[]")
    assert record_next_due(record) is None


def test_smaller_than_the_two_json_records() -> None:
    # Repetitive JSON, as real records are: the point of the format.
    assert len(encode_record(STATE, TIMELINE, None)) * 2 < len(STATE) + len(TIMELINE)


@given(
    state=st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=20),
    timeline=st.lists(
        st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)), max_size=10
    ),
    due=st.none() | st.floats(min_value=1.0, max_value=4e9),
)
def test_round_trip_any_json(
    state: dict[str, str], timeline: list[dict[str, int]], due: float | None
) -> None:
    state_json, timeline_json = orjson.dumps(state), orjson.dumps(timeline)
    record = encode_record(state_json, timeline_json, due)
    assert decode_record(record) == CustomerRecord(state_json, timeline_json)
    assert record_next_due(record) == due


def test_a_record_written_before_this_format_still_loads() -> None:
    # Today's customers record: the plain state JSON; her timeline is in `timelines`.
    legacy = STATE
    assert legacy[0] == LEGACY
    assert decode_record(legacy) == CustomerRecord(STATE, None)
    assert record_next_due(legacy) == 1_700_000_100.5
    assert record_next_due(orjson.dumps({"customer_id": "c2", "timers": []})) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty"),
        (b"\x07junk", "format byte 0x07"),
        (struct.pack("<Bd", V1, 0.0) + b"not zstd at all", "corrupt zstd frame"),
        (encode_record(STATE, TIMELINE, None)[:-5], "corrupt zstd frame"),
        (
            struct.pack("<Bd", V1, 0.0) + zstandard.ZstdCompressor().compress(b"\x01"),
            "truncated payload",
        ),
        (
            struct.pack("<Bd", V1, 0.0)
            + zstandard.ZstdCompressor().compress(struct.pack("<I", 999) + b"{}[]"),
            "state length past the payload",
        ),
    ],
)
def test_corrupt_bytes_raise_a_clear_error(value: bytes, message: str) -> None:
    with pytest.raises(RecordDecodeError, match=message):
        decode_record(value)


def test_a_frame_claiming_a_huge_payload_is_refused_before_decompressing() -> None:
    payload = struct.pack("<I", 2) + b"{}" + b" " * MAX_PAYLOAD_BYTES
    value = struct.pack("<Bd", V1, 0.0) + zstandard.ZstdCompressor().compress(payload)
    with pytest.raises(RecordDecodeError, match="bad payload size"):
        decode_record(value)


def test_the_error_is_a_value_error() -> None:
    # The customer step's per-event handling catches Exception: a corrupt record
    # dead-letters the event and leaves the store as it was (test_customer.py).
    assert issubclass(RecordDecodeError, ValueError)


def test_next_due_of_corrupt_bytes() -> None:
    for value in (b"", b"\x09", bytes([V1, 0, 0])):
        with pytest.raises(RecordDecodeError):
            record_next_due(value)
