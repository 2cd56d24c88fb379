"""Rule contexts hold only what expressions read, yet rules decide exactly as with everything.

``RuleSet.evaluate`` converts only the fields the expressions read, evaluates the
``when`` conditions before anything else is converted, and remembers their outcome
by the values read. The reference here is the plain way: one context with the whole
event, state, ``now`` and ``delays``, every expression of every rule evaluated in it.
"""

from __future__ import annotations

import math
from typing import Any

import cel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.rulebook import Evaluation, Expression, RuleSet
from processors.rulebook.evaluation import Memo, holds, match_rule
from processors.rulebook.functions import FUNCTIONS
from processors.rulebook.paths import reads


def reference(
    rules: RuleSet, event: dict[str, Any], state: dict[str, Any], now: float
) -> Evaluation:
    result = Evaluation()
    context = cel.Context(
        variables={"event": event, "state": state, "now": now, "delays": dict(rules.delays)},
        functions=FUNCTIONS,
    )
    for rule in rules.by_type.get(event["type"], ()):
        try:
            if not holds(rule, context):
                continue
            match = match_rule(rule, context, event)
        except Exception as exc:
            result.errors.append((rule.id, f"{type(exc).__name__}: {exc}"))
            continue
        result.matches.append(match)
    return result


def reads_of(text: str) -> dict[str, Any]:
    return reads([Expression(text, cel.compile(text))])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", {}),
        ("event.payload.country", {"event": {"payload": {"country": None}}}),
        ("has(state.traits.x) && state.traits.x", {"state": {"traits": {"x": None}}}),
        ("state.traits.x == state.traits", {"state": {"traits": None}}),
        ("size(state.traits) > 0", {"state": {"traits": None}}),
        ("state.traits.size() > 0", {"state": {"traits": None}}),
        ("state.traits.size () > 0", {"state": {"traits": None}}),
        # A comment could hide a call: the value before the name is read whole.
        ("state.traits // a comment\n.size() > 0", {"state": None}),
        ('"x" in state.products', {"state": {"products": None}}),
        (
            "state.coupons[event.payload.id].status",
            {"state": {"coupons": None}, "event": {"payload": {"id": None}}},
        ),
        ("state.airport.exists(w, w.at > now)", {"state": {"airport": None}, "now": None}),
        ("state . traits", {"state": None}),
        ("state.traits .x", {"state": {"traits": None}}),
        ("size(state) > 0", {"state": None}),
        ("delays.cart + timer.due_at", {"delays": {"cart": None}, "timer": {"due_at": None}}),
        # A variable's name in a string literal only reads more, never less.
        ('"state" == "x"', {"state": None}),
    ],
)
def test_what_an_expression_reads(text: str, expected: dict[str, Any]) -> None:
    assert reads_of(text) == expected


WHEN = [
    "true",
    "false",
    'event.payload.country == "FR"',
    "has(event.payload.country)",
    "has(state.traits.home) && event.payload.country != state.traits.home",
    "size(state.traits) > 1",
    '"vip" in state.traits',
    "state.traits.size() >= 1",
    "state.traits.size () >= 2",
    'state . traits . home == "GB"',
    'state.traits.\n  home == "GB"',
    "state.products.exists(p, p == event.payload.country)",
    '"x" in state.products',
    'state.coupons[event.payload.coupon].status == "redeemed"',
    "event.payload.amount + 1 > 2",
    "event.points > 0.0",
    "now - event.occurred_at < delays.window",
    "state.lead.exists(event, event > 1.0)",
    'state.traits == {"home": "GB"}',
    "event.payload.items.size() > 0",
    "state.traits.children > 0",
    "state.nested.a.b == 1",
    "has(state.nested.a) && has(state.nested.a.b)",
    "state.nested.a.size() == 1",
    "size(event.payload) == 1",
    "event.payload.country",
    "epoch(event.payload.at) > 0.0",
    'event.type == "x.t" && "state.traits" != ""',
    "1.0 / event.payload.amount > 0.0",
]
REST = [
    '"r " + event.customer_id',
    "string(size(state.traits))",
    "state.traits",
    "event.payload",
    'has(state.traits.home) ? state.traits.home : "none"',
    "state.nested",
    "state.nested.a",
    "delays",
    "now",
    'event.payload.country + "!"',
    "epoch(event.payload.at)",
    "event.payload.amount",
]
#: ``reason`` is ``str()`` of its value: no maps (CEL gives their keys in no set order).
REASONS = [
    text
    for text in REST
    if text not in ("state.traits", "event.payload", "state.nested", "state.nested.a", "delays")
]
ELIGIBILITY = [None, "true", '!("x" in state.products)', "state.traits.children == 0", "1"]

texts = st.text(alphabet="abcFRGB", max_size=3)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(["FR", "GB", "x", "2026-01-20T10:30:00+01:00"]),
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "country": st.sampled_from(["FR", "GB", "ES", 7]),
        "amount": st.one_of(st.integers(-2, 5), st.floats(allow_nan=True), st.just("2")),
        "coupon": st.sampled_from(["K1", "K2"]),
        "items": st.lists(scalars, max_size=2),
        "at": st.sampled_from(["2026-01-20T10:30:00+01:00", "2026-01-20", "nope"]),
    },
)
states: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "traits": st.dictionaries(
            st.sampled_from(["home", "vip", "children"]), scalars, max_size=3
        ),
        "products": st.lists(st.sampled_from(["x", "FR", "y"]), max_size=3),
        "coupons": st.dictionaries(
            st.sampled_from(["K1", "K2"]),
            st.fixed_dictionaries({"status": st.sampled_from(["redeemed", "issued"])}),
        ),
        "lead": st.lists(st.floats(0, 3), max_size=3),
    },
    optional={
        "nested": st.one_of(
            st.just({"a": {"b": 1}}), st.just({"a": {}}), st.just({"a": 5}), st.just({})
        ),
        "timeline": st.lists(texts, max_size=2),
    },
)
events = st.builds(
    lambda payload, points, occurred: {
        "event_id": "e1",
        "type": "x.t",
        "channel": "web",
        "customer_id": "c1",
        "occurred_at": occurred,
        "payload": payload,
        "points": points,
    },
    payloads,
    st.sampled_from([0.0, 5.0, -0.0]),
    st.sampled_from([1000.0, 5000.0]),
)
rules = st.lists(
    st.builds(
        lambda when, eligibility, reason, payload: (when, eligibility, reason, payload),
        st.sampled_from(WHEN),
        st.sampled_from(ELIGIBILITY),
        st.sampled_from(REASONS),
        st.lists(st.sampled_from(REST), max_size=2),
    ),
    min_size=1,
    max_size=3,
)


def ruleset(specs: list[tuple[str, str | None, str, list[str]]]) -> RuleSet:
    documents = []
    for index, (when, eligibility, reason, payload) in enumerate(specs):
        rule: dict[str, Any] = {
            "id": f"r{index}",
            "on": ["x.t"],
            "transition": "t",
            "when": when,
            "trigger": {
                "type": "x",
                "channel": "sms",
                "class": "service",
                "reason": reason,
                "payload": {f"p{i}": text for i, text in enumerate(payload)},
            },
        }
        if eligibility is not None:
            rule["eligibility"] = eligibility
        documents.append(rule)
    return RuleSet.from_documents([("test.yaml", {"rules": documents})], {"window": 600.0})


def comparable(value: Any) -> Any:
    """NaN equals NaN here (CEL maps come back in no set order, so no repr)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [comparable(item) for item in value]
    return value


def same(one: Evaluation, other: Evaluation) -> bool:
    def fields(evaluation: Evaluation) -> list[Any]:
        return [
            {name: comparable(getattr(match, name)) for name in match.__slots__}
            for match in evaluation.matches
        ]

    return one.errors == other.errors and fields(one) == fields(other)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules,
    st.lists(st.tuples(events, states), min_size=1, max_size=6),
    st.sampled_from([0.0, 2000.0]),
)
def test_rules_decide_as_with_the_whole_context(
    specs: list[tuple[str, str | None, str, list[str]]],
    inputs: list[tuple[dict[str, Any], dict[str, Any]]],
    now: float,
) -> None:
    rules = ruleset(specs)
    for _ in range(2):  # the second time the ``when`` outcomes are remembered
        for event, state in inputs:
            assert same(rules.evaluate(event, state, now), reference(rules, event, state, now))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        [
            'event.type == "cart.updated" ? size(event.payload.items) == 0 '
            ": (!has(event.payload.cart) || event.payload.cart == timer.payload.cart)",
            "event.payload.cart == timer.key",
            "size(timer.payload) > 0 && has(state.traits.home)",
            "timer.payload.items.exists(i, i == event.payload.country)",
            "now > timer.due_at - delays.window",
        ]
    ),
    events,
    states,
    st.fixed_dictionaries(
        {"key": st.sampled_from(["C1", "K1"]), "due_at": st.sampled_from([0.0, 9e9])},
        optional={
            "payload": st.fixed_dictionaries({}, optional={"cart": texts, "items": st.lists(texts)})
        },
    ),
)
def test_cancel_when_sees_what_it_reads(
    cancel_when: str, event: dict[str, Any], state: dict[str, Any], timer: dict[str, Any]
) -> None:
    rules = RuleSet.from_documents(
        [
            (
                "t.yaml",
                {
                    "rules": [
                        {
                            "id": "timer_rule",
                            "on": ["x.other"],
                            "transition": "t",
                            "when": "true",
                            "after": "1h",
                            "cancel_on": ["x.t"],
                            "cancel_when": cancel_when,
                            "trigger": {
                                "type": "x",
                                "channel": "sms",
                                "class": "service",
                                "reason": '"r"',
                            },
                        }
                    ]
                },
            )
        ],
        {"window": 600.0},
    )
    [rule] = rules.rules
    whole = cel.Context(
        variables={
            "event": event,
            "state": state,
            "now": 1000.0,
            "delays": {"window": 600.0},
            "timer": timer,
        },
        functions=FUNCTIONS,
    )
    try:
        expected = rule.cancel_when(whole) is True  # type: ignore[misc]
    except Exception:
        expected = False
    assert rules.cancels(rule, event, state, timer, 1000.0) is expected


def test_a_remembered_outcome_repeats_errors_too() -> None:
    rules = ruleset([("state.traits.children > 0", None, '"r"', [])])
    event = {"type": "x.t", "customer_id": "c", "occurred_at": 1.0, "payload": {}}
    broken = {"traits": {"children": "two"}}
    first = rules.evaluate(event, broken, 0.0)
    again = rules.evaluate(event, broken, 0.0)
    assert first.errors == again.errors == reference(rules, event, broken, 0.0).errors
    assert first.errors and first.errors[0][0] == "r0"
    [plan] = rules._plans.values()
    assert plan.memo.hits == 1


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_values_json_cannot_tell_apart_are_not_remembered(value: float | None) -> None:
    memo = Memo()
    assert memo.key({"state": {"score": value}}) is None


def test_nan_infinity_and_null_are_told_apart() -> None:
    rules = ruleset([("event.payload.amount > 0.0", None, '"r"', [])])
    for amount in (math.inf, math.nan, None, -math.inf, math.inf, None, math.nan):
        event = {
            "type": "x.t",
            "customer_id": "c",
            "occurred_at": 1.0,
            "payload": {"amount": amount},
        }
        assert same(rules.evaluate(event, {}, 0.0), reference(rules, event, {}, 0.0))


def test_values_json_cannot_write_are_not_remembered() -> None:
    class Text(str):
        pass

    memo = Memo()
    assert memo.key({"event": {"payload": {"x": Text("a")}}}) is None
    assert memo.key({"event": {"payload": {1: "a"}}}) is None
    assert memo.key({"event": {"payload": {"x": 2**70}}}) is None
    assert memo.key({"event": {"payload": {"x": 1}}}) != memo.key(
        {"event": {"payload": {"x": 1.0}}}
    )
    assert memo.key({"event": {"payload": {"x": 1}}}) != memo.key(
        {"event": {"payload": {"x": True}}}
    )
    assert memo.key({"x": 0.0}) != memo.key({"x": -0.0})


def test_the_memo_is_bounded_and_gives_up_when_values_do_not_repeat() -> None:
    memo = Memo()
    for index in range(memo.TRIAL + 10):
        key = memo.key({"event": {"occurred_at": float(index)}})
        assert memo.get(key) is None
        memo.put(key, ())
        assert len(memo.outcomes) <= memo.KEEP
    assert not memo.enabled and not memo.outcomes
    assert memo.key({"event": {"occurred_at": 1.0}}) is None
