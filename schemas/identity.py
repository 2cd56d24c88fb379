"""Identifiers: how a channel that does not know the customer id names the customer.

An event carries ``identifiers`` (``event`` 1-0-4): values the channel knows the
customer by, each normalised (``msisdn`` in E.164, ``email`` in lower case) or
hashed (``sha256:`` and the 64 lower-case hex digits of the SHA-256 of the
normalised value). An event without ``customer_id`` (schema ``identified_event``)
is keyed by one of them: the first present in :data:`IDENTIFIER_TYPES`, as
``<type>:<value>`` (:func:`identity_key`), e.g. ``msisdn:+447700900123``.
"""

from __future__ import annotations

from collections.abc import Mapping

#: The identifier types, in key priority order: the key of an event without
#: ``customer_id`` is built from the first of these its ``identifiers`` hold.
IDENTIFIER_TYPES: tuple[str, ...] = ("msisdn", "email", "loyalty_id", "card_token", "device_id")


def identity_key(identifiers: Mapping[str, str]) -> str:
    """``"<type>:<value>"`` of the first identifier present in :data:`IDENTIFIER_TYPES`
    order: the Kafka message key of an event without ``customer_id``.

    ``{"device_id": "d-1", "email": "a@example.com"}`` -> ``"email:a@example.com"``.
    ValueError when ``identifiers`` holds none of the identifier types.
    """
    for identifier_type in IDENTIFIER_TYPES:
        if identifier_type in identifiers:
            return f"{identifier_type}:{identifiers[identifier_type]}"
    raise ValueError(
        f"identifiers {sorted(identifiers)} hold none of the identifier types "
        f"({', '.join(IDENTIFIER_TYPES)})"
    )
