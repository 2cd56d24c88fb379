"""Topic config alignment under a least-privilege principal (no broker: the admin's
futures are given)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource

from processors.topics import align_topic_configs


class Entry:
    def __init__(self, value: str) -> None:
        self.value = value


def done(value: Any = None, error: int | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(KafkaException(KafkaError(error)))
    return future


class Admin:
    """describe_configs / incremental_alter_configs answered per topic."""

    def __init__(self, described: dict[str, Future[Any]], alter_error: int | None = None) -> None:
        self.described = described
        self.alter_error = alter_error
        self.altered: list[str] = []

    def describe_configs(self, resources: list[ConfigResource], **_: Any) -> dict[Any, Any]:
        return {r: self.described[r.name] for r in resources}

    def incremental_alter_configs(self, resources: list[ConfigResource], **_: Any) -> Any:
        self.altered += [r.name for r in resources]
        return {r: done(error=self.alter_error) for r in resources}


WANTED = {"touchpoint.deadletter": {"retention.ms": "259200000"}}


def test_a_differing_config_is_aligned() -> None:
    admin = Admin({"touchpoint.deadletter": done({"retention.ms": Entry("604800000")})})
    assert align_topic_configs(admin, WANTED) == ["touchpoint.deadletter"]  # type: ignore[arg-type]


def test_a_principal_that_may_not_describe_configs_is_warned_not_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = Admin({"touchpoint.deadletter": done(error=KafkaError.TOPIC_AUTHORIZATION_FAILED)})
    assert align_topic_configs(admin, WANTED) == []  # type: ignore[arg-type]
    assert admin.altered == []
    assert "python -m processors topics` as an admin principal" in caplog.text


def test_a_principal_that_may_not_alter_configs_is_warned_not_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = Admin(
        {"touchpoint.deadletter": done({"retention.ms": Entry("604800000")})},
        alter_error=KafkaError.TOPIC_AUTHORIZATION_FAILED,
    )
    assert align_topic_configs(admin, WANTED) == []  # type: ignore[arg-type]
    assert "may not alter them" in caplog.text


def test_other_errors_still_stop() -> None:
    admin = Admin({"touchpoint.deadletter": done(error=KafkaError.UNKNOWN_TOPIC_OR_PART)})
    with pytest.raises(KafkaException):
        align_topic_configs(admin, WANTED)  # type: ignore[arg-type]
