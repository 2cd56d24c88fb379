"""Every ``Settings`` field changes behaviour, and a test shows it; or it is on a
commented exempt list.

``BEHAVIOUR_TESTS`` maps a field to the test that builds what the field feeds (the
policy, the contact policy, the rule delays, the step, ingest, the Faust app, the
checkpoint, the Redis writer, the runtime) with a non-default value and checks the
observable difference. ``EXEMPT`` holds fields that only say where things are or what
they are called (hosts, ports, URLs, paths, names) or tune a broker-side setting that
needs a broker to observe; ``KNOWN_UNUSED`` holds fields nothing reads (to be removed
elsewhere, not here). The meta-test fails for a field on none of these lists.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types import TP
from pydantic import ValidationError

import processors.output as output_module
import tests.unit.processors.test_agents as agent_tests
import tests.unit.processors.test_api as api_tests
import tests.unit.processors.test_erasure as erasure_tests
import tests.unit.processors.test_identity as identity_tests
import tests.unit.processors.test_ingest as ingest_tests
import tests.unit.processors.test_settings as settings_tests
from devstack.kafka_security import BrokerSecurity
from processors.app import OmniApp, contact_policy, step_context
from processors.domain import contact as cp
from processors.domain.caps import enforce_caps
from processors.domain.decide import in_control_group
from processors.domain.fold import overdraft_grant
from processors.domain.model import CustomerState, Event, parse_time
from processors.domain.policy import Policy, has_marketing_consent, is_stale
from processors.domain.read_model import ReadModelWrite
from processors.domain.step import StepContext, step
from processors.rulebook import load_ruleset
from processors.runtime import WorkerRuntime
from processors.settings import DEFAULT_RULES_DIR, Settings
from producers.actions import (
    WeakActionTokenKeyError,
    actions_for,
    new_action_token_key,
    verify_action_token,
)
from tests.unit.processors.doubles import unconnected_app
from tests.unit.processors.fake_redis import FakeRedis

NOW = parse_time("2026-11-22T12:00:00Z")  # a Sunday, 12:00 UTC
HOUR = 3600.0
DAY = 86400.0


# --- helpers --------------------------------------------------------------------------------


def context(**overrides: Any) -> StepContext:
    """What the worker's step runs with, for these settings (rules loaded with their delays)."""
    settings = Settings(**overrides)
    return step_context(settings, load_ruleset(Path(settings.rules_dir), settings.rule_delays()))


def ev(
    type_: str, payload: dict[str, Any], event_id: str, at: float = NOW, channel: str = "web"
) -> Event:
    return Event(event_id, type_, channel, "c1", at, payload, produced_at=at)


def page_view(event_id: str, at: float = NOW) -> Event:
    return ev("page.viewed", {"url": "/home"}, event_id, at)


def built_app(tmp_path: Path, **overrides: Any) -> AbstractContextManager[OmniApp]:
    return unconnected_app(tmp_path, **overrides)


# --- Kafka client, Faust app, state store ---------------------------------------------------


def test_kafka_sasl_username_and_password_switch_the_clients_to_sasl() -> None:
    assert "security.protocol" not in Settings().kafka_client_config()
    # Both alone (no protocol set) mean SASL_SSL, as in earlier releases.
    config = Settings(kafka_sasl_username="u", kafka_sasl_password="p").kafka_client_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert (config["sasl.username"], config["sasl.password"]) == ("u", "p")
    # One without the other is refused, naming what is missing: no half-configured SASL.
    with pytest.raises(ValidationError, match="OMNI_KAFKA_SASL_PASSWORD is not"):
        Settings(kafka_sasl_username="u")
    with pytest.raises(ValidationError, match="OMNI_KAFKA_SASL_USERNAME is not"):
        Settings(kafka_sasl_password="p")


def recorded_output_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the librdkafka OutputProducer's config, Faust's aiokafka auth settings) of a worker
    built with these settings."""
    configs: list[dict[str, Any]] = []
    real = output_module.Producer

    def recording(config: dict[str, Any]) -> Any:
        configs.append(config)
        return real(config)

    monkeypatch.setattr(output_module, "Producer", recording)
    with built_app(tmp_path, **overrides) as app:
        faust_auth = dict(credentials_to_aiokafka_auth(app.conf.broker_credentials))
    [output] = configs
    return output, faust_auth


def app_credentials_are_none(tmp_path: Path) -> bool:
    with built_app(tmp_path) as app:
        return app.conf.broker_credentials is None


def test_kafka_security_protocol_secures_faust_and_librdkafka_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = {"kafka_sasl_username": "omni-worker", "kafka_sasl_password": "pw"}
    output, faust_auth = recorded_output_configs(
        tmp_path, monkeypatch, kafka_security_protocol="SASL_SSL", **users
    )
    assert output["security.protocol"] == faust_auth["security_protocol"] == "SASL_SSL"
    assert output["sasl.username"] == faust_auth["sasl_plain_username"] == "omni-worker"
    assert output["sasl.password"] == faust_auth["sasl_plain_password"] == "pw"
    assert isinstance(faust_auth["ssl_context"], ssl.SSLContext)
    # SASL without TLS: no SSL context for Faust either.
    output, faust_auth = recorded_output_configs(
        tmp_path / "plain", monkeypatch, kafka_security_protocol="sasl_plaintext", **users
    )
    assert output["security.protocol"] == faust_auth["security_protocol"] == "SASL_PLAINTEXT"
    assert faust_auth["ssl_context"] is None
    # The default: nothing but the bootstrap, and Faust gets no credentials.
    output, faust_auth = recorded_output_configs(tmp_path / "default", monkeypatch)
    assert "security.protocol" not in output
    assert app_credentials_are_none(tmp_path / "none")
    assert faust_auth == {"security_protocol": "PLAINTEXT"}
    with pytest.raises(ValidationError, match="OMNI_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs a user"):
        Settings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="OMNI_KAFKA_SECURITY_PROTOCOL='TLS' is not one of"):
        Settings(kafka_security_protocol="TLS")


def test_kafka_sasl_mechanism_is_the_mechanism_of_every_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = {"kafka_sasl_username": "u", "kafka_sasl_password": "p"}
    output, faust_auth = recorded_output_configs(tmp_path, monkeypatch, **users)
    assert output["sasl.mechanisms"] == faust_auth["sasl_mechanism"] == "SCRAM-SHA-512"
    output, faust_auth = recorded_output_configs(
        tmp_path / "256", monkeypatch, kafka_sasl_mechanism="SCRAM-SHA-256", **users
    )
    assert output["sasl.mechanisms"] == faust_auth["sasl_mechanism"] == "SCRAM-SHA-256"
    with pytest.raises(ValidationError, match="OMNI_KAFKA_SASL_MECHANISM='GSSAPI' is not one of"):
        Settings(kafka_sasl_mechanism="GSSAPI", **users)


def test_kafka_ssl_ca_file_is_the_ca_every_client_trusts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file = BrokerSecurity.create(tmp_path / "tls").ca_file
    output, faust_auth = recorded_output_configs(
        tmp_path / "worker",
        monkeypatch,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=str(ca_file),
    )
    assert output["ssl.ca.location"] == str(ca_file)
    context = faust_auth["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    subjects = [dict(x[0] for x in ca["subject"]) for ca in context.get_ca_certs()]
    assert {"commonName": "omni devstack CA"} in subjects
    # Without it: the system's CAs, never this one.
    _, faust_auth = recorded_output_configs(
        tmp_path / "system", monkeypatch, kafka_security_protocol="SSL"
    )
    subjects = [
        dict(x[0] for x in ca["subject"]) for ca in faust_auth["ssl_context"].get_ca_certs()
    ]
    assert {"commonName": "omni devstack CA"} not in subjects
    with pytest.raises(ValidationError, match=r"OMNI_KAFKA_SSL_CA_FILE=.* is not a readable file"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=str(tmp_path / "missing.pem"))


def test_partitions_is_the_partition_count_of_the_state_tables_and_topics(tmp_path: Path) -> None:
    with built_app(tmp_path, partitions=3) as app:
        for name in ("customers", "timelines", "stats"):
            table = app.tables[name]
            assert table.partitions == 3 and table.changelog_topic.partitions == 3
        assert app.conf.topic_partitions == 3
    with built_app(tmp_path / "default") as app:
        assert app.tables["customers"].partitions == 24


def test_instance_id_is_the_static_group_member_id(tmp_path: Path) -> None:
    with built_app(tmp_path, instance_id="worker-7") as app:
        assert app.conf.consumer_group_instance_id == "worker-7"
    # Empty: derived from host and data dir, so two workers on one host differ.
    one = Settings(data_dir=str(tmp_path / "a")).group_instance_id()
    two = Settings(data_dir=str(tmp_path / "b")).group_instance_id()
    assert one != two and one.startswith("omni-pipeline-")


def test_session_timeout_seconds_sets_the_session_and_heartbeat(tmp_path: Path) -> None:
    with built_app(tmp_path, session_timeout_seconds=30.0) as app:
        assert app.conf.broker_session_timeout == 30.0
        assert app.conf.broker_heartbeat_interval == 7.5


def test_standby_replicas_is_faust_table_standby_replicas(tmp_path: Path) -> None:
    with built_app(tmp_path, standby_replicas=2) as app:
        assert app.conf.table_standby_replicas == 2
    with built_app(tmp_path / "default") as app:
        assert app.conf.table_standby_replicas == 1
        assert app.conf.broker_session_timeout == 6.0, "the broker's minimum: failover in < 10 s"


def test_standby_max_held_records_bounds_what_a_standby_partition_holds_back(
    tmp_path: Path,
) -> None:
    from processors.checkpoint import source_header
    from processors.standby import StandbyHold

    settings = Settings(standby_max_held_records=2)
    overflows: list[int] = []
    hold: Any = StandbyHold(
        lambda p, r: None, settings.standby_max_held_records, lambda p, n: overflows.append(n)
    )

    class Record:
        def __init__(self, offset: int) -> None:
            self.offset, self.headers = offset, source_header((5, 1), offset)

    hold.admit(0, [Record(0), Record(1)])
    assert hold.held(0) == 2 and not overflows
    hold.admit(0, [Record(2)])
    assert hold.held(0) == 0 and overflows == [3] and hold.frozen(0)


def test_commit_interval_seconds_is_faust_commit_interval(tmp_path: Path) -> None:
    with built_app(tmp_path, commit_interval_seconds=2.5) as app:
        assert app.conf.broker_commit_interval == 2.5
    with built_app(tmp_path / "default") as app:
        assert app.conf.broker_commit_interval == 1.0


def test_producer_linger_ms_reaches_both_producers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs: list[dict[str, Any]] = []
    real = output_module.Producer

    def recording(config: dict[str, Any]) -> Any:
        configs.append(config)
        return real(config)

    monkeypatch.setattr(output_module, "Producer", recording)
    with built_app(tmp_path, producer_linger_ms=40) as app:
        assert app.conf.producer_linger == 0.040  # Faust's own (aiokafka) producer, seconds
    assert [c["linger.ms"] for c in configs] == [40]  # the librdkafka OutputProducer


def test_rocksdb_memory_settings_size_each_table_store(tmp_path: Path) -> None:
    with built_app(
        tmp_path,
        rocksdb_write_buffer_mib=3,
        rocksdb_block_cache_mib=9,
        rocksdb_memtable_budget_mib=20,
    ) as app:
        options = app.tables["customers"].data.rocksdb_options  # type: ignore[attr-defined]
        assert options.write_buffer_size == 3 * 1024 * 1024
        assert options.block_cache_size == 9 * 1024 * 1024
        assert options.memtable_budget == 20 * 1024 * 1024
        # One cache for every table partition of the worker, not one each.
        stores = [app.tables[name].data for name in ("customers", "stats")]
        dbs = [store.partition_db(p) for store in stores for p in (0, 1)]  # type: ignore[attr-defined]
        try:
            assert {db.property_int_value("rocksdb.block-cache-capacity") for db in dbs} == {
                9 * 1024 * 1024
            }
        finally:
            for db in dbs:
                db.close()


def test_changelog_min_compaction_lag_seconds_configures_the_changelog_topics(
    tmp_path: Path,
) -> None:
    with built_app(tmp_path, changelog_min_compaction_lag_seconds=90.5) as app:
        for name in ("customers", "timelines", "stats"):
            config = app.tables[name].changelog_topic.config or {}
            assert config["min.compaction.lag.ms"] == 90_500


def test_changelog_erasure_settings_configure_compaction_of_the_changelog_topics(
    tmp_path: Path,
) -> None:
    with built_app(
        tmp_path,
        changelog_min_compaction_lag_seconds=600.0,
        changelog_max_compaction_lag_seconds=3600.5,
        changelog_delete_retention_seconds=60.25,
    ) as app:
        for name in ("customers", "timelines", "stats"):
            config = app.tables[name].changelog_topic.config or {}
            assert config["max.compaction.lag.ms"] == 3_600_500
            assert config["delete.retention.ms"] == 60_250
    with built_app(tmp_path / "default") as app:
        config = app.tables["customers"].changelog_topic.config or {}
        assert config["max.compaction.lag.ms"] == 7 * 86_400_000
        assert config["delete.retention.ms"] == 86_400_000


def test_rules_dir_is_where_the_rule_set_comes_from(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "hospital.yaml").write_text((DEFAULT_RULES_DIR / "hospital.yaml").read_text())
    with built_app(tmp_path, rules_dir=str(rules)) as app:
        ids = {rule.id for rule in app.pipeline.customer.ctx.ruleset.rules}
    assert "appointment_reminder" in ids and "cart_reminder" not in ids


# --- checkpoint and Redis writer -------------------------------------------------------------


def test_max_pending_events_is_where_consumption_pauses(tmp_path: Path) -> None:
    def pauses(limit: int) -> bool:
        with built_app(tmp_path / str(limit), max_pending_events=limit) as app:
            checkpoint = app.pipeline.checkpoint
            checkpoint.on_assigned([0], generation=1)
            checkpoint.sealed({0: 9}, {0: 10})  # ten processed events wait for a commit

            async def waits() -> bool:
                try:
                    await asyncio.wait_for(checkpoint.room(), 0.05)
                except TimeoutError:
                    return True
                return False

            return asyncio.get_event_loop().run_until_complete(waits())

    assert pauses(10) and not pauses(11)


def test_redis_retry_max_seconds_caps_the_retry_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def backoffs(**overrides: Any) -> list[float]:
        with built_app(tmp_path / str(overrides), **overrides) as app:
            writer = app.pipeline.writer
            fake = FakeRedis()
            fake.failures = 6
            writer._redis = fake  # type: ignore[assignment]
            waits: list[float] = []

            async def scenario() -> None:
                real_sleep = asyncio.sleep

                async def sleep(delay: float) -> None:
                    waits.append(delay)
                    await real_sleep(0)

                monkeypatch.setattr(asyncio, "sleep", sleep)
                done: list[bool] = []

                async def ack() -> None:
                    done.append(True)

                writer.submit([ReadModelWrite("omni:profile:c1", b"{}")], ack)
                writer.start()
                try:
                    while not done:
                        await real_sleep(0.001)
                finally:
                    monkeypatch.setattr(asyncio, "sleep", real_sleep)
                    writer._task.cancel()  # type: ignore[union-attr]

            asyncio.get_event_loop().run_until_complete(scenario())
            return waits

    assert backoffs() == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    assert backoffs(redis_retry_max_seconds=0.3) == [0.05, 0.1, 0.2, 0.3, 0.3, 0.3]


def test_redis_ca_file_makes_every_redis_client_verify_tls_with_that_ca(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")  # read only when connecting
    url = "rediss://omni-worker:p%40ss@redis.internal:6380/0"

    def clients(**overrides: Any) -> list[Any]:
        with built_app(tmp_path / str(len(overrides)), **overrides) as app:
            settings = Settings(**overrides)
            return [app.pipeline.writer._redis, settings.redis_client()]

    for client in clients(redis_url=url, redis_ca_file=str(ca_file)):
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["ssl_ca_certs"] == str(ca_file)
        assert "SSL" in client.connection_pool.connection_class.__name__
        assert (kwargs["username"], kwargs["password"]) == ("omni-worker", "p@ss")
    for client in clients(redis_url=url):  # rediss:// without a CA file: the system's CAs
        assert client.connection_pool.connection_kwargs.get("ssl_ca_certs") is None
    with pytest.raises(ValueError, match="use rediss://"):
        Settings(redis_url="redis://127.0.0.1:6379/0", redis_ca_file=str(ca_file))
    with pytest.raises(ValueError, match="is not a readable file"):
        Settings(redis_url=url, redis_ca_file=str(tmp_path / "missing.crt"))


# --- runtime: timer tick and liveness -------------------------------------------------------


class _Stop(Exception):
    pass


def test_timer_tick_seconds_is_the_interval_of_the_timer_tick(tmp_path: Path) -> None:
    with built_app(tmp_path, timer_tick_seconds=2.25) as app:
        runtime = WorkerRuntime(app)
        slept: list[float] = []

        async def sleep(interval: float) -> None:
            slept.append(interval)
            if len(slept) == 2:
                raise _Stop

        runtime.sleep = sleep  # type: ignore[method-assign, assignment]
        with pytest.raises(_Stop):
            asyncio.get_event_loop().run_until_complete(WorkerRuntime._timer_tick.fun(runtime))
    assert slept == [2.25, 2.25]


@pytest.mark.parametrize(("stall_seconds", "status"), [(120.0, 200), (30.0, 503)])
def test_stall_seconds_is_how_long_a_lagging_partition_may_not_move(
    tmp_path: Path, stall_seconds: float, status: int
) -> None:
    with built_app(tmp_path, stall_seconds=stall_seconds) as app:
        runtime = WorkerRuntime(app)
        runtime.is_ready = lambda: True  # type: ignore[method-assign]
        tp = TP(app.pipeline.settings.customer_events_topic, 0)
        since = time.monotonic() - 60.0  # lag and no progress for a minute
        app.pipeline.progress.observe(tp, 100, since)
        app.pipeline.progress.processed(tp, 10, since)
        response = asyncio.get_event_loop().run_until_complete(runtime._livez(None))  # type: ignore[arg-type]
    assert response.status == status


# --- domain policy --------------------------------------------------------------------------


def test_max_event_age_seconds_decides_staleness_and_how_long_contact_history_is_kept() -> None:
    two_hours_ago = NOW - 2 * HOUR
    assert is_stale(two_hours_ago, NOW, Policy.from_settings(Settings()))
    assert not is_stale(
        two_hours_ago, NOW, Policy.from_settings(Settings(max_event_age_seconds=3 * HOUR))
    )
    assert contact_policy(Settings()).history_slack == DAY
    assert contact_policy(Settings(max_event_age_seconds=2 * DAY)).history_slack == 2 * DAY


def test_marketing_consent_default_is_the_consent_of_a_customer_who_never_said() -> None:
    silent = CustomerState.new("c1")
    assert has_marketing_consent(silent, "sms", Policy.from_settings(Settings()))
    policy = Policy.from_settings(Settings(marketing_consent_default=False))
    assert not has_marketing_consent(silent, "sms", policy)


def test_dedup_capacity_is_how_many_event_ids_are_remembered() -> None:
    events = [page_view(f"e{n}") for n in range(17)]

    def duplicates_of_the_first(**overrides: Any) -> int:
        ctx = context(**overrides)
        state, _ = step(None, events, ctx, NOW)
        _, out = step(state, [events[0]], ctx, NOW)
        return out.duplicates

    assert duplicates_of_the_first() == 1
    assert duplicates_of_the_first(dedup_capacity=16) == 0  # evicted: no longer known


def test_dedup_days_is_how_young_an_eviction_counts_as_early() -> None:
    def early_evictions(**overrides: Any) -> int:
        ctx = context(dedup_capacity=16, **overrides)
        state, _ = step(None, [page_view(f"e{n}") for n in range(16)], ctx, NOW - 2 * DAY)
        _, out = step(state, [page_view("e16")], ctx, NOW)
        return out.dedup_early_evictions

    assert early_evictions() == 1  # remembered 2 days, 7 wanted
    assert early_evictions(dedup_days=2) == 0


def test_overdraft_default_valid_hours_is_the_validity_of_an_overdraft_without_one() -> None:
    accepted = ev(
        "offer.accepted",
        {"offer_id": "OD1", "offer_type": "overdraft", "limit": 500, "currency": "GBP"},
        "a1",
    )
    grant = overdraft_grant(accepted, Policy.from_settings(Settings()))
    assert grant is not None and grant["expires_at"] == NOW + 24 * HOUR
    grant = overdraft_grant(
        accepted, Policy.from_settings(Settings(overdraft_default_valid_hours=6))
    )
    assert grant is not None and grant["expires_at"] == NOW + 6 * HOUR


def overdraft_outcome(accepted: Event, **overrides: Any) -> tuple[bool, tuple[str, ...]]:
    """(an entitlement was granted, the reasons of the overdraft rule's decision)."""
    state, out = step(None, [accepted], context(**overrides), NOW)
    [decision] = [d for d in out.decisions if d.rule == "overdraft_entitlement"]
    return "overdraft" in state.entitlements, decision.reasons


def test_entitlement_channels_are_where_an_acceptance_may_grant_an_overdraft() -> None:
    payload = {"offer_id": "OD1", "offer_type": "overdraft", "limit": 500, "currency": "GBP"}
    in_the_app = ev("offer.accepted", payload, "a1", channel="mobile")
    at_the_till = ev("offer.accepted", payload, "a2", channel="pos")
    assert overdraft_outcome(in_the_app) == (True, ())
    assert overdraft_outcome(at_the_till) == (False, ("unauthorized", "channel_not_allowed"))
    assert overdraft_outcome(in_the_app, entitlement_channels=["branch"]) == (
        False,
        ("unauthorized", "channel_not_allowed"),
    )
    assert overdraft_outcome(at_the_till, entitlement_channels=["pos"]) == (True, ())


def test_overdraft_max_limit_is_the_largest_overdraft_per_currency() -> None:
    def accepted(limit: int, currency: str) -> Event:
        payload = {"offer_id": "OD1", "offer_type": "overdraft", "limit": limit}
        return ev("offer.accepted", {**payload, "currency": currency}, "a1", channel="mobile")

    assert overdraft_outcome(accepted(5000, "EUR")) == (True, ())
    assert overdraft_outcome(accepted(5001, "EUR"))[1] == ("unauthorized", "limit_too_high")
    assert overdraft_outcome(accepted(500, "CHF"))[1] == ("unauthorized", "unknown_currency")
    higher = {"EUR": 20000.0, "CHF": 800.0}
    assert overdraft_outcome(accepted(5001, "EUR"), overdraft_max_limit=higher) == (True, ())
    assert overdraft_outcome(accepted(500, "CHF"), overdraft_max_limit=higher) == (True, ())
    assert overdraft_outcome(accepted(500, "GBP"), overdraft_max_limit=higher)[1] == (
        "unauthorized",
        "unknown_currency",
    )


def test_max_state_bytes_is_the_size_a_record_is_trimmed_to() -> None:
    def trimmed(**overrides: Any) -> tuple[int, dict[str, int]]:
        state = CustomerState.new("c1")
        state.coupons = {
            f"K{n}": {"status": "issued", "expires_at": NOW + DAY, "note": "x" * 300}
            for n in range(250)
        }
        dropped: dict[str, int] = {}
        limit = Policy.from_settings(Settings(**overrides)).max_state_bytes
        return len(enforce_caps(state, NOW, limit, dropped)), dropped

    size, dropped = trimmed()
    assert size > 64 * 1024 and dropped == {}
    size, dropped = trimmed(max_state_bytes=64 * 1024)
    assert size <= 64 * 1024 and dropped.get("coupons", 0) > 0


# --- the step context ------------------------------------------------------------------------


def test_action_token_key_signs_the_action_tokens() -> None:
    one, other = new_action_token_key(), new_action_token_key()
    first, second = context(action_token_key=one), context(action_token_key=other)
    assert first.action_key == one.encode()
    [accept, *_] = actions_for(first.action_key, "t1", "c1", NOW + DAY)
    assert verify_action_token(one.encode(), accept["token"], "t1", "c1", NOW) == "accept"
    with pytest.raises(ValueError, match="key id"):
        verify_action_token(second.action_key, accept["token"], "t1", "c1", NOW)
    # The worker builds nothing with a missing, public or short key.
    for weak in (None, "dev-only-action-token-key-change-me", "x" * 31):
        with pytest.raises(WeakActionTokenKeyError, match="OMNI_ACTION_TOKEN_KEY"):
            context(action_token_key=weak)


def test_action_token_previous_keys_still_verify_after_a_rotation() -> None:
    old, new = new_action_token_key(), new_action_token_key()
    [accept, *_] = actions_for(old.encode(), "t1", "c1", NOW + DAY)
    rotated = Settings(action_token_key=new, action_token_previous_keys=f" {old} ,")
    keys = rotated.action_token_keys()
    assert keys.current == new.encode() and keys.previous == (old.encode(),)
    assert verify_action_token(keys, accept["token"], "t1", "c1", NOW) == "accept"
    with pytest.raises(ValueError, match="key id"):
        verify_action_token(
            Settings(action_token_key=new).action_token_keys(), accept["token"], "t1", "c1", NOW
        )
    # A previous key is a key too: a weak one stops the worker like a weak current one.
    with pytest.raises(WeakActionTokenKeyError, match="OMNI_ACTION_TOKEN_PREVIOUS_KEYS"):
        context(action_token_key=new, action_token_previous_keys=f"{old},short")


def test_timeline_length_is_how_many_interactions_the_timeline_keeps() -> None:
    events = [page_view(f"e{n}", NOW + n) for n in range(5)]
    _, out = step(None, events, context(), NOW + 10, [])
    assert out.timeline is not None and len(out.timeline) == 5
    _, out = step(None, events, context(timeline_length=3), NOW + 10, [])
    assert out.timeline is not None and [t["event_id"] for t in out.timeline] == ["e4", "e3", "e2"]


def test_lead_points_are_what_an_interaction_adds_to_the_lead_score() -> None:
    state, _ = step(None, [page_view("e1")], context(), NOW)
    assert state.lead == [[NOW, "page.viewed", 5.0]]
    state, _ = step(None, [page_view("e1")], context(lead_points={"page.viewed": 8.0}), NOW)
    assert state.lead == [[NOW, "page.viewed", 8.0]]


def test_lead_threshold_is_the_score_that_makes_a_qualified_lead() -> None:
    _, out = step(None, [page_view("e1")], context(), NOW)
    assert [t.type for t in out.triggers] == []
    _, out = step(None, [page_view("e1")], context(lead_threshold=5.0), NOW)
    assert [t.type for t in out.triggers] == ["qualified_lead"]


def test_lead_window_days_is_how_long_an_interaction_counts() -> None:
    def kept(**overrides: Any) -> list[str]:
        ctx = context(**overrides)
        state, _ = step(None, [page_view("old", NOW - 10 * DAY)], ctx, NOW - 10 * DAY)
        state, _ = step(state, [page_view("new")], ctx, NOW)
        return [entry[1] for entry in state.lead]

    assert len(kept()) == 2
    assert len(kept(lead_window_days=5.0)) == 1


def test_control_group_share_is_the_share_of_customers_held_out() -> None:
    customers = [f"c{n}" for n in range(400)]

    def held_out(**overrides: Any) -> int:
        share = context(**overrides).control_share
        return sum(in_control_group(c, "travel_card_offer", share) for c in customers)

    assert held_out() == 0
    assert 140 <= held_out(control_group_share=0.5) <= 260


# --- rule delays (rules/*.yaml name them) ----------------------------------------------------


def timer_due(event: Event, **overrides: Any) -> float:
    state, _ = step(None, [event], context(**overrides), NOW)
    [timer] = state.timers
    return float(timer["due_at"])


def test_roaming_cooldown_days_is_how_long_a_country_is_not_offered_again() -> None:
    home = ev("profile.updated", {"home_country": "DE"}, "p1", NOW - 10 * DAY)

    def offers_on_return(**overrides: Any) -> list[str]:
        ctx = context(**overrides)
        attaches = [
            Event(f"a{n}", "telco.network_attached", "telco", "c1", at, {"country": country}, at)
            for n, (at, country) in enumerate(
                [(NOW - 9 * DAY, "FR"), (NOW - 8 * DAY, "DE"), (NOW, "FR")]
            )
        ]
        state, _ = step(None, [home], ctx, NOW - 10 * DAY)
        triggers: list[str] = []
        for attach in attaches:
            state, out = step(state, [attach], ctx, attach.occurred_at)
            triggers += [t.type for t in out.triggers]
        return triggers

    assert offers_on_return() == ["roaming_offer"]  # 9 days later: within 30 days
    assert offers_on_return(roaming_cooldown_days=5.0) == ["roaming_offer", "roaming_offer"]


def test_cart_abandon_after_seconds_is_the_wait_before_a_cart_reminder() -> None:
    cart = ev(
        "cart.updated",
        {"cart_id": "C1", "items": [{"sku": "S", "qty": 1, "unit_price": 2.0}], "currency": "EUR"},
        "c1",
    )
    assert timer_due(cart) == NOW + DAY
    assert timer_due(cart, cart_abandon_after_seconds=2 * HOUR) == NOW + 2 * HOUR


def test_coupon_reminder_before_seconds_is_how_early_a_coupon_is_reminded() -> None:
    issued = ev(
        "coupon.issued",
        {"coupon_id": "K1", "value": 5, "currency": "EUR", "valid_hours": 72},
        "i1",
        channel="tv",  # the channels that issue coupons (a coupon from web grants nothing)
    )
    assert timer_due(issued) == NOW + 48 * HOUR
    assert timer_due(issued, coupon_reminder_before_seconds=6 * HOUR) == NOW + 66 * HOUR


def test_appointment_reminder_before_seconds_is_how_early_an_appointment_is_reminded() -> None:
    booked = ev(
        "appointment.booked",
        {
            "appointment_id": "A1",
            "department": "cardiology",
            "scheduled_at": "2026-11-25T09:00:00Z",
        },
        "b1",
    )
    scheduled = parse_time("2026-11-25T09:00:00Z")
    assert timer_due(booked) == scheduled - DAY
    assert timer_due(booked, appointment_reminder_before_seconds=2 * HOUR) == scheduled - 2 * HOUR


# --- contact policy ----------------------------------------------------------------------------


def sent_at(*times: float) -> cp.ContactState:
    return cp.ContactState(sent=[[t, "offer"] for t in times])


def test_frequency_cap_day_is_the_marketing_sends_per_rolling_day() -> None:
    three_today = sent_at(NOW - 3 * HOUR, NOW - 2 * HOUR, NOW - HOUR)
    assert cp.cap_exceeded(three_today, NOW, contact_policy(Settings()))
    assert not cp.cap_exceeded(three_today, NOW, contact_policy(Settings(frequency_cap_day=4)))


def test_frequency_cap_week_is_the_marketing_sends_per_rolling_week() -> None:
    four_this_week = sent_at(*(NOW - n * DAY for n in range(1, 5)))
    assert not cp.cap_exceeded(four_this_week, NOW, contact_policy(Settings()))
    assert cp.cap_exceeded(four_this_week, NOW, contact_policy(Settings(frequency_cap_week=4)))


def paused_until(days_apart: float, **overrides: Any) -> float | None:
    """Two declines of one offer type ``days_apart`` apart: the pause they cause, if any."""
    policy = contact_policy(Settings(**overrides))
    contact = cp.ContactState()
    cp.record_response(contact, "card", "declined", NOW - days_apart * DAY, policy)
    cp.record_response(contact, "card", "declined", NOW, policy)
    return contact.paused_until.get("card")


def test_pause_after_responses_is_how_many_declines_pause_an_offer_type() -> None:
    assert paused_until(1) == NOW + 60 * DAY
    assert paused_until(1, pause_after_responses=3) is None


def test_pause_window_days_is_how_close_the_declines_must_be() -> None:
    assert paused_until(10) == NOW + 60 * DAY
    assert paused_until(10, pause_window_days=7.0) is None


def test_pause_for_days_is_how_long_the_pause_lasts() -> None:
    assert paused_until(1, pause_for_days=5.0) == NOW + 5 * DAY


def test_quiet_hours_start_and_end_are_when_sms_waits() -> None:
    evening = parse_time("2026-11-22T22:00:00Z")
    no_spread: dict[str, Any] = {"release_spread_seconds": 0}
    assert cp.quiet_release_at("t1", evening, "UTC", contact_policy(Settings(**no_spread))) == (
        parse_time("2026-11-23T08:00:00Z")
    )
    later = contact_policy(Settings(quiet_hours_start="23:00", **no_spread))
    assert cp.quiet_release_at("t1", evening, "UTC", later) is None
    shorter = contact_policy(Settings(quiet_hours_end="06:30", **no_spread))
    assert cp.quiet_release_at("t1", evening, "UTC", shorter) == parse_time("2026-11-23T06:30:00Z")


def test_default_timezone_is_the_zone_of_customers_without_one() -> None:
    noon_utc = NOW  # 21:00 in Tokyo: quiet there
    no_spread: dict[str, Any] = {"release_spread_seconds": 0}
    assert cp.quiet_release_at("t1", noon_utc, None, contact_policy(Settings(**no_spread))) is None
    tokyo = contact_policy(Settings(default_timezone="Asia/Tokyo", **no_spread))
    assert cp.quiet_release_at("t1", noon_utc, None, tokyo) == parse_time("2026-11-22T23:00:00Z")


def test_release_spread_seconds_spreads_releases_after_quiet_hours() -> None:
    ids = [f"t{n}" for n in range(200)]
    spread = [
        cp.release_spread(i, contact_policy(Settings(release_spread_seconds=60))) for i in ids
    ]
    assert all(0 <= s < 60 for s in spread) and len(set(spread)) > 30
    default = [cp.release_spread(i, contact_policy(Settings())) for i in ids]
    assert max(default) >= 60
    assert {
        cp.release_spread(i, contact_policy(Settings(release_spread_seconds=0))) for i in ids
    } == {0}


# --- the lists ----------------------------------------------------------------------------------

BEHAVIOUR_TESTS: dict[str, Callable[..., Any]] = {
    "identity_park_seconds": (
        identity_tests.test_parking_expires_into_an_anonymous_profile_that_merges_at_login
    ),
    "identity_park_max_events": identity_tests.test_parking_is_bounded_in_count,
    "identity_limits": identity_tests.test_limits_per_type_and_blocked_values,
    "identity_blocked_values": identity_tests.test_limits_per_type_and_blocked_values,
    "identity_shared_device_customers": identity_tests.test_a_shared_device_never_merges,
    "identity_shared_device_days": identity_tests.test_a_device_is_shared_only_within_the_window,
    "identity_log_retention_hours": (
        erasure_tests.test_identity_log_retention_hours_is_the_retention_of_identity_log
    ),
    "topic_namespace": settings_tests.test_topic_names_and_namespace,
    "partitions": test_partitions_is_the_partition_count_of_the_state_tables_and_topics,
    "kafka_sasl_username": test_kafka_sasl_username_and_password_switch_the_clients_to_sasl,
    "kafka_sasl_password": test_kafka_sasl_username_and_password_switch_the_clients_to_sasl,
    "kafka_security_protocol": test_kafka_security_protocol_secures_faust_and_librdkafka_clients,
    "kafka_sasl_mechanism": test_kafka_sasl_mechanism_is_the_mechanism_of_every_client,
    "kafka_ssl_ca_file": test_kafka_ssl_ca_file_is_the_ca_every_client_trusts,
    "redis_retry_max_seconds": test_redis_retry_max_seconds_caps_the_retry_backoff,
    "redis_ca_file": test_redis_ca_file_makes_every_redis_client_verify_tls_with_that_ca,
    "rocksdb_write_buffer_mib": test_rocksdb_memory_settings_size_each_table_store,
    "rocksdb_block_cache_mib": test_rocksdb_memory_settings_size_each_table_store,
    "rocksdb_memtable_budget_mib": test_rocksdb_memory_settings_size_each_table_store,
    "batch_max_events": agent_tests.test_ingest_batches_hold_at_most_batch_max_events,
    "max_event_bytes": ingest_tests.test_max_event_bytes_is_the_largest_value_forwarded,
    "max_event_age_seconds": (
        test_max_event_age_seconds_decides_staleness_and_how_long_contact_history_is_kept
    ),
    "marketing_consent_default": (
        test_marketing_consent_default_is_the_consent_of_a_customer_who_never_said
    ),
    "dedup_capacity": test_dedup_capacity_is_how_many_event_ids_are_remembered,
    "dedup_days": test_dedup_days_is_how_young_an_eviction_counts_as_early,
    "overdraft_default_valid_hours": (
        test_overdraft_default_valid_hours_is_the_validity_of_an_overdraft_without_one
    ),
    "entitlement_channels": (
        test_entitlement_channels_are_where_an_acceptance_may_grant_an_overdraft
    ),
    "overdraft_max_limit": test_overdraft_max_limit_is_the_largest_overdraft_per_currency,
    "deadletter_raw_max_bytes": (
        ingest_tests.test_deadletter_raw_max_bytes_cuts_the_raw_value_of_a_dead_letter
    ),
    "commit_interval_seconds": test_commit_interval_seconds_is_faust_commit_interval,
    "instance_id": test_instance_id_is_the_static_group_member_id,
    "session_timeout_seconds": test_session_timeout_seconds_sets_the_session_and_heartbeat,
    "standby_replicas": test_standby_replicas_is_faust_table_standby_replicas,
    "standby_max_held_records": (
        test_standby_max_held_records_bounds_what_a_standby_partition_holds_back
    ),
    "max_pending_events": test_max_pending_events_is_where_consumption_pauses,
    "changelog_min_compaction_lag_seconds": (
        test_changelog_min_compaction_lag_seconds_configures_the_changelog_topics
    ),
    "changelog_max_compaction_lag_seconds": (
        test_changelog_erasure_settings_configure_compaction_of_the_changelog_topics
    ),
    "changelog_delete_retention_seconds": (
        test_changelog_erasure_settings_configure_compaction_of_the_changelog_topics
    ),
    "deadletter_retention_hours": (
        erasure_tests.test_deadletter_retention_hours_is_the_retention_of_the_deadletter_topic
    ),
    "producer_linger_ms": test_producer_linger_ms_reaches_both_producers,
    "rules_dir": test_rules_dir_is_where_the_rule_set_comes_from,
    "action_token_key": test_action_token_key_signs_the_action_tokens,
    "action_token_previous_keys": test_action_token_previous_keys_still_verify_after_a_rotation,
    "timeline_length": test_timeline_length_is_how_many_interactions_the_timeline_keeps,
    "frequency_cap_day": test_frequency_cap_day_is_the_marketing_sends_per_rolling_day,
    "frequency_cap_week": test_frequency_cap_week_is_the_marketing_sends_per_rolling_week,
    "pause_after_responses": test_pause_after_responses_is_how_many_declines_pause_an_offer_type,
    "pause_window_days": test_pause_window_days_is_how_close_the_declines_must_be,
    "pause_for_days": test_pause_for_days_is_how_long_the_pause_lasts,
    "quiet_hours_start": test_quiet_hours_start_and_end_are_when_sms_waits,
    "quiet_hours_end": test_quiet_hours_start_and_end_are_when_sms_waits,
    "default_timezone": test_default_timezone_is_the_zone_of_customers_without_one,
    "release_spread_seconds": test_release_spread_seconds_spreads_releases_after_quiet_hours,
    "cart_abandon_after_seconds": (
        test_cart_abandon_after_seconds_is_the_wait_before_a_cart_reminder
    ),
    "coupon_reminder_before_seconds": (
        test_coupon_reminder_before_seconds_is_how_early_a_coupon_is_reminded
    ),
    "appointment_reminder_before_seconds": (
        test_appointment_reminder_before_seconds_is_how_early_an_appointment_is_reminded
    ),
    "roaming_cooldown_days": test_roaming_cooldown_days_is_how_long_a_country_is_not_offered_again,
    "lead_points": test_lead_points_are_what_an_interaction_adds_to_the_lead_score,
    "lead_threshold": test_lead_threshold_is_the_score_that_makes_a_qualified_lead,
    "lead_window_days": test_lead_window_days_is_how_long_an_interaction_counts,
    "control_group_share": test_control_group_share_is_the_share_of_customers_held_out,
    "timer_tick_seconds": test_timer_tick_seconds_is_the_interval_of_the_timer_tick,
    "stall_seconds": test_stall_seconds_is_how_long_a_lagging_partition_may_not_move,
    "max_future_skew_seconds": (
        ingest_tests.test_max_future_skew_seconds_decides_which_future_events_are_refused
    ),
    "max_state_bytes": test_max_state_bytes_is_the_size_a_record_is_trimmed_to,
    "api_tokens": api_tests.test_api_tokens_are_who_may_call_the_api,
}

#: Fields that say where things are or what they are called, or only matter on a broker.
EXEMPT: dict[str, str] = {
    # Hosts, ports, URLs, paths: where things are, not what the pipeline does.
    "kafka_bootstrap": "host:port list of the brokers, passed through to every client",
    "redis_url": "URL (and secret) of the read-model Redis",
    "web_bind": "address the health and metrics endpoints listen on",
    "web_port": "port of /livez and /readyz",
    "metrics_port": "port of the Prometheus endpoint",
    "api_host": "address the Customer 360 API (omni api) listens on",
    "api_port": "port of the Customer 360 API (omni api)",
    "data_dir": "path of the RocksDB state (also an input of the derived group member id)",
    # Names.
    "app_id": "name: Faust app id, consumer group id and changelog topic prefix",
    # Only observable with a broker: topics.py and Faust create topics with it.
    "replication_factor": "broker-side replication of created topics; needs a broker to observe",
    # Operations, not pipeline behaviour.
    "log_level": "logging verbosity, applied in processors/__main__.py to logging and the worker",
}

#: Fields nothing reads: kept here (removal is another change) so they are not forgotten.
KNOWN_UNUSED: dict[str, str] = {}


def test_every_setting_has_a_behaviour_test_or_a_reason_not_to() -> None:
    fields = set(Settings.model_fields)
    listed = [set(BEHAVIOUR_TESTS), set(EXEMPT), set(KNOWN_UNUSED)]
    missing = fields - set().union(*listed)
    assert not missing, (
        f"Settings fields without a behaviour test: {sorted(missing)}. Add a test that "
        "builds what the field feeds with a non-default value and name it in "
        "BEHAVIOUR_TESTS, or say in EXEMPT / KNOWN_UNUSED why there is none."
    )
    stale = set().union(*listed) - fields
    assert not stale, f"Listed but no longer Settings fields (remove them here): {sorted(stale)}"
    for one, other in ((0, 1), (0, 2), (1, 2)):
        assert not listed[one] & listed[other], "a field is on two lists"
    for name, reason in {**EXEMPT, **KNOWN_UNUSED}.items():
        assert len(reason.split()) >= 3, f"{name}: say why it is exempt"


@pytest.mark.parametrize("name", sorted(BEHAVIOUR_TESTS))
def test_each_named_behaviour_test_is_a_collected_test_that_sets_its_field(name: str) -> None:
    test = BEHAVIOUR_TESTS[name]
    assert test.__name__.startswith("test_") and test.__module__.startswith("tests.unit.")
    module = inspect.getmodule(test)
    assert module is not None and getattr(module, test.__name__) is test  # pytest collects it
    assert name in inspect.getsource(test), f"{test.__name__} never sets {name}"
