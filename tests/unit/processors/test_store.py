"""The tables' store: options that hold on reopen, and the checkpoint's rule as RocksDB writes."""

from __future__ import annotations

from pathlib import Path

from rocksdict import Rdict

from processors.checkpoint import ChangelogWrites, CommittedPosition, source_header
from processors.faust_adapter import CHANGELOG_OFFSET_KEY
from processors.output import Headers
from processors.store import StoreOptions

MIB = 1024 * 1024
CACHE = "rocksdb.block-cache-capacity"


def test_a_reopened_store_keeps_its_block_cache(tmp_path: Path) -> None:
    options = StoreOptions(block_cache_size=64 * MIB, write_buffer_size=4 * MIB)
    path = tmp_path / "customers-0.db"
    db = options.open(path)
    db[b"alice"] = b"{}"
    assert db.property_int_value(CACHE) == 64 * MIB
    db.close()

    reopened = options.open(path)
    try:
        assert reopened.property_int_value(CACHE) == 64 * MIB
        assert reopened[b"alice"] == b"{}"
    finally:
        reopened.close()


def test_faust_s_own_options_lose_the_cache_on_reopen(tmp_path: Path) -> None:
    """What StoreOptions fixes (rocksdict loads the OPTIONS file): if this starts to
    fail, rocksdict or Faust fixed it and StoreOptions may go."""
    from faust.stores.rocksdb import RocksDBOptions

    options = RocksDBOptions(block_cache_size=64 * MIB)
    path = tmp_path / "customers-0.db"
    options.open(path).close()
    reopened = options.open(path)
    try:
        assert reopened.property_int_value(CACHE) != 64 * MIB
    finally:
        reopened.close()


WRITER = (7, 1000)
COMMITTED = CommittedPosition(offset=10, writer=WRITER, start=0)


def header(source_offset: int) -> Headers:
    return source_header(WRITER, source_offset)


class Dbs:
    def __init__(self, tmp_path: Path) -> None:
        self._root = tmp_path
        self.dbs: dict[int, Rdict] = {}

    def __call__(self, partition: int) -> Rdict:
        if partition not in self.dbs:
            self.dbs[partition] = StoreOptions().open(self._root / f"t-{partition}.db")
        return self.dbs[partition]


def test_changelog_writes_apply_committed_records_and_skip_the_rest(tmp_path: Path) -> None:
    dbs = Dbs(tmp_path)
    writes = ChangelogWrites({0: COMMITTED, 1: None}.get)
    writes.add(0, 100, b"alice", b"v1", header(3))
    writes.add(0, 101, b"bob", b"v1", header(9))
    writes.add(0, 102, b"alice", b"v2", header(10))  # input offset 10 was never committed
    writes.add(0, 103, b"bob", None, header(9))  # a committed tombstone
    writes.add(0, 104, b"carol", b"v1", None)  # before the header existed: committed
    writes.add(1, 50, b"dave", b"v1", header(1))  # nothing committed on partition 1
    writes.write(dbs)

    assert (writes.records, writes.skipped) == (6, 2)
    db0, db1 = dbs(0), dbs(1)
    assert db0.get(b"alice") == b"v1"
    assert db0.get(b"bob") is None
    assert db0.get(b"carol") == b"v1"
    # The persisted offset passes skipped records too: their input is redone.
    assert db0.get(CHANGELOG_OFFSET_KEY) == b"104"
    assert db1.get(b"dave") is None
    assert db1.get(CHANGELOG_OFFSET_KEY) == b"50"
    for db in dbs.dbs.values():
        db.close()


def test_changelog_writes_can_be_reused_after_a_write(tmp_path: Path) -> None:
    dbs = Dbs(tmp_path)
    writes = ChangelogWrites({0: COMMITTED}.get)
    writes.add(0, 1, b"alice", b"v1", header(1))
    writes.write(dbs)
    writes.add(0, 2, b"alice", b"v2", header(2))
    writes.write(dbs)
    assert dbs(0).get(b"alice") == b"v2"
    assert dbs(0).get(CHANGELOG_OFFSET_KEY) == b"2"
    dbs(0).close()
