"""Standby replicas that never run ahead of committed input.

With ``OMNI_STANDBY_REPLICAS`` > 0 Faust gives every worker standby copies of other
workers' table partitions and feeds their changelog records, as they are written,
through the same ``apply_changelog_batch`` as recovery. Recovery's rule
(:func:`processors.checkpoint.record_is_committed`) decides once, after the partition
changed hands, what is committed. A standby reads records seconds after the active
worker wrote them, before the checkpoint that covers them commits (or fails to), so
:func:`processors.checkpoint.classify_record` has a third answer, PENDING, and
:class:`StandbyHold` keeps those records in memory, in changelog order:

- a partition applies its records from the oldest on while they are COMMITTED, drops
  ABANDONED ones, and stops at the first PENDING one: everything from there on waits
  (a later record of the same key must not be applied before an earlier one);
- the persisted changelog offset never passes the first held record, so when the
  standby is promoted, Faust's active recovery reads the held records again from the
  changelog and the recovery rule decides them against the new generation's commit;
- held records are checked again on later batches against committed positions read
  afresh (:class:`StandbyPositions`: an OffsetFetch, at most one per interval), and
  on a timer (:meth:`processors.store.CheckpointedStore.recheck_standby`): the last
  batches before the active worker goes quiet or dies have no later batch, and would
  otherwise stay held (the standby's RocksDB behind committed input) until a promotion;
- a partition holding more than ``max_held`` records (the active worker cannot commit:
  Redis down) drops them and stops following until Faust seeks it back to its persisted
  offset (it does at every rebalance); a promotion then recovers those records from the
  changelog, which is slower but loses nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from processors.checkpoint import CommittedPosition, RecordState, classify_record, header_value

log = logging.getLogger(__name__)


class ChangelogRecord(Protocol):
    """What the hold reads of a changelog record (Faust's ``Message`` has it)."""

    @property
    def offset(self) -> int: ...

    @property
    def headers(self) -> Any: ...


R = TypeVar("R", bound=ChangelogRecord)


class StandbyPositions:
    """Committed input positions for standby partitions, read afresh but rate-limited.

    Unlike :meth:`processors.checkpoint.Checkpoint.committed_position` (what this
    worker's generation found when it took a partition, fixed until the next
    rebalance), another worker moves these every commit. One instance serves every
    table's store, so one OffsetFetch per ``interval`` covers all of them.
    """

    def __init__(
        self,
        fetch: Callable[[Sequence[int]], Mapping[int, CommittedPosition | None]],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._interval = interval
        self._clock = clock
        self._known: dict[int, CommittedPosition | None] = {}
        self._wanted: set[int] = set()
        self._attempted_at = -math.inf
        self.fetches = 0

    def position(self, partition: int, refresh: bool = False) -> CommittedPosition | None:
        """The last position read for ``partition`` (None: none read, or none committed).

        ``refresh``: the caller holds records the last read did not decide; read again
        if the interval has passed. A partition never read is read at once, subject to
        the same interval. Unknown is as safe as "nothing committed": stamped records wait.
        """
        self._wanted.add(partition)
        due = self._clock() - self._attempted_at >= self._interval
        if due and (refresh or partition not in self._known):
            self._read()
        return self._known.get(partition)

    def retain(self, partitions: Iterable[int]) -> None:
        """Stop reading partitions that are no longer standbys here."""
        keep = set(partitions)
        self._wanted &= keep
        for partition in list(self._known):
            if partition not in keep:
                del self._known[partition]

    def _read(self) -> None:
        self._attempted_at = self._clock()
        wanted = sorted(self._wanted)
        try:
            # Short: it blocks the event loop (the recovery loop calls us synchronously).
            found = self._fetch(wanted)
        except Exception as exc:  # the broker is away: keep what we know, hold the rest
            log.warning("Cannot read committed offsets for standby partitions %s: %s", wanted, exc)
            return
        self.fetches += 1
        self._known.update(found)


@dataclass(slots=True)
class Admitted(Generic[R]):
    """What a standby partition may apply now."""

    #: Records of committed checkpoints, in changelog order.
    apply: list[R] = field(default_factory=list)
    #: The changelog offset to persist with them; None: leave the persisted one.
    offset: int | None = None
    #: Records dropped for good (their checkpoint never commits).
    abandoned: int = 0


class StandbyHold(Generic[R]):
    """Per standby partition of one table: the records waiting for their checkpoint."""

    def __init__(
        self,
        positions: Callable[[int, bool], CommittedPosition | None],
        max_held: int,
        on_overflow: Callable[[int, int], None] | None = None,
    ) -> None:
        self._position = positions
        self.max_held = max_held
        self._on_overflow = on_overflow
        self._held: dict[int, list[R]] = {}
        #: partition -> first offset dropped at an overflow; nothing from there on is
        #: taken until Faust delivers that offset again (a seek back to the persisted one).
        self._frozen: dict[int, int] = {}

    def held(self, partition: int) -> int:
        return len(self._held.get(partition, ()))

    def holding(self) -> list[int]:
        """Partitions with records waiting for their checkpoint."""
        return [partition for partition, queue in self._held.items() if queue]

    def frozen(self, partition: int) -> bool:
        return partition in self._frozen

    def retain(self, partitions: Collection[int]) -> None:
        """Forget partitions no longer standbys here (promoted to active, or moved away):
        a promoted one's records are read again by active recovery."""
        for state in (self._held, self._frozen):
            for partition in [p for p in state if p not in partitions]:
                del state[partition]

    def admit(self, partition: int, records: Iterable[R]) -> Admitted[R]:
        """Take ``partition``'s next changelog records (in offset order); say what to apply."""
        queue = self._held.pop(partition, [])
        frozen_from = self._frozen.get(partition)
        for record in records:
            if frozen_from is not None:
                if record.offset > frozen_from:
                    continue  # dropped at the overflow: wait for the seek back
                frozen_from = None
                del self._frozen[partition]
            if queue and record.offset <= queue[-1].offset:
                # Faust sought back (a rebalance re-reads standbys from the persisted
                # offset): the held records come again, keep one copy.
                queue = [held for held in queue if held.offset < record.offset]
            queue.append(record)
        if not queue:
            return Admitted()
        admitted: Admitted[R] = Admitted()
        position = self._position(partition, False)
        refreshed = False
        index = 0
        while index < len(queue):
            state = classify_record(header_value(queue[index].headers), position)
            if state is RecordState.PENDING:
                if refreshed:
                    break
                position = self._position(partition, True)
                refreshed = True
                continue
            if state is RecordState.COMMITTED:
                admitted.apply.append(queue[index])
            else:
                admitted.abandoned += 1
            index += 1
        rest = queue[index:]
        if not rest:
            admitted.offset = queue[-1].offset
            return admitted
        # Never past the first held record: a promotion reads it again from the changelog.
        admitted.offset = rest[0].offset - 1
        if len(rest) > self.max_held:
            self._frozen[partition] = rest[0].offset
            if self._on_overflow is not None:
                self._on_overflow(partition, len(rest))
            return admitted
        self._held[partition] = rest
        return admitted
