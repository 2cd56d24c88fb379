"""One-tap actions on marketing triggers (S6, S9): signed, expiring tokens.

Every marketing trigger carries ``actions``: accept, decline and unsubscribe,
each with a token. A token binds the trigger id, the customer, the action kind
and the expiry, signed with HMAC-SHA256 under a key only the worker and the
channel backends' response endpoint know, so a channel cannot forge or reuse a
response for another trigger, customer or action, and a token is worthless
once the trigger expired.

Token format (URL-safe, no padding): ``<expires_at>.<kind>.<signature>``, with
the signature over ``trigger_id|customer_id|kind|expires_at``.

Minting and checking live together here, in the contract package, so the worker
(which mints, ``processors.domain.step``) and a channel backend (which checks,
with only ``omnichannel-contract`` installed) cannot disagree on the format.
"""

from __future__ import annotations

import base64
import hmac
from functools import lru_cache
from hashlib import sha256

ACCEPT = "accept"
DECLINE = "decline"
UNSUBSCRIBE = "unsubscribe"
ACTION_KINDS: tuple[str, ...] = (ACCEPT, DECLINE, UNSUBSCRIBE)


@lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC that has absorbed the key; a copy per token skips the key setup (3 per trigger)."""
    return hmac.new(key, digestmod=sha256)


def _signature(key: bytes, trigger_id: str, customer_id: str, kind: str, expires: int) -> str:
    message = f"{trigger_id}|{customer_id}|{kind}|{expires}".encode()
    mac = _keyed(key).copy()
    mac.update(message)
    digest = mac.digest()[:24]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def action_token(
    key: bytes, trigger_id: str, customer_id: str, kind: str, expires_at: float
) -> str:
    expires = int(expires_at)
    return f"{expires}.{kind}.{_signature(key, trigger_id, customer_id, kind, expires)}"


def actions_for(
    key: bytes, trigger_id: str, customer_id: str, expires_at: float
) -> list[dict[str, str]]:
    """The ``actions`` list of a marketing trigger."""
    return [
        {"kind": kind, "token": action_token(key, trigger_id, customer_id, kind, expires_at)}
        for kind in ACTION_KINDS
    ]


def verify_action_token(
    key: bytes, token: str, trigger_id: str, customer_id: str, now: float
) -> str:
    """The action kind a token grants, or ``ValueError`` saying why it is refused.

    Channel backends call this before they report a tap back
    as ``offer.accepted``, ``offer.declined`` or ``consent.updated``.
    """
    try:
        expires_text, kind, signature = token.split(".")
        expires = int(expires_text)
    except ValueError:
        raise ValueError(
            "malformed action token: expected '<expires>.<kind>.<signature>' as issued "
            "on the trigger; pass the token unchanged"
        ) from None
    expected = _signature(key, trigger_id, customer_id, kind, expires)
    if kind not in ACTION_KINDS or not hmac.compare_digest(signature, expected):
        raise ValueError(
            "action token does not match this trigger and customer (or the signing key "
            "differs): refuse the response; check OMNI_ACTION_TOKEN_KEY on both sides"
        )
    if now >= expires:
        raise ValueError("action token expired with its trigger: tell the customer the offer ended")
    return kind
