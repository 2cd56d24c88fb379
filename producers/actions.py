"""One-tap actions on marketing triggers (S6, S9): signed, expiring tokens.

Every marketing trigger carries ``actions``: accept, decline and unsubscribe,
each with a token. A token binds the trigger id, the customer, the action kind
and the expiry, signed with HMAC-SHA256 under a key only the worker and the
channel backends' response endpoint know, so a channel cannot forge or reuse a
response for another trigger, customer or action, and a token is worthless
once the trigger expired.

Token format (URL-safe, no padding): ``<key_id>.<expires_at>.<kind>.<signature>``,
with the signature over ``key_id|trigger_id|customer_id|kind|expires_at``. The key
id is derived from the key (:func:`action_key_id`), so rotating the key needs no
second setting: the worker signs with ``OMNI_ACTION_TOKEN_KEY`` and a verifier
holding the current and the previous keys (``OMNI_ACTION_TOKEN_PREVIOUS_KEYS``)
picks the one the token names. Tokens issued before key ids existed
(``<expires_at>.<kind>.<signature>``) are still checked against every key until
they expire with their triggers.

Keys are checked wherever they are used (:class:`ActionTokenKeys`): unset, one of
the :data:`PUBLIC_EXAMPLE_KEYS` anyone can read, or shorter than
:data:`MIN_KEY_BYTES` is refused with :class:`WeakActionTokenKeyError`, so neither
the worker nor a verifier runs with a key an attacker could know.

Minting and checking live together here, in the contract package, so the worker
(which mints, ``processors.domain.step``) and a channel backend (which checks,
with only ``omnichannel-contract`` installed) cannot disagree on the format.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from hashlib import sha256

ACCEPT = "accept"
DECLINE = "decline"
UNSUBSCRIBE = "unsubscribe"
ACTION_KINDS: tuple[str, ...] = (ACCEPT, DECLINE, UNSUBSCRIBE)

#: The environment variables of the keys (the worker's settings use the same names).
KEY_ENV = "OMNI_ACTION_TOKEN_KEY"
PREVIOUS_KEYS_ENV = "OMNI_ACTION_TOKEN_PREVIOUS_KEYS"

#: 32 bytes: HMAC-SHA256's own strength; anything shorter is guessable sooner.
MIN_KEY_BYTES = 32

#: Keys anyone can read (the old built-in default, placeholders in docs and examples):
#: refused whatever their length. Add every example key a document shows here.
PUBLIC_EXAMPLE_KEYS: frozenset[str] = frozenset(
    {
        "dev-only-action-token-key-change-me",
        "change-me",
        "changeme",
        "secret",
        "replace-with-a-random-key-of-at-least-32-bytes",
        "<a random key of at least 32 bytes>",
    }
)

#: How to make a key, quoted by every refusal.
GENERATE_KEY_HINT = (
    "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'` "
    "(or `openssl rand -base64 32`)"
)

#: A well-formed token: ASCII only, so nothing below meets a character it cannot handle.
#: ``expires`` has at most 12 digits (year 33658), the signature is base64url.
_TOKEN = re.compile(
    r"(?:(?P<key_id>[A-Za-z0-9_-]{1,64})\.)?(?P<expires>[0-9]{1,12})\."
    r"(?P<kind>[a-z]{1,32})\.(?P<signature>[A-Za-z0-9_-]{1,128})",
    re.ASCII,
)


class WeakActionTokenKeyError(ValueError):
    """An action-token key is unset, public or too short; the message says which and
    how to make a good one."""


def new_action_token_key() -> str:
    """A fresh random key (32 random bytes, base64url: 43 characters)."""
    import secrets

    return secrets.token_urlsafe(32)


def check_action_token_key(key: bytes | str | None, setting: str = KEY_ENV) -> bytes:
    """``key`` as bytes, or :class:`WeakActionTokenKeyError` saying what is wrong with it."""
    if key is None or not key:
        raise WeakActionTokenKeyError(
            f"{setting} is not set: one-tap action tokens cannot be signed or checked "
            f"without a secret key. Set {setting} to a random secret of at least "
            f"{MIN_KEY_BYTES} bytes shared by the worker and the channel backends; "
            f"{GENERATE_KEY_HINT}."
        )
    raw = key.encode() if isinstance(key, str) else key
    if raw.strip().decode(errors="replace") in PUBLIC_EXAMPLE_KEYS:
        raise WeakActionTokenKeyError(
            f"{setting} is a published example key (from the docs or an old default): "
            f"anyone could forge action tokens with it. Set {setting} to a random secret "
            f"of at least {MIN_KEY_BYTES} bytes; {GENERATE_KEY_HINT}."
        )
    if len(raw) < MIN_KEY_BYTES:
        raise WeakActionTokenKeyError(
            f"{setting} is {len(raw)} bytes long; an action-token key needs at least "
            f"{MIN_KEY_BYTES} random bytes. Set a longer one; {GENERATE_KEY_HINT}."
        )
    return raw


def split_keys(text: str | None) -> list[str]:
    """The keys of a comma-separated list (``OMNI_ACTION_TOKEN_PREVIOUS_KEYS``)."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


@dataclass(frozen=True)
class ActionTokenKeys:
    """The signing key and the keys still accepted (rotation): every one checked."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        check_action_token_key(self.current, KEY_ENV)
        for key in self.previous:
            check_action_token_key(key, f"a key in {PREVIOUS_KEYS_ENV}")

    @classmethod
    def from_text(cls, current: str | None, previous: str | None = None) -> ActionTokenKeys:
        """From the settings' text: the key and the comma-separated previous keys."""
        return cls(
            check_action_token_key(current, KEY_ENV),
            tuple(key.encode() for key in split_keys(previous)),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ActionTokenKeys:
        """``OMNI_ACTION_TOKEN_KEY`` and ``OMNI_ACTION_TOKEN_PREVIOUS_KEYS``, as the worker
        reads them; a channel backend calls this once at start-up, so a missing or weak key
        stops it there rather than at the first tap."""
        env = os.environ if environ is None else environ
        return cls.from_text(env.get(KEY_ENV), env.get(PREVIOUS_KEYS_ENV))

    @property
    def all(self) -> tuple[bytes, ...]:
        return (self.current, *self.previous)

    def __repr__(self) -> str:  # never the keys themselves
        ids = ", ".join(action_key_id(key) for key in self.previous)
        return f"ActionTokenKeys(current={action_key_id(self.current)}, previous=[{ids}])"


@lru_cache(maxsize=16)
def action_key_id(key: bytes) -> str:
    """The id a token names its key by: 8 base64url characters of a hash of the key.

    48 bits of a SHA-256 of a secret of at least 256 bits tell nothing about it, and
    two keys of one rotation collide once in 2**48.
    """
    digest = sha256(b"omni action token key id\x00" + key).digest()
    return base64.urlsafe_b64encode(digest)[:8].decode()


@lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC that has absorbed the key; a copy per token skips the key setup (3 per trigger)."""
    return hmac.new(key, digestmod=sha256)


def _signature(key: bytes, message: str) -> str:
    mac = _keyed(key).copy()
    # surrogatepass: a verifier may be handed any text; a lone surrogate must not raise.
    mac.update(message.encode("utf-8", "surrogatepass"))
    return base64.urlsafe_b64encode(mac.digest()[:24]).rstrip(b"=").decode()


def _message(key_id: str | None, trigger_id: str, customer_id: str, kind: str, expires: int) -> str:
    unsigned = f"{trigger_id}|{customer_id}|{kind}|{expires}"
    # Tokens without a key id (before rotation) were signed over the fields alone.
    return unsigned if key_id is None else f"{key_id}|{unsigned}"


def action_token(
    key: bytes, trigger_id: str, customer_id: str, kind: str, expires_at: float
) -> str:
    """The token granting ``kind`` on this trigger to this customer until ``expires_at``."""
    expires = int(expires_at)
    key_id = action_key_id(key)
    signature = _signature(key, _message(key_id, trigger_id, customer_id, kind, expires))
    return f"{key_id}.{expires}.{kind}.{signature}"


def actions_for(
    key: bytes, trigger_id: str, customer_id: str, expires_at: float
) -> list[dict[str, str]]:
    """The ``actions`` list of a marketing trigger."""
    return [
        {"kind": kind, "token": action_token(key, trigger_id, customer_id, kind, expires_at)}
        for kind in ACTION_KINDS
    ]


def _verifying_keys(keys: ActionTokenKeys | bytes | Iterable[bytes]) -> tuple[bytes, ...]:
    if isinstance(keys, ActionTokenKeys):
        return keys.all
    candidates = (keys,) if isinstance(keys, bytes | bytearray) else tuple(keys)
    if not candidates:
        check_action_token_key(None)
    return tuple(check_action_token_key(bytes(key)) for key in candidates)


def verify_action_token(
    keys: ActionTokenKeys | bytes | Iterable[bytes],
    token: str | bytes,
    trigger_id: str,
    customer_id: str,
    now: float,
) -> str:
    """The action kind a token grants, or ``ValueError`` saying why it is refused.

    ``keys``: :meth:`ActionTokenKeys.from_env` (the current and previous keys), or one
    key, or several. Channel backends call this before they report a tap back as
    ``offer.accepted``, ``offer.declined`` or ``consent.updated``. Whatever ``token``
    holds (any text, any bytes), the only error is ``ValueError`` (a weak key raises
    its subclass :class:`WeakActionTokenKeyError`).
    """
    candidates = _verifying_keys(keys)
    if isinstance(token, bytes | bytearray):
        token = bytes(token).decode("ascii", errors="replace")
    matched = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if matched is None:
        raise ValueError(
            "malformed action token: expected '<key id>.<expires>.<kind>.<signature>' as "
            "issued on the trigger; pass the token unchanged"
        )
    key_id, kind, signature = matched["key_id"], matched["kind"], matched["signature"]
    expires = int(matched["expires"])
    if key_id is None:
        signers = candidates
    else:
        signers = tuple(key for key in candidates if action_key_id(key) == key_id)
        if not signers:
            raise ValueError(
                f"action token was signed with key id {key_id}, which is neither "
                f"{KEY_ENV} nor one of {PREVIOUS_KEYS_ENV} here: refuse the response; "
                "give this verifier the worker's current and previous keys"
            )
    message = _message(key_id, trigger_id, customer_id, kind, expires)
    # Every candidate is tried (no early exit), so timing does not tell which one failed.
    valid = [hmac.compare_digest(signature, _signature(key, message)) for key in signers]
    if kind not in ACTION_KINDS or not any(valid):
        raise ValueError(
            "action token does not match this trigger and customer (or the signing key "
            f"differs): refuse the response; check {KEY_ENV} on both sides"
        )
    if not now < expires:
        raise ValueError("action token expired with its trigger: tell the customer the offer ended")
    return kind
