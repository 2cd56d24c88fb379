"""The settings object: environment prefix, secrets masked, topic names in one place."""

from __future__ import annotations

import pytest

from processors.settings import TOUCHPOINT_CHANNELS, TRIGGER_CHANNELS, Settings


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_KAFKA_BOOTSTRAP", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("OMNI_PARTITIONS", "12")
    monkeypatch.setenv("OMNI_MAX_EVENT_AGE_SECONDS", "600")
    settings = Settings()
    assert settings.kafka_bootstrap == "broker-1:9092,broker-2:9092"
    assert settings.partitions == 12 and settings.max_event_age_seconds == 600


def test_secrets_are_masked_when_printed() -> None:
    settings = Settings(
        redis_url="redis://:hunter2@cache:6379/0",
        kafka_sasl_username="omni",
        kafka_sasl_password="s3cret",
    )
    shown = f"{settings!r} {settings} {settings.model_dump_json()}"
    assert "hunter2" not in shown and "s3cret" not in shown
    assert settings.redis_url.get_secret_value().endswith("@cache:6379/0")
    assert settings.kafka_client_config()["sasl.password"] == "s3cret"


def test_topic_names_and_namespace() -> None:
    settings = Settings(topic_namespace="t42")
    assert settings.touchpoint_topic("atm") == "t42.touchpoint.atm"
    assert settings.deadletter_topic == "t42.touchpoint.deadletter"
    topics = settings.contract_topics()
    # + deadletter, customer-events, decision.log, identity.log
    assert len(topics) == len(set(topics)) == len(TOUCHPOINT_CHANNELS) + len(TRIGGER_CHANNELS) + 4
    assert settings.identity_log_topic == "t42.identity.log" in topics
    assert Settings().trigger_topic("sms") == "trigger.sms"


def test_invalid_values_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="partitions"):
        Settings(partitions=0)
