"""Kafka with SASL/SCRAM over TLS and least-privilege ACLs, on a secured broker of its own.

The module starts one broker with SASL_SSL (SCRAM-SHA-512) and the StandardAuthorizer
(devstack/kafka_security.py), creates the contract topics as ``omni-admin`` and the
ACLs of README "Kafka: authentication and ACLs", then shows what the principals may
and may not do: the worker (``omni-worker``) runs story S1 end to end with a channel
backend writing its touchpoints (``channel-mobile``) and another reading its triggers
(``channel-atm``); a backend touching another channel's topics and a wrong password
are refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from devstack.kafka_security import ADMIN_PRINCIPAL, WORKER_PRINCIPAL, create_acls
from devstack.provision import Provided, SecuredKafka, provide_secured_kafka
from processors.settings import Settings
from processors.topics import ensure_topics
from producers.config import ProducerSettings, kafka_client_config
from producers.sdk import TouchpointProducer
from producers.simulator import make_event
from tests.integration.harness import WorkerProcess, make_settings, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secured_kafka() -> Iterator[SecuredKafka]:
    with provide_secured_kafka() as provided:
        print(f"\n[integration] secured Kafka (SASL_SSL, ACLs): {provided.bootstrap}")
        yield provided


def as_principal(settings: Settings, kafka: SecuredKafka, principal: str) -> Settings:
    """``settings`` with every Kafka client authenticating as ``principal``."""
    env = kafka.security.client_env(principal, kafka.bootstrap)
    return Settings(
        **{
            **settings.model_dump(),
            "kafka_security_protocol": env["OMNI_KAFKA_SECURITY_PROTOCOL"],
            "kafka_sasl_mechanism": env["OMNI_KAFKA_SASL_MECHANISM"],
            "kafka_sasl_username": principal,
            "kafka_sasl_password": kafka.security.passwords[principal],
            "kafka_ssl_ca_file": env["OMNI_KAFKA_SSL_CA_FILE"],
        }
    )


@pytest.fixture(scope="module")
def secured_settings(
    secured_kafka: SecuredKafka, redis_service: Provided, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """The worker's settings (as omni-worker); topics and ACLs made by omni-admin."""
    data_dir = tmp_path_factory.mktemp("secured-worker")
    base = make_settings(secured_kafka.bootstrap, redis_service.address, data_dir)
    admin = as_principal(base, secured_kafka, ADMIN_PRINCIPAL)
    ensure_topics(admin)
    create_acls(admin.kafka_client_config(), admin)
    return as_principal(base, secured_kafka, WORKER_PRINCIPAL)


def channel_config(kafka: SecuredKafka, channel: str, **extra: Any) -> dict[str, Any]:
    """librdkafka settings of the channel backend ``channel``, from its OMNI_* variables."""
    env = kafka.security.client_env(f"channel-{channel}", kafka.bootstrap)
    return {**ProducerSettings.from_env(env).kafka_client_config(), **extra}


def produce_error(config: dict[str, Any], topic: str) -> KafkaError | None:
    """The delivery result of one record to ``topic`` (None: acknowledged)."""
    results: list[KafkaError | None] = []
    producer = Producer({**config, "message.timeout.ms": 10_000})
    producer.produce(topic, b"{}", key=b"c1", on_delivery=lambda err, _msg: results.append(err))
    producer.flush(15)
    assert results, f"no delivery report for {topic} within 15 s"
    return results[0]


def consume_error(config: dict[str, Any], topic: str, group: str) -> KafkaError | None:
    """The first error a consumer of ``topic`` in ``group`` gets (None: none in 10 s)."""
    consumer = Consumer(
        {**config, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    try:

        def first_error() -> KafkaError | None:
            for message in consumer.consume(10, timeout=0.5):
                error = message.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    return error
            return None

        try:
            return wait_for(first_error, 10, f"an error reading {topic}")
        except AssertionError:
            return None
    finally:
        consumer.close()


def first_record(config: dict[str, Any], topic: str, customer_id: str) -> dict[str, Any]:
    """The first JSON record of ``customer_id`` on ``topic`` (60 s at most)."""
    consumer = Consumer({**config, "enable.auto.commit": False})
    consumer.subscribe([topic])
    try:

        def found() -> dict[str, Any] | None:
            for message in consumer.consume(100, timeout=0.5):
                if message.error() is not None:
                    raise AssertionError(f"reading {topic}: {message.error()}")
                record: dict[str, Any] = orjson.loads(message.value())
                if record.get("customer_id") == customer_id:
                    return record
            return None

        return wait_for(found, 60, f"a record of {customer_id} on {topic}")
    finally:
        consumer.close()


def test_worker_runs_s1_through_the_secured_broker_as_its_own_principal(
    secured_kafka: SecuredKafka, secured_settings: Settings, tmp_path: Path
) -> None:
    worker = WorkerProcess(secured_settings, tmp_path / "worker.log")
    # Ready means: group joined and changelog topics created as omni-worker (Faust's
    # SCRAM credentials), state recovered; the output producer wrote nothing yet.
    worker.start()
    try:
        namespace = secured_settings.topic_namespace
        mobile = ProducerSettings.from_env(
            secured_kafka.security.client_env("channel-mobile", secured_kafka.bootstrap),
            topic_namespace=namespace,
        )
        cid = f"alice-{uuid.uuid4().hex[:8]}"
        accepted = make_event(
            cid,
            "mobile",
            "offer.accepted",
            {
                "offer_id": "OD-1",
                "offer_type": "overdraft",
                "limit": 500,
                "currency": "EUR",
                "valid_hours": 2,
            },
        )
        with TouchpointProducer(mobile) as producer:
            producer.publish(accepted)

        # The ATM backend reads its triggers in a group named after it.
        atm = channel_config(
            secured_kafka,
            "atm",
            **{"group.id": f"channel-atm-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest"},
        )
        trigger = first_record(atm, secured_settings.trigger_topic("atm"), cid)
        assert trigger["type"] == "overdraft_entitlement"
        assert trigger["source_event_id"] == accepted["event_id"]
    except BaseException:
        print(worker.log_tail())
        raise
    finally:
        worker.stop()


def test_a_mobile_backend_may_write_only_mobile_touchpoints_and_read_only_mobile_triggers(
    secured_kafka: SecuredKafka, secured_settings: Settings
) -> None:
    mobile = channel_config(secured_kafka, "mobile")
    group = f"channel-mobile-{uuid.uuid4().hex[:8]}"
    assert produce_error(mobile, secured_settings.touchpoint_topic("mobile")) is None

    refused = produce_error(mobile, secured_settings.touchpoint_topic("atm"))
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    refused = consume_error(mobile, secured_settings.trigger_topic("atm"), group)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Its own triggers it may read (in a group named after it): no error at all.
    assert consume_error(mobile, secured_settings.trigger_topic("mobile"), group) is None

    # The worker's topics are not a channel's business: decisions stay internal.
    refused = consume_error(mobile, secured_settings.decision_topic, group)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_a_wrong_password_and_a_plaintext_client_are_refused(
    secured_kafka: SecuredKafka,
) -> None:
    security = secured_kafka.security.client("channel-mobile")
    right = kafka_client_config(secured_kafka.bootstrap, security)
    assert AdminClient(right).list_topics(timeout=10).brokers  # the control
    wrong = {**right, "sasl.password": "not-the-password"}
    errors: list[KafkaError] = []
    admin = AdminClient({**wrong, "error_cb": errors.append, "log_level": 0})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    # The reason reaches the client's error callback: SASL authentication failed.
    wait_for(
        lambda: admin.poll(0.2) is not None and errors, 10, "the client's error callback"
    )  # fmt: skip
    assert KafkaError._AUTHENTICATION in {e.code() for e in errors}, errors

    # No TLS, no SASL: the listener never answers a metadata request.
    with pytest.raises(KafkaException):
        AdminClient({**kafka_client_config(secured_kafka.bootstrap), "log_level": 0}).list_topics(
            timeout=5
        )
