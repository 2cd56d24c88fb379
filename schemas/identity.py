"""Identifier types and the message key of identified events (stub until the contract lands)."""

from __future__ import annotations

from collections.abc import Mapping

#: Identifier types, in the priority order that picks an identified event's key.
IDENTIFIER_TYPES: tuple[str, ...] = ("msisdn", "email", "loyalty_id", "card_token", "device_id")


def identity_key(identifiers: Mapping[str, str]) -> str:
    for identifier_type in IDENTIFIER_TYPES:
        value = identifiers.get(identifier_type)
        if value is not None:
            return f"{identifier_type}:{value}"
    raise ValueError("identifiers: none of " + ", ".join(IDENTIFIER_TYPES))
