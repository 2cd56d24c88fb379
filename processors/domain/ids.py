"""Deterministic ids: a replay of the same event yields the same trigger and decision."""

from __future__ import annotations

from hashlib import blake2b


def _hex_id(*parts: str) -> str:
    return blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def trigger_id(rule: str, customer_id: str, source_event_id: str) -> str:
    return _hex_id("trigger", rule, customer_id, source_event_id)


def decision_id(rule: str, customer_id: str, source_event_id: str) -> str:
    return _hex_id("decision", rule, customer_id, source_event_id)


def event_fingerprint(event_id: str) -> int:
    """A 63-bit hash of an event id for the dedup ring.

    63 bits keep it a non-negative signed int (portable JSON); at 512 ids per
    customer a collision that would drop a real event has probability ~1e-14.
    """
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1
