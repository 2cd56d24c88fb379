"""The Redis read model as whole values derived from a customer's state.

Whole values make every write idempotent: writing the same state twice, or
replaying events, converges to the same keys. Channels (ATM, branch, till)
read these keys; they are never the source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from processors.domain.model import CustomerState, format_time

KEY_PREFIX = "omni"


def profile_key(customer_id: str) -> str:
    return f"{KEY_PREFIX}:profile:{customer_id}"


def entitlement_key(customer_id: str, kind: str) -> str:
    return f"{KEY_PREFIX}:entitlement:{customer_id}:{kind}"


def timeline_key(customer_id: str) -> str:
    return f"{KEY_PREFIX}:timeline:{customer_id}"


@dataclass(slots=True, frozen=True)
class ReadModelWrite:
    key: str
    value: bytes
    #: Epoch seconds at which Redis should drop the key (None = keep).
    expire_at: float | None = None


def project(state: CustomerState, now: float) -> list[ReadModelWrite]:
    """Every read-model key for this customer, as it should be now."""
    profile = {
        "customer_id": state.customer_id,
        **state.traits,
        "products": state.products,
        "consents": {key: c["granted"] for key, c in state.consents.items()},
        "last_seen": {channel: format_time(at) for channel, at in state.last_seen.items()},
        "last_country": state.last_country,
        "updated_at": None if state.updated_at is None else format_time(state.updated_at),
    }
    writes = [ReadModelWrite(profile_key(state.customer_id), orjson.dumps(profile))]
    for kind, entitlement in state.entitlements.items():
        if entitlement["expires_at"] > now:
            writes.append(
                ReadModelWrite(
                    entitlement_key(state.customer_id, kind),
                    orjson.dumps(
                        {**entitlement, "expires_at": format_time(entitlement["expires_at"])}
                    ),
                    expire_at=entitlement["expires_at"],
                )
            )
    return writes


def timeline_write(customer_id: str, timeline: list[dict[str, object]]) -> ReadModelWrite:
    """``omni:timeline:<id>``: the recent interactions, newest first (call center, branch)."""
    return ReadModelWrite(timeline_key(customer_id), orjson.dumps(timeline))
