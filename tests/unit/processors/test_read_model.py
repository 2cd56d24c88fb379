"""The read model's key scheme: what the worker writes and ``omni redis rebuild`` rewrites."""

from __future__ import annotations

import orjson

from processors.domain.model import CustomerState, format_time
from processors.domain.read_model import (
    COUPON_KEEP_SECONDS,
    ReadModelWrite,
    coupon_key,
    coupons_key,
    offers_key,
    project,
    stats_table_key,
    stats_write,
)


def test_a_stats_record_is_a_field_per_channel_and_partition_of_its_rules_hash() -> None:
    key = stats_table_key("roaming_offer", "sms")
    assert key == b"roaming_offer|sms"  # the stats table's (changelogged) key
    assert stats_write(key, b'{"emitted":2.0}', 5) == ReadModelWrite(
        "omni:stats:roaming_offer", b'{"emitted":2.0}', field="sms|p5"
    )


def test_a_rule_id_with_a_bar_keeps_its_bar() -> None:
    write = stats_write(stats_table_key("a|b", "web"), b"{}", 0)
    assert (write.key, write.field) == ("omni:stats:a|b", "web|p0")


# --- omni:offers:<id> and omni:coupons:<id> (the Customer 360 API reads them) -------------

NOW = 1_780_000_000.0


def _state_with_offers_and_coupons() -> CustomerState:
    state = CustomerState.new("c:1")
    state.offers = {
        "t-open": {
            "offer_type": "roaming_pack",
            "rule": "roaming_offer",
            "channel": "sms",
            "expires_at": NOW + 3600,
            "value": 5.0,
        },
        "t-no-expiry": {"offer_type": "x", "rule": "r", "channel": "email", "expires_at": None},
        "t-expired": {"offer_type": "x", "rule": "r", "channel": "sms", "expires_at": NOW - 1},
        "t-held-out": {
            "offer_type": "x",
            "rule": "r",
            "channel": "sms",
            "expires_at": NOW + 60,
            "control": True,
        },
    }
    coupon = {
        "value": 5,
        "currency": "EUR",
        "status": "issued",
        "issued_channel": "tv",
        "redeemed_at": None,
        "redeemed_channel": None,
    }
    state.coupons = {
        "K-2": {**coupon, "expires_at": NOW + 86400},
        "K-1": {**coupon, "expires_at": NOW - 60},  # expired, within its keep period
        "K-gone": {**coupon, "expires_at": NOW - COUPON_KEEP_SECONDS - 1},
    }
    return state


def test_open_offers_are_the_sent_unanswered_unexpired_ones_with_rfc3339_expiry() -> None:
    writes = {w.key: w for w in project(_state_with_offers_and_coupons(), NOW)}
    offers = writes["omni:offers:c%3A1"]
    assert offers.expire_at is None and offers.value is not None
    assert orjson.loads(offers.value) == {
        "t-open": {
            "offer_type": "roaming_pack",
            "rule": "roaming_offer",
            "channel": "sms",
            "expires_at": format_time(NOW + 3600),
        },
        "t-no-expiry": {"offer_type": "x", "rule": "r", "channel": "email", "expires_at": None},
    }
    assert format_time(NOW + 3600).endswith("Z")


def test_the_coupon_list_holds_the_same_records_as_the_coupon_keys_in_issue_order() -> None:
    writes = {w.key: w for w in project(_state_with_offers_and_coupons(), NOW)}
    listed = orjson.loads(writes["omni:coupons:c%3A1"].value or b"")
    assert [c["coupon_id"] for c in listed] == ["K-2", "K-1"]  # K-gone: past its keep period
    for record in listed:
        assert orjson.loads(writes[coupon_key(record["coupon_id"])].value or b"") == record
    assert [c["status"] for c in listed] == ["issued", "expired"]


def test_both_are_written_even_when_empty_so_a_closed_offer_disappears() -> None:
    state = _state_with_offers_and_coupons()
    state.offers.clear()
    state.coupons.clear()
    writes = {w.key: w.value for w in project(state, NOW)}
    assert writes[offers_key("c:1")] == b"{}" and writes[coupons_key("c:1")] == b"[]"
