"""Standbys hold back changelog records of checkpoints not committed yet (processors/standby.py),
and the checkpointed store applies only what they admit (processors/checkpoint.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from processors import store as store_module
from processors.checkpoint import CommittedPosition, source_header
from processors.faust_adapter import CHANGELOG_OFFSET_KEY
from processors.standby import StandbyHold, StandbyPositions
from tests.unit.processors.doubles import unconnected_app

CHANGELOG_0 = TP("app-customers-changelog", 0)
OLD = (4, 1_000)
CURRENT = (5, 2_000)
NEWER = (6, 3_000)


@dataclass
class Record:
    """The parts of a Faust changelog message the hold and the store read."""

    offset: int
    headers: Any
    key: bytes = b"k"
    value: bytes | None = b"v"
    partition: int = 0
    tp: TP = CHANGELOG_0


def rec(offset: int, writer: tuple[int, int], source: int, key: bytes = b"k") -> Record:
    return Record(offset, source_header(writer, source), key, f"{key.decode()}@{offset}".encode())


class Positions:
    """A committed position the test moves; counts refresh requests."""

    def __init__(self, position: CommittedPosition | None = None) -> None:
        self.now = position
        self.refreshes = 0

    def __call__(self, partition: int, refresh: bool) -> CommittedPosition | None:
        self.refreshes += refresh
        return self.now


def offsets(records: Iterable[Record]) -> list[int]:
    return [r.offset for r in records]


# --- StandbyHold ---------------------------------------------------------------------------


def test_committed_records_are_applied_and_the_offset_moves_past_them() -> None:
    hold: StandbyHold[Record] = StandbyHold(Positions(CommittedPosition(100, CURRENT, 50)), 10)
    admitted = hold.admit(0, [rec(10, CURRENT, 60), rec(11, CURRENT, 99)])
    assert offsets(admitted.apply) == [10, 11]
    assert admitted.offset == 11 and admitted.abandoned == 0
    assert hold.held(0) == 0


def test_pending_records_wait_and_the_offset_stays_before_the_first() -> None:
    positions = Positions(CommittedPosition(100, CURRENT, 50))
    hold: StandbyHold[Record] = StandbyHold(positions, 10)
    admitted = hold.admit(0, [rec(10, CURRENT, 99), rec(11, CURRENT, 100), rec(12, CURRENT, 101)])
    assert offsets(admitted.apply) == [10]
    assert admitted.offset == 10, "never past the first held record (offset 11)"
    assert hold.held(0) == 2
    assert positions.refreshes == 1, "a pending record asks for a fresh position once"
    # The active worker commits past them: applied on the next batch, in order.
    positions.now = CommittedPosition(102, CURRENT, 50)
    admitted = hold.admit(0, [rec(13, CURRENT, 102)])
    assert offsets(admitted.apply) == [11, 12]
    assert admitted.offset == 12 and hold.held(0) == 1


def test_a_committed_record_after_a_pending_one_waits_too() -> None:
    """Order: a later value of a key must not be applied before an earlier one."""
    positions = Positions(CommittedPosition(100, CURRENT, 50))
    hold: StandbyHold[Record] = StandbyHold(positions, 10)
    # A resumed older writer's late record (committed by the rule: below the start)
    # after the current writer's uncommitted one.
    admitted = hold.admit(0, [rec(20, CURRENT, 100), rec(21, OLD, 10)])
    assert admitted.apply == [] and admitted.offset == 19 and hold.held(0) == 2


def test_abandoned_records_are_dropped_for_good() -> None:
    """The writer died; its successor committed from a start at or below their input."""
    positions = Positions(CommittedPosition(100, CURRENT, 50))
    hold: StandbyHold[Record] = StandbyHold(positions, 10)
    held = hold.admit(0, [rec(30, CURRENT, 100), rec(31, CURRENT, 101)])
    assert held.apply == [] and held.offset == 29
    positions.now = CommittedPosition(103, NEWER, 100)  # the successor redid 100..102
    admitted = hold.admit(0, [rec(32, NEWER, 100), rec(33, NEWER, 102), rec(34, NEWER, 103)])
    assert offsets(admitted.apply) == [32, 33]
    assert admitted.abandoned == 2
    assert admitted.offset == 33 and hold.held(0) == 1


def test_records_of_a_writer_newer_than_the_last_commit_wait() -> None:
    positions = Positions(CommittedPosition(100, CURRENT, 50))
    hold: StandbyHold[Record] = StandbyHold(positions, 10)
    assert hold.admit(0, [rec(5, NEWER, 100)]).apply == []
    assert hold.held(0) == 1


def test_nothing_committed_yet_holds_stamped_records_and_applies_unstamped_ones() -> None:
    hold: StandbyHold[Record] = StandbyHold(Positions(None), 10)
    admitted = hold.admit(0, [Record(0, None), rec(1, CURRENT, 0)])
    assert offsets(admitted.apply) == [0] and admitted.offset == 0 and hold.held(0) == 1


def test_a_seek_back_delivers_held_records_again_and_they_are_kept_once() -> None:
    positions = Positions(CommittedPosition(100, CURRENT, 50))
    hold: StandbyHold[Record] = StandbyHold(positions, 10)
    hold.admit(0, [rec(40, CURRENT, 100), rec(41, CURRENT, 101)])
    # A rebalance: Faust seeks the standby back to the persisted offset (39).
    hold.admit(0, [rec(40, CURRENT, 100), rec(41, CURRENT, 101), rec(42, CURRENT, 102)])
    assert hold.held(0) == 3
    positions.now = CommittedPosition(103, CURRENT, 50)
    assert offsets(hold.admit(0, []).apply) == [40, 41, 42]


def test_overflow_stops_following_until_the_partition_is_read_again_from_the_first() -> None:
    overflows: list[tuple[int, int]] = []
    positions = Positions(CommittedPosition(100, CURRENT, 50))
    hold: StandbyHold[Record] = StandbyHold(positions, 3, lambda p, n: overflows.append((p, n)))
    admitted = hold.admit(0, [rec(o, CURRENT, 100 + o) for o in range(50, 54)])
    assert admitted.apply == [] and admitted.offset == 49
    assert overflows == [(0, 4)] and hold.frozen(0) and hold.held(0) == 0
    # Later records are ignored: their predecessors are gone from memory.
    positions.now = CommittedPosition(1_000, CURRENT, 50)
    ignored = hold.admit(0, [rec(54, CURRENT, 154)])
    assert ignored.apply == [] and ignored.offset is None
    # Faust seeks back to the persisted offset (a rebalance): following again.
    again = hold.admit(0, [rec(o, CURRENT, 100 + o) for o in range(50, 56)])
    assert offsets(again.apply) == list(range(50, 56)) and not hold.frozen(0)
    assert again.offset == 55


def test_partitions_no_longer_standbys_are_forgotten() -> None:
    hold: StandbyHold[Record] = StandbyHold(Positions(None), 10)
    hold.admit(0, [rec(1, CURRENT, 0)])
    hold.admit(1, [rec(1, CURRENT, 0)])
    hold.retain({1})
    assert (hold.held(0), hold.held(1)) == (0, 1)


def test_partitions_are_independent() -> None:
    hold: StandbyHold[Record] = StandbyHold(Positions(CommittedPosition(10, CURRENT, 0)), 10)
    assert hold.admit(0, [rec(1, CURRENT, 10)]).apply == []
    assert offsets(hold.admit(1, [rec(1, CURRENT, 9)]).apply) == [1]


# --- StandbyPositions ----------------------------------------------------------------------


class Fetcher:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.committed: dict[int, CommittedPosition | None] = {}
        self.fail = False

    def __call__(self, partitions: Sequence[int]) -> Mapping[int, CommittedPosition | None]:
        self.calls.append(list(partitions))
        if self.fail:
            raise RuntimeError("broker away")
        return {p: self.committed.get(p) for p in partitions}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_positions_are_read_afresh_at_most_once_per_interval() -> None:
    fetch, clock = Fetcher(), Clock()
    positions = StandbyPositions(fetch, interval=1.0, clock=clock)
    fetch.committed = {0: CommittedPosition(10, CURRENT, 0)}
    assert positions.position(0) == CommittedPosition(10, CURRENT, 0)
    fetch.committed = {0: CommittedPosition(20, CURRENT, 0), 1: CommittedPosition(5)}
    assert positions.position(0, refresh=True) == CommittedPosition(10, CURRENT, 0)
    assert positions.position(1) is None, "a new partition waits for the interval too"
    clock.now += 1.0
    assert positions.position(0) == CommittedPosition(10, CURRENT, 0), "no refresh asked"
    assert positions.position(0, refresh=True) == CommittedPosition(20, CURRENT, 0)
    assert positions.position(1) == CommittedPosition(5), "one fetch read every wanted one"
    assert fetch.calls == [[0], [0, 1]]


def test_a_failed_read_keeps_what_was_known() -> None:
    fetch, clock = Fetcher(), Clock()
    positions = StandbyPositions(fetch, interval=1.0, clock=clock)
    fetch.committed = {0: CommittedPosition(10, CURRENT, 0)}
    positions.position(0)
    fetch.fail = True
    clock.now += 5
    assert positions.position(0, refresh=True) == CommittedPosition(10, CURRENT, 0)
    assert positions.fetches == 1


def test_positions_of_partitions_no_longer_standbys_are_not_read() -> None:
    fetch, clock = Fetcher(), Clock()
    positions = StandbyPositions(fetch, interval=1.0, clock=clock)
    positions.position(0)
    positions.position(1, refresh=True)
    clock.now += 1
    positions.retain({1})
    positions.position(1, refresh=True)
    assert fetch.calls[-1] == [1]


# --- the store: standby records through apply_changelog_batch -------------------------------


@dataclass
class Event:
    message: Record


def test_the_store_writes_committed_standby_records_and_holds_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with unconnected_app(tmp_path) as app:
        table = app.tables["customers"]
        store: Any = table.data
        topic = table.changelog_topic.get_topic_name()
        standby, active = TP(topic, 1), TP(topic, 2)
        monkeypatch.setattr(store_module, "standby_changelog_partitions", lambda _: {standby})
        committed = CommittedPosition(100, CURRENT, 50)
        monkeypatch.setattr(app.pipeline.checkpoint, "committed_position", lambda p: committed)
        moving = Positions(committed)
        monkeypatch.setattr(app.pipeline.standby_positions, "position", moving)

        def event(tp: TP, offset: int, source: int, key: bytes) -> Event:
            record = rec(offset, CURRENT, source, key)
            record.tp, record.partition = tp, tp.partition
            return Event(record)

        store.apply_changelog_batch(
            [
                event(standby, 0, 98, b"a"),
                event(standby, 1, 100, b"b"),  # pending on the standby
                event(active, 0, 98, b"c"),
                event(active, 1, 100, b"d"),  # skipped for good on the active
            ],
            None,
            None,
        )
        sdb, adb = store.partition_db(1), store.partition_db(2)
        assert (sdb.get(b"a"), sdb.get(b"b")) == (b"a@0", None)
        assert sdb.get(CHANGELOG_OFFSET_KEY) == b"0", "not past the held record"
        assert (adb.get(b"c"), adb.get(b"d")) == (b"c@0", None)
        assert adb.get(CHANGELOG_OFFSET_KEY) == b"1"
        # The active worker commits: the held record is applied with the next batch.
        moving.now = CommittedPosition(102, CURRENT, 50)
        store.apply_changelog_batch([event(standby, 2, 101, b"e")], None, None)
        assert (sdb.get(b"b"), sdb.get(b"e")) == (b"b@1", b"e@2")
        assert sdb.get(CHANGELOG_OFFSET_KEY) == b"2"


def test_held_records_are_applied_once_committed_even_when_no_record_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The active worker's last batch before it goes quiet (or is SIGKILLed): its records
    reach the standby before the commit, and no later record comes to re-check them.
    Seen in tests/integration/test_failover.py: the survivor's RocksDB lacked the dead
    worker's last committed batch (triggers all sent, ``seen_ids`` missing an id)."""
    with unconnected_app(tmp_path) as app:
        table = app.tables["customers"]
        store: Any = table.data
        topic = table.changelog_topic.get_topic_name()
        standby = TP(topic, 1)
        monkeypatch.setattr(store_module, "standby_changelog_partitions", lambda _: {standby})
        moving = Positions(CommittedPosition(100, CURRENT, 50))
        monkeypatch.setattr(app.pipeline.standby_positions, "position", moving)
        last = rec(7, CURRENT, 100, b"a")
        last.tp, last.partition = standby, 1
        store.apply_changelog_batch([Event(last)], None, None)
        sdb = store.partition_db(1)
        assert sdb.get(b"a") is None, "pending: its checkpoint has not committed yet"
        store.recheck_standby()
        assert sdb.get(b"a") is None, "still pending: nothing committed"
        # The active worker commits its last batch, then writes nothing more.
        moving.now = CommittedPosition(101, CURRENT, 50)
        store.recheck_standby()
        assert sdb.get(b"a") == b"a@7"
        assert sdb.get(CHANGELOG_OFFSET_KEY) == b"7"


def test_holding_names_the_partitions_with_held_records() -> None:
    positions = Positions(CommittedPosition(100, CURRENT, 50))
    hold: StandbyHold[Record] = StandbyHold(positions, 10)
    hold.admit(0, [rec(10, CURRENT, 100)])
    hold.admit(1, [rec(10, CURRENT, 99)])
    assert hold.holding() == [0]
    positions.now = CommittedPosition(101, CURRENT, 50)
    assert offsets(hold.admit(0, []).apply) == [10], "re-checked with no new record"
    assert hold.holding() == []
