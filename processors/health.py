"""Per-partition processing progress: what ``/livez`` and the stall metrics read.

A worker can answer HTTP while one of its partitions has stopped: an agent stuck
on one batch, a poison event that raises outside the per-event handling. The
signal is *processing* progress, not commits: commits pause by design while
Redis is down (an offset is committed only once the read model has its batch),
and a worker that keeps processing through an outage is healthy.

A partition is **stalled** when messages wait (the consumer's highwater is past
the next offset the worker has to process) and no processing progress was made
for ``stall_seconds``. The clock starts when progress was last made or when the
lag appeared, whichever is later, so a partition that was idle for hours and
just received a message is not stalled, and an idle partition (no lag) never is.

It is also stalled when its **commit** stays put for ``stall_seconds`` while
processing has passed it: an offset was delivered and never acknowledged, and the
consumer never commits past such an offset (processors/transport.py), so every
later batch piles up uncommitted. Processing looks healthy; only a restart (the
partition is read again from its committed offset) moves it. While Redis is down
commits pause by design: :func:`liveness` tells that case apart.

Offsets follow Kafka's conventions: ``processed`` takes the offset *of* the last
message handled; ``committed``, ``start`` and ``observe``'s highwater take the
offset of the *next* message (a committed offset of 10 means 0-9 are done, a
highwater of 10 means the newest message is 9).

Pure and synchronous: the agents, the commit path and the runtime's gauge timer
all run on the event loop and feed it; ``now`` is ``time.monotonic()`` (any
clock works as long as every call uses the same one).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from faust.types import TP, EventT

__all__ = ["PartitionProgress", "Stall", "liveness"]


@dataclass(slots=True)
class _Partition:
    #: Offset of the last message processed by an agent, or None.
    processed: int | None = None
    #: The group's committed offset (next to read), or None.
    committed: int | None = None
    #: Where reading starts when the group has no committed offset (the log start).
    start: int | None = None
    #: The consumer's highwater (next offset to be written), or None.
    highwater: int | None = None
    #: The next offset the worker has to process (best knowledge), or None.
    done: int | None = None
    #: Since when the partition has had lag without progress; None = no lag.
    since: float | None = None
    #: Since when the committed offset has stayed put with processing past it; None =
    #: nothing processed beyond the commit.
    commit_behind_since: float | None = None

    def commit_behind(self) -> bool:
        return (
            self.committed is not None
            and self.processed is not None
            and self.processed >= self.committed
        )

    def next_offset(self) -> int | None:
        known = [o for o in (self.committed, self.start) if o is not None]
        if self.processed is not None:
            known.append(self.processed + 1)
        return max(known) if known else None

    def lag(self) -> int | None:
        if self.highwater is None or self.done is None:
            return None
        return max(0, self.highwater - self.done)


@dataclass(frozen=True, slots=True)
class Stall:
    """One stalled partition, as ``/livez`` reports it."""

    tp: TP
    lag: int
    seconds: float
    #: ``processing`` (no batch handled) or ``commit`` (batches handled, the committed
    #: offset stuck at an offset never acknowledged).
    kind: str = "processing"

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "lag": self.lag,
            "seconds_without_progress": round(self.seconds, 1),
            "stalled": self.kind,
        }


class PartitionProgress:
    """Processed, committed and highwater offsets per topic-partition, and stalls.

    Keys are ``faust.types.TP`` (a named tuple, so a plain ``(topic, partition)``
    tuple finds the same entry).
    """

    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}

    # --- feeding -----------------------------------------------------------------

    def processed(self, tp: TP, offset: int, now: float | None = None) -> None:
        """An agent has handled every message of ``tp`` up to ``offset`` (inclusive).

        Handled means folded, found a duplicate or dead-lettered: anything that lets
        the partition move on. Call once per batch and partition with the highest
        offset; lower or repeated offsets are ignored.
        """
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        if part.processed is None or offset > part.processed:
            part.processed = offset
            self._advance(part, now)
            if part.commit_behind_since is None and part.commit_behind():
                part.commit_behind_since = time.monotonic() if now is None else now

    def processed_events(self, events: Iterable[EventT], now: float | None = None) -> None:
        """``processed`` for a handled agent batch: the last offset of each partition in it."""
        # Within a partition a batch is in offset order: the last one seen is the highest.
        last = {event.message.tp: event.message.offset for event in events}
        for tp, offset in last.items():
            self.processed(tp, offset, now)

    def committed(self, tp: TP, offset: int, now: float | None = None) -> None:
        """The group's committed offset of ``tp`` (Kafka's: the next offset to read).

        Also where a restarted worker resumes, so it is the baseline before the first
        batch. Never the stall signal by itself; it only advances once processing has.
        """
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        if part.committed is None or offset > part.committed:
            part.committed = offset
            self._advance(part, now)
            # The commit moved: its clock restarts (or stops, once it caught up).
            behind = part.commit_behind()
            part.commit_behind_since = (
                (time.monotonic() if now is None else now) if behind else None
            )

    def start(self, tp: TP, offset: int, now: float | None = None) -> None:
        """Where the worker began reading ``tp`` when the group had no committed offset."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        part.start = offset
        self._advance(part, now)

    def observe(self, tp: TP, highwater: int, now: float) -> None:
        """The consumer's highwater of ``tp`` (the offset the next message will get)."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        part.highwater = highwater
        lag = part.lag()
        if not lag:
            part.since = None
        elif part.since is None:  # lag just appeared: the clock starts now
            part.since = now

    def restart_clocks(self, now: float) -> None:
        """Count no time before ``now`` (while the worker could not process: not ready)."""
        for part in self._parts.values():
            if part.since is not None:
                part.since = now
            if part.commit_behind_since is not None:
                part.commit_behind_since = now

    def forget(self, tps: Iterable[TP]) -> None:
        """Drop revoked partitions: another worker owns their progress now."""
        for tp in tps:
            self._parts.pop(tp, None)

    def _advance(self, part: _Partition, now: float | None) -> None:
        """Move the next-to-process offset forward if what we know now says so."""
        done = part.next_offset()
        if done is None or (part.done is not None and done <= part.done):
            return
        part.done = done
        # Progress (or the first baseline) with messages still waiting: the clock restarts.
        # A commit past the last reported batch is progress too (it implies processing).
        part.since = (time.monotonic() if now is None else now) if part.lag() else None

    # --- reading -----------------------------------------------------------------

    def partitions(self) -> set[TP]:
        return set(self._parts)

    def needs_start(self, tp: TP) -> bool:
        """Nothing tells where ``tp``'s work begins (no batch, no committed offset)."""
        part = self._parts.get(tp)
        return part is None or part.next_offset() is None

    def lag(self, tp: TP) -> int | None:
        """Messages after the last processed one; None if unknown."""
        part = self._parts.get(tp)
        return None if part is None else part.lag()

    def committed_lag(self, tp: TP) -> int | None:
        """Highwater minus the committed offset (or the start offset before any commit).

        What a crash would make the group read again; grows while Redis is down.
        """
        part = self._parts.get(tp)
        if part is None or part.highwater is None:
            return None
        base = part.committed if part.committed is not None else part.start
        return None if base is None else max(0, part.highwater - base)

    def stall_seconds(self, tp: TP, now: float) -> float:
        """How long ``tp`` has had lag without processing progress (0 = moving or idle)."""
        part = self._parts.get(tp)
        if part is None or part.since is None:
            return 0.0
        return max(0.0, now - part.since)

    def stalls(self, now: float, stall_seconds: float) -> list[Stall]:
        """Partitions with lag and no processing progress for ``stall_seconds``, or whose
        committed offset stayed behind processing that long."""
        found = []
        for tp, part in self._parts.items():
            lag = part.lag()
            if part.since is not None and now - part.since >= stall_seconds and lag:
                found.append(Stall(tp, lag, now - part.since))
                continue
            behind = part.commit_behind_since
            if behind is not None and now - behind >= stall_seconds and part.commit_behind():
                committed_lag = self.committed_lag(tp) or 0
                found.append(Stall(tp, committed_lag, now - behind, "commit"))
        return sorted(found, key=lambda stall: (stall.tp.topic, stall.tp.partition))

    def stalled(self, now: float, stall_seconds: float) -> list[TP]:
        return [stall.tp for stall in self.stalls(now, stall_seconds)]


def liveness(
    stalls: list[Stall], stall_seconds: float, read_model_lag_seconds: float
) -> tuple[int, dict[str, Any]]:
    """``/livez``'s status and body.

    503 when a partition is stalled, so an orchestrator restarts the worker. Not
    while the Redis read model has been behind for at least as long as the stall
    threshold: then the stall is back-pressure from Redis (batches wait for it
    before their offsets can move), a restart cannot fix that, and restarting in a
    loop during an outage would only replay work. A stuck commit is Redis's doing
    whenever the read model is behind at all (commits follow its writes). Readiness, metrics and the
    OmniPartitionStalled / OmniReadModelLagging alerts still say so.
    """
    if not stalls:
        return 200, {"live": True}
    body: dict[str, Any] = {
        "stall_seconds": stall_seconds,
        "stalled": [stall.as_json() for stall in stalls],
    }
    if all(_waits_for_redis(stall, stall_seconds, read_model_lag_seconds) for stall in stalls):
        return 200, {
            "live": True,
            "waiting_for": "redis",
            "read_model_lag_seconds": round(read_model_lag_seconds, 1),
            **body,
        }
    return 503, {"live": False, **body}


#: Read-model lag (s) from which a stuck commit is Redis's: commits wait for its writes,
#: which land within milliseconds while it is up.
COMMIT_WAITS_FOR_REDIS_SECONDS = 1.0


def _waits_for_redis(stall: Stall, stall_seconds: float, read_model_lag_seconds: float) -> bool:
    if stall.kind == "commit":
        return read_model_lag_seconds >= COMMIT_WAITS_FOR_REDIS_SECONDS
    return read_model_lag_seconds >= stall_seconds
