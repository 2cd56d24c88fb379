"""A secured local broker: SASL/SCRAM-SHA-512 over TLS, KRaft's StandardAuthorizer, ACLs.

Per stack (``BrokerSecurity.create(dir)``, reused by ``load``): a throwaway CA and a
broker certificate for 127.0.0.1/localhost (``cryptography``), a PKCS12 keystore for the
JVM, and one random password per principal. The SCRAM users are written into the
storage when it is formatted (``kafka-storage format --add-scram``), so they exist
before the broker takes its first request. Principals (README "Kafka: authentication
and ACLs"): the broker itself and ``omni-admin`` are super users; ``omni-worker`` and
one ``channel-<name>`` per channel get only what :func:`acl_bindings` grants.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from devstack.errors import DevstackError
from processors.settings import TOUCHPOINT_CHANNELS, TRIGGER_CHANNELS, Settings
from producers.config import KafkaSecurity

MECHANISM = "SCRAM-SHA-512"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
BROKER_PRINCIPAL = "omni-broker"
ADMIN_PRINCIPAL = "omni-admin"
WORKER_PRINCIPAL = "omni-worker"
#: Every channel with a touchpoint topic, a trigger topic or both (push only consumes).
CHANNELS: tuple[str, ...] = tuple(dict.fromkeys((*TOUCHPOINT_CHANNELS, *TRIGGER_CHANNELS)))
#: A throwaway stack's certificates outlive any dev session but not a forgotten laptop.
CERT_DAYS = 365


def channel_principal(channel: str) -> str:
    return f"channel-{channel}"


def principals() -> list[str]:
    return [
        BROKER_PRINCIPAL,
        ADMIN_PRINCIPAL,
        WORKER_PRINCIPAL,
        *(channel_principal(c) for c in CHANNELS),
    ]


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(b"")
    path.chmod(0o600)  # before the secret is in it
    path.write_bytes(data)


def _certificates(directory: Path, keystore_password: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "omni devstack CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        # Clients check the host name they dialled: the broker binds to loopback only.
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        directory / "broker.p12",
        pkcs12.serialize_key_and_certificates(
            b"broker",
            broker_key,
            broker_cert,
            [ca_cert],
            serialization.BestAvailableEncryption(keystore_password.encode()),
        ),
    )


@dataclass(frozen=True)
class BrokerSecurity:
    """The TLS material and SCRAM passwords of one secured local broker."""

    directory: Path
    passwords: dict[str, str]
    keystore_password: str

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.p12"

    @classmethod
    def create(cls, directory: Path) -> BrokerSecurity:
        """New CA, broker certificate and passwords in ``directory`` (owner-only files)."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        # Hex: no character the StorageTool's `[name=...,password=...]` syntax could split on.
        passwords = {name: secrets.token_hex(16) for name in principals()}
        keystore_password = secrets.token_hex(16)
        _certificates(directory, keystore_password)
        secrets_json = {"passwords": passwords, "keystore_password": keystore_password}
        _write_private(directory / "secrets.json", json.dumps(secrets_json, indent=1).encode())
        return cls(directory, passwords, keystore_password)

    @classmethod
    def load(cls, directory: Path) -> BrokerSecurity:
        try:
            data = json.loads((directory / "secrets.json").read_text())
            return cls(directory, dict(data["passwords"]), str(data["keystore_password"]))
        except (OSError, ValueError, KeyError) as exc:
            raise DevstackError(
                f"The secured broker's secrets in {directory} are unreadable ({exc}). "
                "Run `python -m devstack down --wipe` and start the secure stack again."
            ) from exc

    @classmethod
    def load_or_create(cls, directory: Path) -> BrokerSecurity:
        if (directory / "secrets.json").is_file():
            return cls.load(directory)
        return cls.create(directory)

    def client(self, principal: str) -> KafkaSecurity:
        """How ``principal`` connects (SASL_SSL, SCRAM-SHA-512, this stack's CA)."""
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism=MECHANISM,
            sasl_username=principal,
            sasl_password=self.passwords[principal],
            ssl_ca_file=str(self.ca_file),
        )

    def client_env(self, principal: str, bootstrap: str) -> dict[str, str]:
        """The OMNI_* variables that make every client of the pipeline ``principal``."""
        return {
            "OMNI_KAFKA_BOOTSTRAP": bootstrap,
            "OMNI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "OMNI_KAFKA_SASL_MECHANISM": MECHANISM,
            "OMNI_KAFKA_SASL_USERNAME": principal,
            "OMNI_KAFKA_SASL_PASSWORD": self.passwords[principal],
            "OMNI_KAFKA_SSL_CA_FILE": str(self.ca_file),
        }

    def write_env_files(self, bootstrap: str) -> Path:
        """One ``<principal>.env`` per principal (``set -a; . file``); returns the folder."""
        folder = self.directory / "env"
        folder.mkdir(exist_ok=True)
        for principal in principals():
            lines = "".join(f"{k}={v}\n" for k, v in self.client_env(principal, bootstrap).items())
            _write_private(folder / f"{principal}.env", lines.encode())
        return folder

    def format_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments creating every SCRAM user."""
        args: list[str] = []
        for name, password in self.passwords.items():
            args += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return args

    def server_properties(self, port: int, controller_port: int) -> dict[str, str]:
        """Broker properties replacing the plaintext listener (controller stays PLAINTEXT
        on loopback: SCRAM users live in the metadata the controller serves)."""
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_PRINCIPAL}" password="{self.passwords[BROKER_PRINCIPAL]}";'
        )
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": self.keystore_password,
            "ssl.key.password": self.keystore_password,
            # The broker dials itself (inter-broker listener): it trusts this stack's CA.
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "authorizer.class.name": AUTHORIZER,
            # The controller listener is PLAINTEXT, so the broker's own requests to the
            # controller (registration, heartbeats) arrive as ANONYMOUS: without it here
            # the broker never starts. That listener binds to 127.0.0.1 only.
            "super.users": f"User:{BROKER_PRINCIPAL};User:{ADMIN_PRINCIPAL};User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }


# --- ACLs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """One row of the README's ACL table: ``principal`` may ``operation`` ``resource``."""

    principal: str
    resource_type: str  # "topic" or "group"
    name: str
    prefixed: bool
    operations: tuple[str, ...]


def grants(settings: Settings) -> list[Grant]:
    """Least privilege for the worker and the channel backends, for these topic names."""
    worker = WORKER_PRINCIPAL
    out = [
        # Consume every touchpoint topic and the ordered stream it republishes.
        *(
            Grant(worker, "topic", topic, False, ("READ", "DESCRIBE"))
            for topic in [*settings.touchpoint_topics, settings.customer_events_topic]
        ),
        # Produce the ordered stream, triggers, decisions and dead letters.
        *(
            Grant(worker, "topic", topic, False, ("WRITE", "DESCRIBE"))
            for topic in [
                settings.customer_events_topic,
                *(settings.trigger_topic(c) for c in TRIGGER_CHANNELS),
                settings.decision_topic,
                settings.identity_log_topic,
                settings.deadletter_topic,
            ]
        ),
        # Its consumer group is the app id.
        Grant(worker, "group", settings.app_id, False, ("READ", "DESCRIBE")),
        # Faust's own topics (table changelogs, the assignor's leader topic) are named
        # "<app id>-...": it creates, reads and writes them.
        Grant(
            worker,
            "topic",
            f"{settings.app_id}-",
            True,
            ("CREATE", "READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS"),
        ),
    ]
    for channel in CHANNELS:
        principal = channel_principal(channel)
        if channel in TOUCHPOINT_CHANNELS:
            out.append(
                Grant(principal, "topic", settings.touchpoint_topic(channel), False,
                      ("WRITE", "DESCRIBE"))
            )  # fmt: skip
        if channel in TRIGGER_CHANNELS:
            out.append(
                Grant(principal, "topic", settings.trigger_topic(channel), False,
                      ("READ", "DESCRIBE"))
            )  # fmt: skip
            # Its consumers' groups are named after it: "channel-sms", "channel-sms-eu", ...
            out.append(Grant(principal, "group", principal, True, ("READ", "DESCRIBE")))
        if channel == "crm":
            # The CRM audits links, merges and refusals (it may undo them).
            out.append(
                Grant(principal, "topic", settings.identity_log_topic, False,
                      ("READ", "DESCRIBE"))
            )  # fmt: skip
            if channel not in TRIGGER_CHANNELS:
                out.append(Grant(principal, "group", principal, True, ("READ", "DESCRIBE")))
    return out


def acl_bindings(settings: Settings) -> list[Any]:
    """:func:`grants` as confluent-kafka ``AclBinding``s (allow, from any host)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    bindings = []
    for grant in grants(settings):
        for operation in grant.operations:
            bindings.append(
                AclBinding(
                    ResourceType[grant.resource_type.upper()],
                    grant.name,
                    ResourcePatternType.PREFIXED if grant.prefixed else ResourcePatternType.LITERAL,
                    f"User:{grant.principal}",
                    "*",
                    AclOperation[operation],
                    AclPermissionType.ALLOW,
                )
            )
    # Once each: the admin API refuses duplicates (DESCRIBE comes with READ and WRITE).
    return list(dict.fromkeys(bindings))


def create_acls(admin_config: dict[str, Any], settings: Settings, timeout: float = 30.0) -> int:
    """Create (idempotently) every ACL of :func:`grants` with a super user's client config."""
    from confluent_kafka.admin import AdminClient

    bindings = acl_bindings(settings)
    admin = AdminClient(admin_config)  # kept until the futures are done: its handle serves them
    futures = admin.create_acls(bindings, request_timeout=timeout)
    failed = []
    for binding, future in futures.items():
        try:
            future.result()
        except Exception as exc:
            failed.append(f"{binding}: {exc}")
    if failed:
        raise DevstackError(
            f"Creating {len(failed)} of {len(bindings)} Kafka ACLs failed; first: {failed[0]}. "
            "The admin client must be a super user (omni-admin) of a broker with an "
            "authorizer: check the secured broker's log."
        )
    return len(bindings)


def readable_table(rows: Iterable[Grant]) -> list[tuple[str, str, str]]:
    """(principal, resource, operations) rows, for printing the grants."""
    return [
        (
            g.principal,
            f"{g.resource_type} {g.name}{'*' if g.prefixed else ''}",
            ",".join(g.operations),
        )
        for g in rows
    ]


def env_file_hint(folder: Path) -> str:
    return (
        f"credentials per principal in {folder}{os.sep}<principal>.env "
        f"(`set -a; . {folder}{os.sep}channel-mobile.env; set +a`)"
    )
