"""The SDK's own settings read the worker's OMNI_* names, with the worker's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.settings import Settings
from producers.claims import CouponClaims
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


def test_redis_url_and_ca_file_reach_the_coupon_claims_client(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")  # read only when connecting
    settings = ProducerSettings.from_env(
        {
            "OMNI_REDIS_URL": "rediss://omni-till:s%2F3cret@redis.internal:6380/0",
            "OMNI_REDIS_CA_FILE": str(ca_file),
        }
    )
    assert "s%2F3cret" not in repr(settings)
    pool = CouponClaims.from_settings(settings)._redis.connection_pool
    assert "SSL" in pool.connection_class.__name__
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("omni-till", "s/3cret")
    assert kwargs["ssl_ca_certs"] == str(ca_file)
    workers_default = Settings.model_fields["redis_url"].default.get_secret_value()
    assert ProducerSettings.from_env({}).redis_url == workers_default
    with pytest.raises(ValueError, match="OMNI_REDIS_CA_FILE is set but OMNI_REDIS_URL is a redis"):
        ProducerSettings(redis_ca_file=str(ca_file))
