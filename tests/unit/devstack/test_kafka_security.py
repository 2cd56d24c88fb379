"""The secured broker's pieces that need no broker: properties, users, ACL grants."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from devstack.kafka import override_properties, render_server_properties
from devstack.kafka_security import (
    ADMIN_PRINCIPAL,
    AUTHORIZER,
    BROKER_PRINCIPAL,
    WORKER_PRINCIPAL,
    BrokerSecurity,
    acl_bindings,
    grants,
)
from processors.settings import TOUCHPOINT_CHANNELS, TRIGGER_CHANNELS, Settings
from producers.config import ProducerSettings


@pytest.fixture(scope="module")
def security(tmp_path_factory: pytest.TempPathFactory) -> BrokerSecurity:
    return BrokerSecurity.create(tmp_path_factory.mktemp("tls"))


def properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    keys = [line.split("=", 1)[0] for line in lines]
    assert len(keys) == len(set(keys)), "a key appears twice"
    return dict(line.split("=", 1) for line in lines)


def test_the_secured_broker_listens_with_sasl_ssl_and_authorizes(
    security: BrokerSecurity, tmp_path: Path
) -> None:
    plain = render_server_properties(9092, 9093, tmp_path)
    secured = properties(override_properties(plain, security.server_properties(9092, 9093)))
    assert secured["listeners"] == "SASL_SSL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert secured["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert secured["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert secured["authorizer.class.name"] == AUTHORIZER
    assert secured["allow.everyone.if.no.acl.found"] == "false"
    supers = secured["super.users"].split(";")
    assert f"User:{BROKER_PRINCIPAL}" in supers and f"User:{ADMIN_PRINCIPAL}" in supers
    assert f"User:{WORKER_PRINCIPAL}" not in supers
    assert secured["log.dirs"] == str(tmp_path)  # the rest of the template stays
    assert "listeners" in properties(plain) and "sasl.enabled.mechanisms" not in properties(plain)


def test_every_principal_is_a_scram_user_with_its_own_secret_password(
    security: BrokerSecurity,
) -> None:
    args = security.format_arguments()
    users = [a for a in args if a.startswith("SCRAM-SHA-512=[name=")]
    assert len(users) == len(security.passwords) == len(set(security.passwords.values()))
    assert (
        f"SCRAM-SHA-512=[name=channel-push,password={security.passwords['channel-push']}]" in args
    )
    for name in ("secrets.json", "broker.p12"):
        mode = (security.directory / name).stat().st_mode
        assert not mode & (stat.S_IRWXG | stat.S_IRWXO), name
    assert BrokerSecurity.load(security.directory) == security
    assert security.passwords["omni-worker"] not in repr(security.client("omni-worker"))


def test_client_env_is_read_by_the_sdk_and_the_worker_alike(
    security: BrokerSecurity, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = security.client_env("channel-mobile", "127.0.0.1:1")
    sdk = ProducerSettings.from_env(env).kafka_client_config()
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert sdk == Settings().kafka_client_config()
    assert sdk["security.protocol"] == "SASL_SSL" and sdk["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert sdk["sasl.username"] == "channel-mobile"
    assert sdk["ssl.ca.location"] == str(security.ca_file)


def test_grants_are_least_privilege_per_channel_and_for_the_worker() -> None:
    settings = Settings(topic_namespace="t1", app_id="omni-x")
    rows = grants(settings)

    def allowed(principal: str, operation: str) -> set[str]:
        return {
            g.name + ("*" if g.prefixed else "")
            for g in rows
            if g.principal == principal and operation in g.operations
        }

    assert allowed("channel-mobile", "WRITE") == {"t1.touchpoint.mobile"}
    assert allowed("channel-mobile", "READ") == {"t1.trigger.mobile", "channel-mobile*"}
    # push has only a trigger topic, telco only a touchpoint topic.
    assert allowed("channel-push", "WRITE") == set()
    assert allowed("channel-push", "READ") == {"t1.trigger.push", "channel-push*"}
    assert allowed("channel-telco", "WRITE") == {"t1.touchpoint.telco"}
    assert allowed("channel-telco", "READ") == set()
    for channel in {*TOUCHPOINT_CHANNELS, *TRIGGER_CHANNELS}:
        assert allowed(f"channel-{channel}", "CREATE") == set()
    worker_reads = allowed(WORKER_PRINCIPAL, "READ")
    assert {settings.touchpoint_topic(c) for c in TOUCHPOINT_CHANNELS} <= worker_reads
    assert {settings.customer_events_topic, "omni-x", "omni-x-*"} <= worker_reads
    assert not any(".trigger." in t for t in worker_reads)
    # The CRM audits identity.log (links, merges, refusals); nobody else reads it.
    assert allowed("channel-crm", "READ") == {"t1.trigger.crm", "t1.identity.log", "channel-crm*"}
    assert allowed(WORKER_PRINCIPAL, "WRITE") == {
        settings.customer_events_topic,
        settings.decision_topic,
        settings.identity_log_topic,
        settings.deadletter_topic,
        "omni-x-*",
        *(settings.trigger_topic(c) for c in TRIGGER_CHANNELS),
    }
    assert allowed(WORKER_PRINCIPAL, "CREATE") == {"omni-x-*"}
    bindings = acl_bindings(settings)
    assert len(bindings) == len(set(bindings))  # the admin API refuses duplicates


def test_the_readme_table_names_every_principal_with_its_grants() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("### Kafka: authentication and ACLs", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| `")
    }
    rows_of = {g.principal for g in grants(Settings()) if g.principal.startswith("channel-")}
    for principal in rows_of:
        [row] = [line for names, line in rows.items() if f"`{principal}`" in names]
        write_cell, read_cell = row.split("|")[2:4]
        mine = [g for g in grants(Settings()) if g.principal == principal]
        assert ("touchpoint." in write_cell) == any("WRITE" in g.operations for g in mine), row
        reads_topic = any(g.resource_type == "topic" and "READ" in g.operations for g in mine)
        assert ("trigger." in read_cell) == reads_topic, row
        assert ("groups" in read_cell) == any(g.resource_type == "group" for g in mine), row


def test_the_secure_switch_is_the_flag_else_omni_stack_secure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from devstack.stack import secure_requested

    monkeypatch.delenv("OMNI_STACK_SECURE", raising=False)
    assert not secure_requested()
    monkeypatch.setenv("OMNI_STACK_SECURE", "1")
    assert secure_requested() and not secure_requested(False)
    monkeypatch.setenv("OMNI_STACK_SECURE", "0")
    assert not secure_requested() and secure_requested(True)
