"""The shortcuts of the per-event work give what the plain way gives."""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import orjson
import pytest

from processors.domain import contact as cp
from processors.domain.model import CustomerState, Event, parse_time
from processors.domain.policy import Policy
from processors.domain.read_model import timeline_write
from processors.domain.step import EMPTY_CONTACT, StepContext, step
from processors.domain.views import state_context
from processors.rulebook import load_ruleset
from processors.settings import DEFAULT_RULES_DIR, Settings
from producers.actions import action_key_id, action_token, actions_for, verify_action_token

NOW = parse_time("2026-11-22T12:00:00Z")
RULES = load_ruleset(DEFAULT_RULES_DIR, Settings().rule_delays())
CTX = StepContext(
    Policy(),
    cp.ContactPolicy(quiet_start="00:00", quiet_end="00:00"),
    RULES,
    b"test-key",
    lead_points={"page.viewed": 5.0},
)


def customer() -> CustomerState:
    state = CustomerState.new("c1")
    state.traits = {"home_country": "GB", "preferred_channel": "sms"}
    state.products = ["ld_plan"]
    state.lead = [[NOW - 100, "page.viewed", 5.0], [NOW - 40 * 86400, "page.viewed", 5.0]]
    state.response_channels = {"email": 2}
    state.coupons = {"K1": {"status": "issued"}}
    return state


def test_the_empty_contact_is_what_an_empty_history_stores() -> None:
    assert cp.ContactState().to_dict() == EMPTY_CONTACT
    assert cp.ContactState.from_dict(EMPTY_CONTACT) == cp.ContactState.from_dict({})


@pytest.mark.parametrize("event_type", sorted(RULES.state_fields))
def test_the_state_rules_see_is_the_same_with_only_the_fields_they_read(event_type: str) -> None:
    state, timeline = customer(), [{"event_id": "e0"}]
    whole = state_context(state, timeline, CTX, NOW)
    fields = RULES.state_fields[event_type]
    some = state_context(state, timeline, CTX, NOW, fields)
    for name in whole if fields is None else fields:
        assert some[name] == whole[name]


def test_derived_fields_are_computed_only_when_read() -> None:
    some = state_context(customer(), None, CTX, NOW, frozenset({"traits"}))
    assert not {"lead_score", "lead_interactions", "preferred_channel"} & set(some)
    whole = state_context(customer(), None, CTX, NOW)
    assert whole["lead_score"] == 5.0 and whole["preferred_channel"] == "sms"


def test_a_customer_without_contact_history_keeps_the_empty_one() -> None:
    state, _ = step(None, [Event("e1", "page.viewed", "web", "c1", NOW - 5, {}, NOW)], CTX, NOW)
    assert state.contact == EMPTY_CONTACT
    stored = CustomerState.from_dict(orjson.loads(orjson.dumps(state)))
    again, _ = step(stored, [Event("e2", "page.viewed", "web", "c1", NOW, {}, NOW)], CTX, NOW)
    assert again.contact == EMPTY_CONTACT


def test_contact_history_is_still_pruned() -> None:
    state = CustomerState.new("c1")
    old = NOW - 30 * 86400
    state.contact = {"sent": [[old, "x"], [NOW - 60, "y"]], "responses": {}, "paused_until": {}}
    state, _ = step(state, [Event("e1", "page.viewed", "web", "c1", NOW, {}, NOW)], CTX, NOW)
    assert state.contact == {"sent": [[NOW - 60, "y"]], "responses": {}, "paused_until": {}}


def test_from_dict_of_a_stored_record_equals_the_constructor() -> None:
    data = orjson.loads(orjson.dumps(customer()))
    fast = CustomerState.from_dict(data)
    assert fast == CustomerState(**data)
    assert type(fast) is CustomerState
    assert fast.traits is data["traits"]  # no copies, as before


def test_from_dict_of_an_older_or_wrong_record_is_as_before() -> None:
    assert CustomerState.from_dict({"customer_id": "c1"}) == CustomerState.new("c1")
    with pytest.raises(TypeError):
        CustomerState.from_dict({"customer_id": "c1", "unknown": 1})

    @dataclass(slots=True)
    class Wider(CustomerState):
        extra: int = 0

    data = orjson.loads(orjson.dumps(CustomerState.new("c1")))
    assert type(Wider.from_dict(data)) is Wider


def test_timeline_write_takes_the_encoded_timeline() -> None:
    timeline: list[dict[str, Any]] = [{"at": "2026-01-01T00:00:00.000Z", "event_id": "e1"}]
    assert timeline_write("c1", timeline, orjson.dumps(timeline)) == timeline_write("c1", timeline)


@pytest.mark.parametrize("key", [b"x" * 32, b"y" * 100])
def test_action_tokens_are_the_hmac_of_before(key: bytes) -> None:
    key_id = action_key_id(key)
    message = f"{key_id}|t1|c1|accept|1790000000".encode()
    digest = hmac.new(key, message, sha256).digest()[:24]
    signature = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert action_token(key, "t1", "c1", "accept", 1790000000.5) == (
        f"{key_id}.1790000000.accept.{signature}"
    )
    for action in actions_for(key, "t1", "c1", 1790000000.0):
        assert verify_action_token(key, action["token"], "t1", "c1", 0.0) == action["kind"]
