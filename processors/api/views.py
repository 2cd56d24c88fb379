"""What the Customer 360 API reads from Redis and how it shapes the answer: pure, no I/O.

A customer is read with one MGET of :func:`customer_keys`; an identifier with one GET
of its ``omni:identifier:<type>:<value>`` key. Ids arrive URL-decoded (aiohttp decodes
each path segment, ``%2F`` included) and are escaped into key segments by the contract's
functions (``producers.keys``), exactly as the worker wrote them.
"""

from __future__ import annotations

from typing import Any

import orjson

from processors.domain.erasure import ENTITLEMENT_KINDS
from processors.domain.model import parse_time
from processors.domain.read_model import COUPON_KEEP_SECONDS
from producers.keys import (
    cart_key,
    coupons_key,
    entitlement_key,
    identifier_key,
    offers_key,
    profile_key,
    timeline_key,
)

# The contract's identifier types (``omni:identifier:<type>:*``), re-exported here.
from schemas.identity import IDENTIFIER_TYPES

__all__ = [
    "IDENTIFIER_TYPES",
    "customer_keys",
    "customer_view",
    "identifier_read_key",
    "identifier_view",
]


# Positions in customer_keys(); the entitlements follow, one per ENTITLEMENT_KINDS.
_PROFILE, _TIMELINE, _CART, _OFFERS, _COUPONS, _FIRST_ENTITLEMENT = range(6)


def customer_keys(customer_id: str) -> list[str]:
    """Every read-model key of the customer the API shows, for one MGET."""
    return [
        profile_key(customer_id),
        timeline_key(customer_id),
        cart_key(customer_id),
        offers_key(customer_id),
        coupons_key(customer_id),
        *(entitlement_key(customer_id, kind) for kind in ENTITLEMENT_KINDS),
    ]


def _epoch(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def _coupons(records: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """Her coupons as projected, with an issued coupon past its expiry shown expired (the
    worker writes it so on her next projection) and one past its keep period left out."""
    shown = []
    for record in records:
        expires = _epoch(record.get("expires_at"))
        if expires is not None:
            if expires + COUPON_KEEP_SECONDS <= now:
                continue
            if record.get("status") == "issued" and expires <= now:
                record = {**record, "status": "expired"}
        shown.append(record)
    return shown


def _open_offers(offers: dict[str, dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """Her open offers, without one that expired since it was projected."""
    shown = {}
    for trigger_id, offer in offers.items():
        expires = _epoch(offer.get("expires_at"))
        if expires is None or expires > now:
            shown[trigger_id] = offer
    return shown


def customer_view(
    customer_id: str, values: list[bytes | None], now: float
) -> dict[str, Any] | None:
    """The answer of ``GET /customers/{customer_id}`` from the MGET of
    :func:`customer_keys` (same order); None when she has no profile (404).

    ``profile`` is the profile key's JSON as the worker wrote it (with whatever fields it
    gains: ``identifiers`` ...); ``consents`` are the profile's; a key not there (no cart,
    no entitlement, offers or coupons not projected yet) reads as empty.
    """
    raw_profile = values[_PROFILE]
    if raw_profile is None:
        return None
    profile = orjson.loads(raw_profile)
    entitlements = {}
    for kind, raw in zip(ENTITLEMENT_KINDS, values[_FIRST_ENTITLEMENT:], strict=True):
        if raw is not None:
            entitlements[kind] = orjson.loads(raw)
    raw_timeline, raw_cart = values[_TIMELINE], values[_CART]
    raw_offers, raw_coupons = values[_OFFERS], values[_COUPONS]
    return {
        "customer_id": customer_id,
        "profile": profile,
        "consents": profile.get("consents", {}) if isinstance(profile, dict) else {},
        "entitlements": entitlements,
        "timeline": [] if raw_timeline is None else orjson.loads(raw_timeline),
        "cart": None if raw_cart is None else orjson.loads(raw_cart),
        "coupons": [] if raw_coupons is None else _coupons(orjson.loads(raw_coupons), now),
        "open_offers": {} if raw_offers is None else _open_offers(orjson.loads(raw_offers), now),
    }


def identifier_read_key(identifier_type: str, value: str) -> str | None:
    """The key of an identifier's link; None for a type the pipeline does not know (400)."""
    if identifier_type not in IDENTIFIER_TYPES:
        return None
    return identifier_key(identifier_type, value)


def identifier_view(identifier_type: str, value: str, raw: bytes) -> dict[str, Any]:
    """The answer of ``GET /identifiers/{type}/{value}``: the link as the identity step
    wrote it (``customer_id``, ``anonymous``, ``source``, ``linked_at`` ...) with the
    identifier it is of."""
    link = orjson.loads(raw)
    view: dict[str, Any] = {"type": identifier_type, "value": value}
    view.update((k, v) for k, v in link.items() if k not in view)
    return view
