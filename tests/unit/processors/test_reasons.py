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
    }
