"""Who may call the Customer 360 API: bearer tokens known by their SHA-256, and scopes.

``OMNI_API_TOKENS`` is a JSON object, one entry per caller (a system, not a person)::

    {"callcenter": {"sha256": "<64 hex digits>", "scopes": ["customers:read", "identifiers:read"]},
     "atm-backend": {"sha256": "<64 hex digits>", "scopes": ["identifiers:read"]}}

``sha256`` is the hex SHA-256 of the caller's token (``printf %s "$TOKEN" | sha256sum``):
the setting never holds a token, so reading it (or a leaked copy) does not let anyone
call the API. A request presents ``Authorization: Bearer <token>``; the SHA-256 of
the token is compared with *every* caller's hash in constant time
(:func:`hmac.compare_digest`, no early exit on a match), so the time taken tells
nothing about which hash (or how much of one) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

__all__ = [
    "CUSTOMERS_READ",
    "IDENTIFIERS_READ",
    "SCOPES",
    "ApiTokensError",
    "AuthError",
    "Authenticator",
    "Caller",
    "parse_api_tokens",
    "require_scope",
    "token_sha256",
]

CUSTOMERS_READ = "customers:read"
IDENTIFIERS_READ = "identifiers:read"
#: Every scope a caller may hold (the routes' needs, processors.api.app).
SCOPES: tuple[str, ...] = (CUSTOMERS_READ, IDENTIFIERS_READ)

#: What to set, in every message about a missing or malformed OMNI_API_TOKENS.
TOKENS_FORMAT = (
    'OMNI_API_TOKENS=\'{"<caller>": {"sha256": "<hex SHA-256 of its token>", "scopes": '
    '["customers:read", "identifiers:read"]}}\' (hash a token with '
    '`printf %s "$TOKEN" | sha256sum`; README "Customer 360 API")'
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# RFC 6750 b64token: what a bearer token may be made of.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class ApiTokensError(ValueError):
    """OMNI_API_TOKENS is unset, empty or malformed; the message says what to set.

    It never quotes the setting's value."""


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    #: SHA-256 of the caller's token (32 bytes, not hex).
    digest: bytes
    scopes: frozenset[str]


def token_sha256(token: str) -> bytes:
    """The SHA-256 of a token's UTF-8 bytes (what OMNI_API_TOKENS holds, in hex)."""
    return hashlib.sha256(token.encode()).digest()


def parse_api_tokens(text: str | None) -> tuple[Caller, ...]:
    """The callers OMNI_API_TOKENS declares; ApiTokensError saying what is wrong otherwise.

    Unset or empty is an error too: the API never runs open.
    """
    if text is None or not text.strip():
        raise ApiTokensError(
            "OMNI_API_TOKENS is not set: the API does not run without callers (it is never "
            f"open). Set {TOKENS_FORMAT}"
        )
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ApiTokensError(f"OMNI_API_TOKENS is not JSON: set {TOKENS_FORMAT}") from None
    if not isinstance(data, dict) or not data:
        raise ApiTokensError(
            f"OMNI_API_TOKENS is not a JSON object of callers: set {TOKENS_FORMAT}"
        )
    callers: list[Caller] = []
    for name, entry in data.items():
        if not _CALLER_NAME.fullmatch(name):
            raise ApiTokensError(
                f"OMNI_API_TOKENS: caller name {name[:64]!r} must be 1-64 letters, digits, "
                "'.', '_' or '-' (it is written in the access log)"
            )
        if not isinstance(entry, dict) or set(entry) != {"sha256", "scopes"}:
            raise ApiTokensError(
                f"OMNI_API_TOKENS: caller {name!r} must be an object with exactly "
                f'"sha256" and "scopes": set {TOKENS_FORMAT}'
            )
        digest = entry["sha256"]
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
            raise ApiTokensError(
                f"OMNI_API_TOKENS: caller {name!r}: sha256 must be 64 hex digits, the SHA-256 "
                'of its token (`printf %s "$TOKEN" | sha256sum`), not the token itself'
            )
        scopes = entry["scopes"]
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(s, str) and s in SCOPES for s in scopes)
        ):
            raise ApiTokensError(
                f"OMNI_API_TOKENS: caller {name!r}: scopes must be a non-empty list of "
                f"{', '.join(SCOPES)}"
            )
        callers.append(Caller(name, bytes.fromhex(digest), frozenset(scopes)))
    digests = [caller.digest for caller in callers]
    if len(set(digests)) != len(digests):
        raise ApiTokensError(
            "OMNI_API_TOKENS: two callers have the same token hash: give each caller its own "
            "token, so the access log can tell them apart"
        )
    return tuple(callers)


class AuthError(Exception):
    """A request refused: 401 (no or unknown token) or 403 (outside the caller's scopes).

    ``code``: the RFC 6750 error (invalid_request, invalid_token, insufficient_scope; ""
    when no credentials came); ``scope``: the scope the route needs (403).
    """

    def __init__(self, status: int, code: str, message: str, scope: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.scope = status, code, message, scope

    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` header of the response (RFC 6750)."""
        parts = ['Bearer realm="omni-api"']
        if self.code:
            parts.append(f'error="{self.code}"')
        if self.scope:
            parts.append(f'scope="{self.scope}"')
        return ", ".join(parts)


class Authenticator:
    """Tells a request's caller from its ``Authorization`` header."""

    def __init__(self, callers: Iterable[Caller]) -> None:
        self._callers = tuple(callers)
        if not self._callers:
            raise ApiTokensError(f"no API callers: set {TOKENS_FORMAT}")

    def authenticate(self, header: str | None) -> Caller:
        """The caller whose token the header presents; AuthError (401) otherwise."""
        if header is None or not header.strip():
            raise AuthError(
                401,
                "",
                "no credentials: send the header 'Authorization: Bearer <token>' with the "
                "token you were given for this API",
            )
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not _B64TOKEN.fullmatch(token):
            raise AuthError(
                401,
                "invalid_request",
                "malformed Authorization header: use exactly 'Authorization: Bearer <token>' "
                "(one token, no quotes)",
            )
        presented = token_sha256(token)
        found: Caller | None = None
        for caller in self._callers:  # every hash, whatever matched before
            if hmac.compare_digest(presented, caller.digest):
                found = caller
        if found is None:
            raise AuthError(
                401,
                "invalid_token",
                "unknown token: check the token (it may have been rotated) or ask the API's "
                "operator for one",
            )
        return found

    def authorize(self, header: str | None, scope: str) -> Caller:
        """The caller, if it holds ``scope``: AuthError 401 or 403 otherwise."""
        caller = self.authenticate(header)
        require_scope(caller, scope)
        return caller


def require_scope(caller: Caller, scope: str) -> None:
    """AuthError 403 when ``caller`` lacks ``scope``."""
    if scope not in caller.scopes:
        raise AuthError(
            403,
            "insufficient_scope",
            f"caller {caller.name!r} lacks the scope {scope!r} this route needs: ask the "
            f"API's operator to add it to {caller.name!r} in OMNI_API_TOKENS",
            scope=scope,
        )
