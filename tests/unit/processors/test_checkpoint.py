"""The checkpoint's rules: which changelog records recovery applies, and the order of
local writes (pending until the commit passes their input)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from processors.checkpoint import (
    CommittedPosition,
    RecordState,
    classify_record,
    commit_metadata,
    header_value,
    parse_commit_metadata,
    record_is_committed,
    source_header,
)
from processors.faust_adapter import CHANGELOG_OFFSET_KEY
from processors.output import TableWriter

OLD = (4, 1_000)
CURRENT = (5, 2_000)
NEWER = (6, 3_000)
RESTARTED = (5, 2_500)  # a static member restarted after SIGKILL: same generation, later start


def src(writer: tuple[int, int], offset: int) -> bytes:
    value = header_value(source_header(writer, offset))
    assert value is not None
    return value


def test_metadata_round_trip() -> None:
    position = parse_commit_metadata(120, commit_metadata(CURRENT, 80))
    assert position == CommittedPosition(120, CURRENT, 80)


@pytest.mark.parametrize("metadata", ["", None, "something else", "omni1:x:y", "omni1:5.1"])
def test_foreign_metadata_means_offset_only(metadata: str | None) -> None:
    assert parse_commit_metadata(7, metadata) == CommittedPosition(7)


committed = CommittedPosition(offset=120, writer=CURRENT, start=80)


@pytest.mark.parametrize(
    ("writer", "offset", "expected", "why"),
    [
        (CURRENT, 119, True, "the committer's record below the committed offset"),
        (CURRENT, 120, False, "the committer's record of input not committed yet"),
        (OLD, 79, True, "an older writer's record below where the committer started"),
        (OLD, 80, False, "an older writer's late record (SIGSTOP): its input was redone"),
        (OLD, 100, False, "an older writer's record past the start, even below the offset"),
        (RESTARTED, 90, False, "a newer incarnation that has not committed yet"),
        (NEWER, 10, False, "a newer generation that has not committed yet"),
    ],
)
def test_record_is_committed(
    writer: tuple[int, int], offset: int, expected: bool, why: str
) -> None:
    assert record_is_committed(src(writer, offset), committed) is expected, why


def test_records_without_the_header_are_taken_as_committed() -> None:
    # Written before checkpoints existed: the old worker wrote state after commit-less flushes.
    assert record_is_committed(None, committed)
    assert record_is_committed(None, None)


def test_nothing_committed_means_no_stamped_record_is_committed() -> None:
    assert not record_is_committed(src(CURRENT, 0), None)


def test_a_malformed_header_is_not_committed() -> None:
    assert not record_is_committed(b"garbage", committed)
    assert not record_is_committed(b"5.x:10", committed)


def test_commit_without_our_metadata_compares_offsets_only() -> None:
    plain = CommittedPosition(50)
    assert record_is_committed(src(NEWER, 49), plain)
    assert not record_is_committed(src(NEWER, 50), plain)


@given(
    st.tuples(st.integers(0, 50), st.integers(0, 10**13)),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
)
def test_never_past_the_committed_offset(
    writer: tuple[int, int], offset: int, start: int, committed_offset: int
) -> None:
    """Whoever wrote it: a record of input at or past the committed offset is never applied."""
    position = CommittedPosition(committed_offset, CURRENT, min(start, committed_offset))
    if offset >= committed_offset:
        assert not record_is_committed(src(writer, offset), position)


# --- classify_record: what a standby does with a record written moments ago -------------


@pytest.mark.parametrize(
    ("writer", "offset", "expected", "why"),
    [
        (CURRENT, 119, RecordState.COMMITTED, "the committer's record below the committed offset"),
        (CURRENT, 120, RecordState.PENDING, "the committer's next checkpoint may cover it"),
        (OLD, 79, RecordState.COMMITTED, "an older writer's record below the committer's start"),
        (OLD, 80, RecordState.ABANDONED, "an older writer's input the committer redid"),
        (RESTARTED, 90, RecordState.PENDING, "a newer incarnation may still commit"),
        (NEWER, 10, RecordState.PENDING, "a newer generation may still commit"),
    ],
)
def test_classify_record(
    writer: tuple[int, int], offset: int, expected: RecordState, why: str
) -> None:
    assert classify_record(src(writer, offset), committed) is expected, why


def test_classify_record_edges() -> None:
    assert classify_record(None, None) is RecordState.COMMITTED, "written before the scheme"
    assert classify_record(src(CURRENT, 0), None) is RecordState.PENDING, "nothing committed yet"
    assert classify_record(b"garbage", committed) is RecordState.ABANDONED
    plain = CommittedPosition(50)
    assert classify_record(src(NEWER, 49), plain) is RecordState.COMMITTED
    assert classify_record(src(NEWER, 50), plain) is RecordState.PENDING


_writers = st.tuples(st.integers(0, 8), st.integers(0, 3))
_sources = st.one_of(
    st.none(),
    st.just(b"garbage"),
    st.builds(lambda w, o: src(w, o), _writers, st.integers(0, 200)),
)
_positions = st.one_of(
    st.none(),
    st.builds(CommittedPosition, st.integers(0, 200)),
    st.builds(
        lambda o, w, s: CommittedPosition(o, w, min(s, o)),
        st.integers(0, 200),
        _writers,
        st.integers(0, 200),
    ),
)


@given(_sources, _positions)
def test_committed_exactly_when_recovery_applies_it(
    source: bytes | None, position: CommittedPosition | None
) -> None:
    """A standby applies what recovery would apply, no more."""
    state = classify_record(source, position)
    assert (state is RecordState.COMMITTED) == record_is_committed(source, position)


@given(_sources, _positions, st.integers(0, 50), _writers, st.integers(0, 50))
def test_committed_and_abandoned_are_final(
    source: bytes | None,
    position: CommittedPosition | None,
    advance: int,
    successor: tuple[int, int],
    start_advance: int,
) -> None:
    """Commits only move forward: a later position never undoes a committed record, nor
    the same committer an abandoned one."""
    if position is None or position.writer is None or position.start is None:
        return
    later_offset = position.offset + advance
    if successor > position.writer:
        later = CommittedPosition(
            later_offset, successor, min(later_offset, position.offset + start_advance)
        )
    else:
        later = CommittedPosition(later_offset, position.writer, position.start)
    before = classify_record(source, position)
    after = classify_record(source, later)
    if before is RecordState.COMMITTED:
        assert after is RecordState.COMMITTED
    elif before is RecordState.ABANDONED and later.writer == position.writer:
        assert after is RecordState.ABANDONED
    # An ABANDONED record of a writer two generations back can read as committed under a
    # newer committer (the rule keeps one start offset, not one per writer); the record
    # its input's redo wrote comes later in the changelog and overwrites it.


def test_header_value_reads_both_client_formats() -> None:
    assert header_value([("x", b"1"), ("omni-src", b"5.1:9")]) == b"5.1:9"
    assert header_value({"omni-src": b"5.1:9"}) == b"5.1:9"
    assert header_value(None) is None
    assert header_value([("x", b"1")]) is None


# --- TableWriter: pending segments, written once committed -------------------------------


class Store:
    """The two things TableWriter uses of Faust's RocksDB store, on real RocksDB."""

    def __init__(self, path: Path) -> None:
        self.db = Rdict(str(path), options=Options(raw_mode=True))  # as Faust opens it

    def partition_db(self, partition: int) -> Rdict:
        return self.db


class Table:
    def __init__(self, path: Path) -> None:
        self.data = Store(path)
        self.changelog_topic = self

    def get_topic_name(self) -> str:
        return "app-customers-changelog"


class Producer:
    """Records what would be produced; delivery reports are given by the test."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        #: The keyword arguments of each send, in the same order (headers, timestamps).
        self.sent_kwargs: list[dict[str, Any]] = []

    def send(self, *args: Any, **kwargs: Any) -> None:
        self.sent.append(args)
        self.sent_kwargs.append(kwargs)

    def poll(self) -> None:
        return None


class Delivered:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def offset(self) -> int:
        return self._offset


@pytest.fixture
def writer(tmp_path: Path) -> TableWriter:
    return TableWriter(Table(tmp_path / "db"), Producer())  # type: ignore[arg-type]


def test_pending_writes_are_read_but_not_stored_until_committed(writer: TableWriter) -> None:
    db = writer.table.data.db  # type: ignore[attr-defined]
    writer.put(b"k", b"v1", 0)
    assert writer.get(b"k", 0) == b"v1"
    writer.seal(0, source_offset=10, headers=source_header(CURRENT, 10))
    writer.put(b"k", b"v2", 0)
    writer.seal(0, source_offset=11, headers=source_header(CURRENT, 11))
    assert writer.get(b"k", 0) == b"v2"
    assert db.get(b"k") is None, "state was saved ahead of the commit"
    # Every record went to the changelog, stamped with its batch's input offset.
    sent = writer.producer.sent  # type: ignore[attr-defined]
    assert [(s[1], s[2], s[6]) for s in sent] == [
        (b"k", b"v1", source_header(CURRENT, 10)),
        (b"k", b"v2", source_header(CURRENT, 11)),
    ]
    sent[0][5](None, Delivered(100))
    sent[1][5](None, Delivered(101))
    # The commit covers offset 10 only (11 still waits for Redis): only batch 10 is stored.
    assert writer.write_committed(0, 11) == 1
    assert db.get(b"k") == b"v1"
    assert db.get(CHANGELOG_OFFSET_KEY) == b"100"
    assert writer.get(b"k", 0) == b"v2"
    assert writer.write_committed(0, 12) == 1
    assert db.get(b"k") == b"v2"
    assert db.get(CHANGELOG_OFFSET_KEY) == b"101"


def test_discard_forgets_pending_and_scan_sees_pending(writer: TableWriter) -> None:
    db = writer.table.data.db  # type: ignore[attr-defined]
    db[b"stored"] = b"s"
    writer.put(b"pending", b"p", 0)
    writer.put(b"stored", None, 0)  # deleted in a pending batch
    writer.seal(0, 5, source_header(CURRENT, 5))
    assert dict(writer.scan(0)) == {b"pending": b"p"}
    writer.discard()
    assert writer.get(b"pending", 0) is None
    assert dict(writer.scan(0)) == {b"stored": b"s"}


def test_metadata_is_terminated_for_c_string_readers() -> None:
    """confluent-kafka reads commit metadata as a C string and ran past its end."""
    metadata = commit_metadata(CURRENT, 80)
    assert metadata.endswith("\0")
    assert parse_commit_metadata(120, metadata + "O\udcda#~U") == CommittedPosition(
        120, CURRENT, 80
    )
