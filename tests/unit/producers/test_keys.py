"""Redis keys that cannot collide: ids are percent-encoded segments (producers.keys)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.domain import read_model
from producers import claims, keys
from producers.keys import (
    cart_key,
    coupon_claim_key,
    coupon_key,
    coupons_key,
    entitlement_key,
    key_segment,
    offers_key,
    profile_key,
    segment_value,
    stats_key,
    timeline_key,
)

#: Every kind of key, as a function of one id (entitlements: of the customer and of the kind).
KEY_KINDS: dict[str, Callable[[str], str]] = {
    "profile": profile_key,
    "entitlement/customer": lambda cid: entitlement_key(cid, "overdraft"),
    "entitlement/kind": lambda kind: entitlement_key("c1", kind),
    "cart": cart_key,
    "timeline": timeline_key,
    "coupon": coupon_key,
    "coupon claim": coupon_claim_key,
    "stats": stats_key,
    "offers": offers_key,
    "coupons": coupons_key,
}

# Ids from the whole of Unicode, biased towards the characters that matter here.
IDS = st.text(
    alphabet=st.one_of(st.sampled_from(":%%3Aa\x00\n\x7f\x85é"), st.characters(codec="utf-8")),
    min_size=1,
    max_size=40,
)


def test_ids_without_special_characters_keep_todays_keys() -> None:
    assert profile_key("alice-42") == "omni:profile:alice-42"
    assert entitlement_key("alice-42", "overdraft") == "omni:entitlement:alice-42:overdraft"
    assert cart_key("c 1/é") == "omni:cart:c 1/é"
    assert timeline_key("c1") == "omni:timeline:c1"
    assert coupon_key("TV-2026-XMAS") == "omni:coupon:TV-2026-XMAS"
    assert coupon_claim_key("TV-2026-XMAS") == "omni:coupon:TV-2026-XMAS:claim"
    assert stats_key("roaming_offer") == "omni:stats:roaming_offer"
    assert offers_key("alice-42") == "omni:offers:alice-42"
    assert coupons_key("alice-42") == "omni:coupons:alice-42"
    # A customer's coupon list is not a coupon's record, whatever the ids.
    assert coupons_key("x:y") == "omni:coupons:x%3Ay" != coupon_key("s:x:y")


@pytest.mark.parametrize(
    ("raw", "segment"),
    [
        ("a:b", "a%3Ab"),
        ("50%", "50%25"),
        ("%3A", "%253A"),
        ("x\ny", "x%0Ay"),
        ("nul\x00", "nul%00"),
        ("del\x7f", "del%7F"),
        ("c1\x85", "c1%C2%85"),  # a C1 control character: each of its UTF-8 bytes
        ("café", "café"),  # other non-ASCII characters stay as they are
    ],
)
def test_the_documented_escapes(raw: str, segment: str) -> None:
    assert key_segment(raw) == segment
    assert segment_value(segment) == raw


def test_a_coupon_id_cannot_reach_another_coupons_claim_key() -> None:
    """The issue: coupon ``A:claim``'s record was coupon ``A``'s claim key."""
    assert coupon_key("A:claim") == "omni:coupon:A%3Aclaim" != coupon_claim_key("A")
    # Nor can a customer id reach into another customer's keys.
    assert entitlement_key("x:overdraft", "overdraft") == "omni:entitlement:x%3Aoverdraft:overdraft"
    assert timeline_key("x:y") == "omni:timeline:x%3Ay" != timeline_key("x") + ":y"


def test_the_worker_and_the_channels_build_the_same_keys() -> None:
    """One implementation: the read model and the claims use the contract's functions."""
    assert read_model.coupon_key is keys.coupon_key
    assert read_model.profile_key is keys.profile_key
    assert read_model.entitlement_key is keys.entitlement_key
    assert read_model.offers_key is keys.offers_key
    assert read_model.coupons_key is keys.coupons_key
    assert claims.coupon_claim_key is keys.coupon_claim_key
    assert claims.KEY_PREFIX == keys.KEY_PREFIX == "omni"


@given(IDS)
def test_a_segment_never_holds_the_separator_and_decodes_back(value: str) -> None:
    segment = key_segment(value)
    assert ":" not in segment
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in segment)
    assert segment_value(segment) == value


@given(IDS, IDS)
def test_distinct_ids_never_give_the_same_key(one: str, other: str) -> None:
    if one == other:
        return
    for kind, build in KEY_KINDS.items():
        assert build(one) != build(other), kind


@given(IDS, IDS)
def test_no_key_of_one_kind_is_a_key_of_another_kind(one: str, other: str) -> None:
    kinds = list(KEY_KINDS.items())
    for index, (kind, build) in enumerate(kinds):
        for other_kind, other_build in kinds[index + 1 :]:
            if {kind, other_kind} == {"entitlement/customer", "entitlement/kind"}:
                continue  # the same key kind, two of its ids
            assert build(one) != other_build(other), (kind, other_kind)
