"""identity_key: the message key of an event without customer_id."""

from __future__ import annotations

import pytest

from schemas import IDENTIFIER_TYPES, identity_key


def test_the_priority_order() -> None:
    assert IDENTIFIER_TYPES == ("msisdn", "email", "loyalty_id", "card_token", "device_id")


def test_the_key_is_type_colon_value() -> None:
    assert identity_key({"msisdn": "+447700900123"}) == "msisdn:+447700900123"
    assert identity_key({"device_id": "web:3f2a"}) == "device_id:web:3f2a"


@pytest.mark.parametrize("index", range(len(IDENTIFIER_TYPES)))
def test_the_first_type_present_in_priority_order_wins(index: int) -> None:
    # Every type from `index` on, inserted lowest priority first: order of the mapping
    # does not matter, only IDENTIFIER_TYPES does.
    present = IDENTIFIER_TYPES[index:]
    identifiers = {name: f"v-{name}" for name in reversed(present)}
    winner = IDENTIFIER_TYPES[index]
    assert identity_key(identifiers) == f"{winner}:v-{winner}"


def test_hashed_values_are_kept_as_they_are() -> None:
    hashed = "sha256:" + "ab" * 32
    assert identity_key({"email": hashed, "device_id": "d"}) == f"email:{hashed}"


@pytest.mark.parametrize("identifiers", [{}, {"twitter": "@x"}])
def test_no_known_identifier_is_a_value_error(identifiers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="msisdn, email, loyalty_id, card_token, device_id"):
        identity_key(identifiers)
