"""The pure per-event work, in process: µs per event, and where it goes.

    python -m bench.step_profile [--events N] [--customers C] [--repeat R] [--profile]

No broker, no Redis: the bench workload (:func:`bench.workload.generate`) goes
through the work the hand-written loop (variant b) and the worker do per event,
in batches of ``--batch`` messages: ``EventValidator.check``, grouping by
customer, ``step`` with the state and timeline (de)serialized as the worker's
table stores them (``--format record``: one compressed record per customer,
:mod:`processors.domain.record_codec`; ``--format json``: the previous layout, state
and timeline as two orjson values, for before/after ratios in one run), the
triggers' and decisions' records encoded, and ``project`` (+ the timeline write)
for the read model. The state store is a dict of bytes.

The first half of the events warms the store up (every customer's home profile
and some history); then each of ``--repeat`` repetitions restores that warm
store and processes the second half, so every repetition does the same work.
It prints the median µs/event of the repetitions (and each of them), by wall
clock and by the process's CPU time (steadier on a shared machine); ``--profile``
adds a cProfile of one more repetition, top functions by own time. Figures, not
a test: compare runs on the same machine under the same load.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
from pydantic import SecretStr

from bench.workload import generate
from processors.app import step_context
from processors.domain.model import CustomerState, Event
from processors.domain.read_model import project, timeline_write
from processors.domain.record_codec import decode_record, encode_record
from processors.domain.step import StepContext, step
from processors.domain.timers import next_due
from processors.rulebook import load_ruleset
from processors.settings import Settings
from producers.actions import new_action_token_key
from schemas import EventValidator, Rejection

Message = tuple[str, bytes, bytes]


class StepWork:
    """One worker's pure work over an in-memory store (customer key -> bytes)."""

    def __init__(
        self, ctx: StepContext, validator: EventValidator, batch: int, layout: str = "record"
    ) -> None:
        self.ctx = ctx
        self.validator = validator
        self.batch = batch
        self.layout = layout
        self.db: dict[bytes, bytes] = {}
        self.rejected = 0

    def run(self, messages: Sequence[Message]) -> None:
        for start in range(0, len(messages), self.batch):
            self._batch(messages[start : start + self.batch])

    def _batch(self, messages: Sequence[Message]) -> None:
        now = time.time()
        by_customer: dict[bytes, list[Event]] = {}
        for channel, key, value in messages:
            record = self.validator.check(channel, key, value)
            if isinstance(record, Rejection):
                self.rejected += 1
                continue
            by_customer.setdefault(key, []).append(Event.from_record(record, now))
        db = self.db
        records = self.layout == "record"
        for key, events in by_customer.items():
            stored = db.get(key)
            timeline_key = b"\x00timeline:" + key
            if records:
                held = None if stored is None else decode_record(stored)
                state_json = None if held is None else held.state
                stored_timeline = None if held is None else held.timeline
            else:
                state_json, stored_timeline = stored, db.get(timeline_key)
            state = (
                None if state_json is None else CustomerState.from_dict(orjson.loads(state_json))
            )
            timeline = [] if stored_timeline is None else orjson.loads(stored_timeline)
            state, out = step(state, events, self.ctx, now, timeline)
            if out.changed:
                encoded = out.state_encoded or orjson.dumps(state)
                timeline_changed = out.timeline is not None and out.timeline != timeline
                if records:
                    line = orjson.dumps(out.timeline) if timeline_changed else stored_timeline
                    db[key] = encode_record(encoded, line or b"[]", next_due(state.timers))
                else:
                    db[key] = encoded
                    if timeline_changed:
                        db[timeline_key] = orjson.dumps(out.timeline)
            for trigger in out.triggers:
                orjson.dumps(trigger.to_record())
            for decision in out.decisions:
                orjson.dumps(decision.to_record())
            writes = project(state, now)
            if out.timeline:
                writes.append(timeline_write(state.customer_id, out.timeline))


def _timed(
    work: StepWork, warm: dict[bytes, bytes], messages: Sequence[Message]
) -> tuple[float, float]:
    """Wall-clock and CPU µs per event of one repetition, from the warm store."""
    work.db = dict(warm)
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    work.run(messages)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / len(messages) * 1e6, cpu / len(messages) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.step_profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=0, help="default: events / 10")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500, help="messages per batch")
    parser.add_argument(
        "--format",
        choices=("record", "json"),
        default="record",
        help="how state is stored: the worker's record (default) or the previous JSON layout",
    )
    parser.add_argument("--profile", action="store_true", help="add a cProfile top list")
    parser.add_argument("--top", type=int, default=35, help="functions in the cProfile list")
    args = parser.parse_args(argv)

    # The step signs action tokens: a throwaway key unless the environment has one.
    settings = Settings()
    if settings.action_token_key is None:
        settings = settings.model_copy(
            update={"action_token_key": SecretStr(new_action_token_key())}
        )
    ctx = step_context(settings, load_ruleset(Path(settings.rules_dir), settings.rule_delays()))
    workload = generate(args.events, args.customers or max(1, args.events // 10))
    messages = workload.messages
    half = len(messages) // 2
    warmup, measured = messages[:half], messages[half:]
    work = StepWork(ctx, EventValidator(), args.batch, args.format)
    work.run(warmup)
    warm = dict(work.db)

    runs = [_timed(work, warm, measured) for _ in range(args.repeat)]
    print(
        f"{len(measured)} events x {args.repeat} (after {len(warmup)} warm-up events, "
        f"{workload.customers} customers, batches of {args.batch}, {work.rejected} rejected, "
        f"--format {args.format})"
    )
    for name, figures in (("wall", [w for w, _ in runs]), ("cpu", [c for _, c in runs])):
        print(
            f"{name:>4}: median {statistics.median(figures):.1f} us/event "
            f"(runs: {', '.join(f'{f:.1f}' for f in figures)})"
        )

    if args.profile:
        work.db = dict(warm)
        profiler = cProfile.Profile()
        profiler.enable()
        work.run(measured)
        profiler.disable()
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
