"""Redis read-model keys: the one place their scheme is written (README "Redis keys").

Part of the contract package because channels build these keys themselves (a till
claims ``omni:coupon:<id>:claim``, an ATM reads ``omni:entitlement:<id>:overdraft``,
a call center reads ``omni:profile:<id>``); the worker's read model
(``processors.domain.read_model``) builds its keys with the same functions.

Every id in a key is one *segment*: ``%``, ``:`` and control characters (U+0000 to
U+001F, U+007F to U+009F) are percent-encoded, each as ``%`` and the two upper-case
hex digits of each of its UTF-8 bytes (``a:b`` -> ``a%3Ab``, ``50%`` -> ``50%25``,
``x<newline>y`` -> ``x%0Ay``). Every other character stays as it is, so an id without
those characters keeps exactly the key it always had. An encoded segment never holds
``:``, so a key's segments are exactly its ``:``-separated parts: no id reaches
another record's key (``omni:coupon:A:claim`` is the claim of coupon ``A``; a coupon
with id ``A:claim`` is ``omni:coupon:A%3Aclaim``), and because ``%`` itself is
encoded, two different ids never encode the same.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

#: Every Redis read-model key starts with this.
KEY_PREFIX = "omni"

# '%' (the escape itself), ':' (the separator) and C0/DEL/C1 control characters.
_SPECIAL = re.compile(r"[%:\x00-\x1f\x7f-\x9f]")


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode())


def key_segment(value: str) -> str:
    """``value`` as one segment of a key: ``%``, ``:`` and control characters escaped."""
    return _SPECIAL.sub(_percent, value)


def segment_value(segment: str) -> str:
    """The id a key segment encodes (the inverse of :func:`key_segment`)."""
    return unquote(segment)


def _key(kind: str, *ids: str) -> str:
    return ":".join((KEY_PREFIX, kind, *(key_segment(part) for part in ids)))


def profile_key(customer_id: str) -> str:
    """``omni:profile:<customer_id>``: traits, products, consents, last seen (JSON)."""
    return _key("profile", customer_id)


def entitlement_key(customer_id: str, kind: str) -> str:
    """``omni:entitlement:<customer_id>:<kind>``, e.g. ``...:overdraft`` (JSON, with a TTL)."""
    return _key("entitlement", customer_id, kind)


def cart_key(customer_id: str) -> str:
    """``omni:cart:<customer_id>``: the current cart (JSON)."""
    return _key("cart", customer_id)


def timeline_key(customer_id: str) -> str:
    """``omni:timeline:<customer_id>``: the recent interactions, newest first (JSON)."""
    return _key("timeline", customer_id)


def offers_key(customer_id: str) -> str:
    """``omni:offers:<customer_id>``: the customer's open marketing offers, trigger_id ->
    ``{offer_type, rule, channel, expires_at}`` (JSON; ``{}`` when she has none)."""
    return _key("offers", customer_id)


def coupons_key(customer_id: str) -> str:
    """``omni:coupons:<customer_id>``: the records of the customer's coupons, as in each
    ``omni:coupon:<coupon_id>`` (JSON list, issue order; ``[]`` when she has none)."""
    return _key("coupons", customer_id)


def coupon_key(coupon_id: str) -> str:
    """``omni:coupon:<coupon_id>``: the coupon's record (JSON)."""
    return _key("coupon", coupon_id)


def coupon_claim_key(coupon_id: str) -> str:
    """``omni:coupon:<coupon_id>:claim``: channels claim a coupon here (SET NX); never projected."""
    return f"{coupon_key(coupon_id)}:claim"


def stats_key(rule: str) -> str:
    """``omni:stats:<rule>``: a hash, one field per channel and partition."""
    return _key("stats", rule)


def identifier_key(identifier_type: str, value: str) -> str:
    """``omni:identifier:<type>:<value>``: the customer an identifier resolves to (JSON
    ``{"customer_id", "anonymous", "source", "linked_at"}``), written by the identity step."""
    return _key("identifier", identifier_type, value)
