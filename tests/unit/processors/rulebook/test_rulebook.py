"""Rules as data: loading, errors that name file, rule and field, evaluation, reload."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.domain.views import PAYLOAD_VIEWS
from processors.rulebook import RuleFileError, RuleSet, load_ruleset, parse_duration, try_reload
from processors.rulebook.loading import SCHEMA_PATH
from processors.settings import DEFAULT_RULES_DIR, Settings

RULE = """
rules:
  - id: sample_rule
    on: [telco.call_started]
    transition: a call starts
    when: event.payload.call_type == "international"
    trigger:
      type: sample_offer
      channel: sms
      class: marketing
      priority: 5
      cooldown: 1d
      expires_in: 2h
      reason: '"calling " + event.payload.destination_country'
      payload:
        country: event.payload.destination_country
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def event(type_: str = "telco.call_started", **payload: Any) -> dict[str, Any]:
    return {
        "event_id": "e1",
        "type": type_,
        "channel": "telco",
        "customer_id": "c1",
        "occurred_at": 1000.0,
        "payload": payload,
    }


def state(**traits: Any) -> dict[str, Any]:
    return {
        "customer_id": "c1",
        "traits": traits,
        "products": [],
        "last_country": None,
        "entitlements": {},
        "airport_withdrawals": [],
        "preferred_channel": None,
        "timeline": [],
    }


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return load_ruleset(DEFAULT_RULES_DIR, Settings().rule_delays())


def test_shipped_rules_load_sorted_by_priority(shipped: RuleSet) -> None:
    ids = [rule.id for rule in shipped.rules]
    assert set(ids) >= {
        "overdraft_entitlement",
        "travel_card_offer",
        "roaming_offer",
        "long_distance_plan_offer",
        "wedding_offers",
        "customer_briefing",
    }
    priorities = [rule.priority for rule in shipped.rules]
    assert priorities == sorted(priorities, reverse=True)
    assert len(shipped.ruleset_id) == 12


def test_match_with_payload_cooldown_and_expiry(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", RULE)
    rules = load_ruleset(tmp_path)
    result = rules.evaluate(
        event(call_type="international", destination_country="FR"), state(), 1000.0
    )
    [match] = result.matches
    assert result.errors == []
    assert (match.rule.id, match.channel, match.message_class) == (
        "sample_rule",
        "sms",
        "marketing",
    )
    assert match.payload == {"country": "FR"} and match.reason == "calling FR"
    assert match.cooldown_key == "sample_rule:" and match.cooldown_seconds == 86400.0
    assert match.expires_at == 1000.0 + 7200.0
    assert (
        rules.evaluate(event(call_type="local", destination_country="FR"), state(), 0).matches == []
    )
    assert not rules.listens_to("atm.withdrawal")


def test_wedding_eligibility_over_the_profile(shipped: RuleSet) -> None:
    ask = event("campaign.requested", campaign_id="W1", offer_type="wedding")

    def eligible(**traits: Any) -> bool:
        [match] = shipped.evaluate(ask, state(**traits), 0.0).matches
        return match.eligible

    assert eligible() and eligible(marital_status="single", children=0)
    assert not eligible(marital_status="married")
    assert not eligible(marital_status="divorced", children=2)


def test_roaming_needs_home_country_and_a_new_country(shipped: RuleSet) -> None:
    attached = event("telco.network_attached", country="FR")
    assert shipped.evaluate(attached, state(), 0.0).matches == []
    assert shipped.evaluate(attached, state(home_country="FR"), 0.0).matches == []
    [match] = shipped.evaluate(attached, state(home_country="DE"), 0.0).matches
    assert match.cooldown_key == "roaming_offer:FR"
    again = {**state(home_country="DE"), "last_country": "FR"}
    assert shipped.evaluate(attached, again, 0.0).matches == []


def test_travel_card_on_the_second_foreign_airport(shipped: RuleSet) -> None:
    withdrawal = event(
        "atm.withdrawal",
        amount=50,
        currency="EUR",
        country="PT",
        atm_id="LIS-1",
        location_type="airport",
    )
    customer = state(home_country="GB")
    assert shipped.evaluate(withdrawal, customer, 0.0).matches == []
    customer["airport_withdrawals"] = [{"atm_id": "MAD-1", "country": "ES", "at": 900.0}]
    [match] = shipped.evaluate(withdrawal, customer, 0.0).matches
    assert match.eligible and match.channel == "preferred" and match.fallback_channel == "email"
    customer["products"] = ["travel_card"]
    assert not shipped.evaluate(withdrawal, customer, 0.0).matches[0].eligible


def test_runtime_errors_are_reported_not_raised(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", RULE.replace("event.payload.call_type", "event.payload.missing"))
    result = load_ruleset(tmp_path).evaluate(event(call_type="x"), state(), 0.0)
    assert result.matches == []
    [(rule_id, message)] = result.errors
    assert rule_id == "sample_rule" and "missing" in message


def test_when_must_be_a_bool(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", RULE.replace('event.payload.call_type == "international"', "1 + 1"))
    result = load_ruleset(tmp_path).evaluate(event(call_type="x"), state(), 0.0)
    assert "not a bool" in result.errors[0][1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [\n  - id: x\n", ["a.yaml", "not valid YAML"]),
        (RULE.replace("id: sample_rule", "id: Bad Id"), ["a.yaml", "rule 'Bad Id'", "'id'"]),
        (RULE.replace("    transition: a call starts\n", ""), ["rule 'sample_rule'", "transition"]),
        (RULE.replace("class: marketing", "class: spam"), ["rule 'sample_rule'", "trigger.class"]),
        (
            RULE.replace('== "international"', '== "international" &&'),
            ["rule 'sample_rule'", "field 'when'", "fix the CEL expression"],
        ),
        (
            RULE.replace("expires_in: 2h", "expires_in: 2h\n      expires_at: now"),
            ["rule 'sample_rule'", "trigger"],
        ),
        (RULE.replace("channel: sms", "channel: preferred"), ["sample_rule", "fallback_channel"]),
        (RULE.replace("cooldown: 1d", "cooldown: 1 week"), ["sample_rule", "trigger.cooldown"]),
    ],
    ids=["yaml", "id", "missing", "enum", "cel", "two-expiries", "preferred", "duration"],
)
def test_bad_files_name_file_rule_and_field(tmp_path: Path, text: str, expected: list[str]) -> None:
    write(tmp_path, "a.yaml", text)
    with pytest.raises(RuleFileError) as error:
        load_ruleset(tmp_path)
    for part in expected:
        assert part in str(error.value), str(error.value)


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", RULE)
    write(tmp_path, "b.yaml", RULE)
    with pytest.raises(RuleFileError, match=r"b\.yaml: rule 'sample_rule'.*already defined"):
        load_ruleset(tmp_path)


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError, match=r"no \*\.yaml rule files"):
        load_ruleset(tmp_path)
    with pytest.raises(RuleFileError, match="OMNI_RULES_DIR"):
        load_ruleset(tmp_path / "nope")


def test_ruleset_id_is_stable_and_follows_content(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write(one, "a.yaml", RULE)
    write(one, "b.yaml", RULE.replace("sample_rule", "other_rule"))
    write(two, "z.yaml", RULE.replace("sample_rule", "other_rule"))
    write(two, "y.yaml", RULE)
    assert load_ruleset(one).ruleset_id == load_ruleset(two).ruleset_id
    write(two, "y.yaml", RULE.replace("priority: 5", "priority: 6"))
    assert load_ruleset(one).ruleset_id != load_ruleset(two).ruleset_id


def test_reload_keeps_the_old_set_when_the_new_one_is_bad(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_RULES_DIR, tmp_path / "rules")
    folder = tmp_path / "rules"
    current = load_ruleset(folder, Settings().rule_delays())
    write(folder, "bad.yaml", "rules: []\n")
    kept, error = try_reload(folder, current)
    assert kept is current and error is not None and "bad.yaml" in error
    (folder / "bad.yaml").unlink()
    write(folder, "new.yaml", RULE)
    fresh, error = try_reload(folder, current)
    assert error is None and fresh.ruleset_id != current.ruleset_id


def test_yaml_on_is_a_key_not_a_boolean(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", RULE)
    assert load_ruleset(tmp_path).rules[0].on == frozenset({"telco.call_started"})


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90.0), ("15m", 900.0), ("24h", 86400.0), ("1.5d", 129600.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_only_the_state_fields_rules_read_are_converted(shipped: RuleSet) -> None:
    assert shipped.state_fields["telco.network_attached"] == {"traits", "last_country"}
    assert "timeline" in (shipped.state_fields["branch.visit"] or set())


def test_a_rule_using_the_whole_state_gets_all_of_it(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        RULE.replace('event.payload.call_type == "international"', "size(state) > 0"),
    )
    rules = load_ruleset(tmp_path)
    assert rules.state_fields["telco.call_started"] is None
    [match] = rules.evaluate(event(call_type="x", destination_country="FR"), state(), 0.0).matches
    assert match.rule.id == "sample_rule"


def test_cooldown_names_a_delay_setting(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", RULE.replace("cooldown: 1d", "cooldown: some_cooldown"))
    rules = load_ruleset(tmp_path, {"some_cooldown": 7 * 86400.0})
    assert rules.rules[0].cooldown_seconds == 7 * 86400.0
    with pytest.raises(RuleFileError, match=r"'trigger\.cooldown'.*delay setting: none"):
        load_ruleset(tmp_path)


def test_roaming_cooldown_is_its_setting() -> None:
    def cooldown(settings: Settings) -> float | None:
        rule = load_ruleset(DEFAULT_RULES_DIR, settings.rule_delays()).rule("roaming_offer")
        assert rule is not None
        return rule.cooldown_seconds

    assert cooldown(Settings()) == 30 * 86400.0
    assert cooldown(Settings(roaming_cooldown_days=7)) == 7 * 86400.0


def test_include_names_payload_views(tmp_path: Path) -> None:
    with_views = RULE.replace("      payload:\n", "      include: [entitlements]\n      payload:\n")
    write(tmp_path, "a.yaml", with_views)
    assert load_ruleset(tmp_path).rules[0].include == ("entitlements",)
    write(tmp_path, "a.yaml", with_views.replace("[entitlements]", "[history]"))
    with pytest.raises(RuleFileError, match=r"rule 'sample_rule': field 'trigger\.include\.0'"):
        load_ruleset(tmp_path)


def test_the_schema_allows_the_payload_views_the_step_has() -> None:
    schema = orjson.loads(SCHEMA_PATH.read_bytes())
    include = schema["$defs"]["rule"]["properties"]["trigger"]["properties"]["include"]
    assert set(include["items"]["enum"]) == set(PAYLOAD_VIEWS)
