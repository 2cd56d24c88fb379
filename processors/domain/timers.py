"""Durable per-customer timers, kept in the customer record, and a due index for the tick.

A customer's timers are a list of plain dicts in its record (``Timer.to_dict()``),
sorted by ``(due_at, timer_id)``, so they are saved and restored with the record
(changelog, RocksDB) and need no store of their own. A periodic tick in each
partition asks a :class:`DueIndex` which customers have a timer due, loads those
records and calls :func:`pop_due`.

Contract of :func:`pop_due`: it removes the due timers from the list it is given,
which must be the list inside the customer state that the caller then writes back
in the *same* state update as the effects of firing them (outputs, counters). The
timers and their effects are thus saved together or not at all: once that update
is written a timer cannot fire again, and if the worker dies before it, the timer
is still in the restored record and fires again with the same inputs. Outputs keep
the deterministic ids of their source (trigger ids derive from the timer's payload),
so a re-fire after a crash between producing and writing is a duplicate consumers
drop, never a second, different message.

Timer ids are deterministic (:func:`timer_id`): scheduling the same thing twice, as a
replayed event does, leaves one timer.

Overflow: a customer holds at most ``max_timers`` timers (default
:data:`MAX_TIMERS`). When full, :func:`schedule` refuses the new timer and returns
False: a timer once scheduled always fires unless cancelled, so callers can rely on
what they scheduled, and the refusal is theirs to count and log.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.domain.ids import _hex_id

#: Timers per customer; far above what the contact policy lets through in a week.
MAX_TIMERS = 64

# Timer kinds.
DEFERRED_TRIGGER = "deferred_trigger"
IGNORED_CHECK = "ignored_check"
#: A timer rule's pending trigger ("when X, unless Y within D, then Z").
RULE_TIMER = "rule_timer"


def timer_id(kind: str, customer_id: str, source_key: str) -> str:
    """Deterministic id: the same (kind, customer, source) is the same timer."""
    return _hex_id("timer", kind, customer_id, source_key)


@dataclass(slots=True, frozen=True)
class Timer:
    timer_id: str
    kind: str
    #: Epoch seconds at or after which it fires.
    due_at: float
    #: JSON-friendly payload (dicts, lists, numbers, strings).
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        kind: str,
        customer_id: str,
        source_key: str,
        due_at: float,
        data: dict[str, Any] | None = None,
    ) -> Timer:
        return cls(timer_id(kind, customer_id, source_key), kind, float(due_at), data or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "timer_id": self.timer_id,
            "kind": self.kind,
            "due_at": self.due_at,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timer:
        return cls(
            timer_id=data["timer_id"],
            kind=data["kind"],
            due_at=float(data["due_at"]),
            data=data.get("data") or {},
        )


def _order(entry: Mapping[str, Any]) -> tuple[float, str]:
    return (entry["due_at"], entry["timer_id"])


def is_scheduled(timers: list[dict[str, Any]], timer_id: str) -> bool:
    return any(entry["timer_id"] == timer_id for entry in timers)


def schedule(timers: list[dict[str, Any]], timer: Timer, max_timers: int = MAX_TIMERS) -> bool:
    """Add ``timer`` in due order; True when added.

    False when a timer with the same id is already there (it is left as it was:
    scheduling is idempotent) or when the list is full (the new timer is refused;
    :func:`is_scheduled` tells the two apart).
    """
    if is_scheduled(timers, timer.timer_id) or len(timers) >= max_timers:
        return False
    bisect.insort(timers, timer.to_dict(), key=_order)
    return True


def cancel(timers: list[dict[str, Any]], which: str | Callable[[Timer], bool]) -> list[Timer]:
    """Remove the timer with this id, or every timer the predicate accepts; returns them."""

    def matches(timer: Timer) -> bool:
        return timer.timer_id == which if isinstance(which, str) else which(timer)

    removed: list[Timer] = []
    kept: list[dict[str, Any]] = []
    for entry in timers:
        timer = Timer.from_dict(entry)
        if matches(timer):
            removed.append(timer)
        else:
            kept.append(entry)
    timers[:] = kept
    return removed


def pop_due(timers: list[dict[str, Any]], now: float) -> list[Timer]:
    """Remove and return the timers due by ``now`` (``due_at <= now``), in due order.

    See the module docstring: the caller writes the list back with the effects.
    """
    due = sorted((entry for entry in timers if entry["due_at"] <= now), key=_order)
    if due:
        timers[:] = [entry for entry in timers if entry["due_at"] > now]
    return [Timer.from_dict(entry) for entry in due]


def next_due(timers: list[dict[str, Any]]) -> float | None:
    """The earliest ``due_at``, or None when there are no timers."""
    return min((entry["due_at"] for entry in timers), default=None)


class DueIndex:
    """Which customers of a partition have a timer due: an in-memory min-heap.

    Holds one next-due time per customer key. Not durable: build it with
    :meth:`rebuild` from the table when the partition is assigned (or recovered),
    then keep it current with :meth:`update` after every write of a customer's
    record (``update(key, next_due(timers))``). :meth:`pop_due` hands out a due key
    once and forgets it; the tick loads that record, pops its timers, writes it, and
    calls :meth:`update` with the new next-due time.

    Updates leave the old heap entry behind; entries that no longer match the key's
    current time are skipped when popped, and the heap is compacted when they
    outnumber the live ones.
    """

    __slots__ = ("_due", "_heap")

    def __init__(self, items: Iterable[tuple[bytes, float | None]] = ()) -> None:
        self._due: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self.rebuild(items)

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, customer_key: object) -> bool:
        return customer_key in self._due

    def get(self, customer_key: bytes) -> float | None:
        return self._due.get(customer_key)

    def update(self, customer_key: bytes, next_due: float | None) -> None:
        """Set (or, with None, clear) the customer's next due time."""
        if next_due is None:
            self._due.pop(customer_key, None)
        elif self._due.get(customer_key) != next_due:
            self._due[customer_key] = next_due
            heapq.heappush(self._heap, (next_due, customer_key))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._compact()

    def pop_due(self, now: float) -> list[bytes]:
        """Remove and return the keys due by ``now``, earliest first (ties by key)."""
        out: list[bytes] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if self._due.get(key) == due:
                del self._due[key]
                out.append(key)
        return out

    def next_due(self) -> float | None:
        """The earliest due time in the index, or None when it is empty."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def rebuild(self, items: Iterable[tuple[bytes, float | None]]) -> None:
        """Replace the contents with ``(customer_key, next_due)`` pairs (None: no timer)."""
        self._due = {key: due for key, due in items if due is not None}
        self._compact()

    def _compact(self) -> None:
        self._heap = [(due, key) for key, due in self._due.items()]
        heapq.heapify(self._heap)
