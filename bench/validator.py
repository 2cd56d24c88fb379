"""Micro-benchmark of :meth:`EventValidator.check`: µs per event (figures, not a test).

    .venv/bin/python -m bench.validator [--events 200000]

Valid events are the valid samples (every type), re-serialised with distinct
ids; the loop is what the ingest agent does per message: one ``check`` call.
The rejected figure (slow path, jsonschema explains every error) is printed for
scale: dead letters should be rare.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from schemas.identity import identity_key
from schemas.registry import SAMPLES_ROOT
from schemas.validate import EventValidator, Rejection


def valid_messages(count: int) -> list[tuple[str, bytes, bytes]]:
    samples = [json.loads(p.read_text()) for p in sorted((SAMPLES_ROOT / "valid").rglob("*.json"))]
    out = []
    for i in range(count):
        event = dict(samples[i % len(samples)])
        event["event_id"] = f"bench-{i}"
        # An event without customer_id (identified_event) is keyed by its first identifier.
        key = event["customer_id"] if "customer_id" in event else identity_key(event["identifiers"])
        out.append((event["channel"], key.encode(), orjson.dumps(event)))
    return out


def invalid_messages(count: int) -> list[tuple[str, bytes | None, bytes | None]]:
    samples = []
    for path in sorted((SAMPLES_ROOT / "invalid").glob("*.json")):
        sample = json.loads(path.read_text())
        if sample["reason"] != "schema_violation":
            continue
        key = None if sample["key"] is None else sample["key"].encode()
        samples.append((sample["channel"], key, sample["value"].encode()))
    return [samples[i % len(samples)] for i in range(count)]


def per_event_us(
    check: Callable[[str, Any, Any], Any], messages: Sequence[tuple[str, Any, Any]], rounds: int = 5
) -> float:
    """Best of ``rounds`` runs, µs per message."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for channel, key, value in messages:
            check(channel, key, value)
        best = min(best, time.perf_counter() - start)
    return best / len(messages) * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    validator = EventValidator()
    print(f"EventValidator() built in {(time.perf_counter() - start) * 1e3:.0f} ms")

    valid = valid_messages(args.events)
    for channel, key, value in valid[:50]:
        assert not isinstance(validator.check(channel, key, value), Rejection)
    us = per_event_us(validator.check, valid)
    print(
        f"valid events:    {us:6.2f} µs/event  ({1e6 / us:,.0f} events/s, "
        f"{len(valid):,} events, best of 5)"
    )

    def parse_only(channel: str, key: bytes, value: bytes) -> Any:
        return orjson.loads(value)

    print(f"  of which orjson.loads alone: {per_event_us(parse_only, valid):6.2f} µs/event")

    invalid = invalid_messages(max(1, args.events // 50))
    us_bad = per_event_us(validator.check, invalid, rounds=3)
    print(
        f"schema_violation (slow path, all errors explained): {us_bad:6.1f} µs/event "
        f"({len(invalid):,} events)"
    )


if __name__ == "__main__":
    main()
