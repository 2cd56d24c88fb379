"""Suppression reason codes are a public contract on decision.log: their strings never change."""

from __future__ import annotations

from processors.domain import reasons


def test_reason_codes_are_the_published_strings() -> None:
    assert {name: getattr(reasons, name) for name in reasons.__all__} == {
        "ARBITRATION": "arbitration",
        "CONSENT": "consent",
        "CONTROL_GROUP": "control_group",
        "COOLDOWN": "cooldown",
        "EXPIRED": "expired",
        "FREQUENCY_CAP": "frequency_cap",
        "PAUSED": "paused",
        "PROFILE": "profile",
        "QUIET_HOURS": "quiet_hours",
        "STALE": "stale",
        "UNAUTHORIZED": "unauthorized",
        "CHANNEL_NOT_ALLOWED": "channel_not_allowed",
        "LIMIT_TOO_HIGH": "limit_too_high",
        "UNKNOWN_CURRENCY": "unknown_currency",
        "TRIGGER_NOT_OURS": "trigger_not_ours",
    }


def test_every_grant_refusal_fits_the_decision_schemas_reason_codes() -> None:
    """decision 1-0-1 takes any code of 1-32 lower-case letters or '_': no new version needed."""
    import re

    from schemas.registry import load_schema

    schema = load_schema("com.omnichannel", "decision", "1-0-1")
    item = schema["properties"]["reasons"]["items"]
    for code in (reasons.UNAUTHORIZED, *reasons.GRANT_REFUSALS):
        assert re.fullmatch(item["pattern"], code) and len(code) <= item["maxLength"]
