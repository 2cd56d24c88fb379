"""The SDK's own settings read the worker's OMNI_* names, with the worker's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.settings import Settings
from producers.config import ProducerSettings
from producers.sdk import TouchpointProducer

ENV = {
    "OMNI_KAFKA_BOOTSTRAP": "broker-1:9093,broker-2:9093",
    "OMNI_KAFKA_SASL_USERNAME": "till",
    "OMNI_KAFKA_SASL_PASSWORD": "s3cret",
    "OMNI_TOPIC_NAMESPACE": "staging",
    "OMNI_MAX_EVENT_BYTES": "32768",
    "OMNI_MAX_FUTURE_SKEW_SECONDS": "60",
}
COMPARED = ("kafka_bootstrap", "max_event_bytes", "max_future_skew_seconds", "topic_namespace")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # the worker's Settings would read a .env here
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_workers() -> None:
    ours, workers = ProducerSettings.from_env({}), Settings()
    for name in COMPARED:
        assert getattr(ours, name) == getattr(workers, name), name
    assert ours.kafka_client_config() == workers.kafka_client_config()
    assert ours.touchpoint_topic("atm") == workers.touchpoint_topic("atm") == "touchpoint.atm"


def test_the_same_variables_give_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    ours, workers = ProducerSettings.from_env(), Settings()
    for name in COMPARED:
        assert getattr(ours, name) == getattr(workers, name), name
    assert ours.kafka_client_config() == workers.kafka_client_config()
    assert ours.kafka_client_config()["sasl.password"] == "s3cret"
    assert (
        ours.touchpoint_topic("web") == workers.touchpoint_topic("web") == "staging.touchpoint.web"
    )
    assert "s3cret" not in repr(ours)


def test_explicit_arguments_win_and_bad_values_are_named() -> None:
    settings = ProducerSettings.from_env(
        {"OMNI_KAFKA_BOOTSTRAP": "a:1"}, kafka_bootstrap="b:2", topic_namespace="t."
    )
    assert settings.kafka_bootstrap == "b:2"
    assert settings.touchpoint_topic("sms") == "t.touchpoint.sms"
    with pytest.raises(ValueError, match="OMNI_MAX_EVENT_BYTES='big' is not a whole number"):
        ProducerSettings.from_env({"OMNI_MAX_EVENT_BYTES": "big"})


def test_the_sdk_takes_either_settings_object() -> None:
    for settings in (ProducerSettings(kafka_bootstrap="127.0.0.1:9"), Settings()):
        producer = TouchpointProducer(settings)
        assert producer.settings is settings
        producer.flush(0)
