"""What a producer needs to know: where Kafka is, the topic prefix, the contract's limits.

The contract package cannot use the worker's settings (pydantic-settings and the
worker's ~60 fields), so the SDK reads this small object instead. Names and defaults
are the worker's (``OMNI_KAFKA_BOOTSTRAP``, ``OMNI_TOPIC_NAMESPACE``, ...; README
"Settings"): ``processors/settings.py`` takes its defaults and topic naming from
here, so the two cannot drift. The worker's ``Settings`` also satisfies
:class:`ProducerTarget`, so ``TouchpointProducer(Settings())`` keeps working.

    settings = ProducerSettings(kafka_bootstrap="broker:9092")   # explicit
    settings = ProducerSettings.from_env()                        # OMNI_* variables
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from schemas.bounds import DEFAULT_MAX_FUTURE_SKEW_SECONDS

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
#: The read-model Redis (``OMNI_REDIS_URL``); ``redis://user:password@host:port/db``,
#: ``rediss://`` for TLS.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: The largest event value the worker accepts (``OMNI_MAX_EVENT_BYTES``).
DEFAULT_MAX_EVENT_BYTES = 64 * 1024
ENV_PREFIX = "OMNI_"


def namespace_prefix(namespace: str) -> str:
    """``OMNI_TOPIC_NAMESPACE`` as a topic-name prefix: '' or ending with '.'."""
    return namespace if not namespace or namespace.endswith(".") else namespace + "."


def touchpoint_topic(namespace: str, channel: str) -> str:
    return f"{namespace_prefix(namespace)}touchpoint.{channel}"


#: ``OMNI_KAFKA_SECURITY_PROTOCOL`` values (Kafka's and librdkafka's names).
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: ``OMNI_KAFKA_SASL_MECHANISM`` values every client of the pipeline supports.
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
DEFAULT_KAFKA_SECURITY_PROTOCOL = "PLAINTEXT"
DEFAULT_KAFKA_SASL_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client of the pipeline authenticates and encrypts: one value for
    librdkafka (SDK, output producer, admin, CLI) and for Faust's aiokafka clients.

    ``protocol`` PLAINTEXT with both a user name and a password is SASL_SSL: earlier
    releases switched to SASL_SSL on the credentials alone, and a deployment that set
    only those keeps working (now with ``sasl_mechanism``, SCRAM-SHA-512 by default).
    """

    protocol: str = DEFAULT_KAFKA_SECURITY_PROTOCOL
    sasl_mechanism: str = DEFAULT_KAFKA_SASL_MECHANISM
    sasl_username: str | None = None
    # Never printed: a repr of the settings ends up in logs.
    sasl_password: str | None = field(default=None, repr=False)
    #: PEM file of the CA that signed the brokers' certificates; '' = the system's CAs.
    ssl_ca_file: str = ""

    def __post_init__(self) -> None:
        protocol = self.protocol.upper()
        mechanism = self.sasl_mechanism.upper()
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={self.protocol!r} is not one of "
                f"{', '.join(KAFKA_SECURITY_PROTOCOLS)}: set one of those (SASL_SSL for a "
                "cluster with users and TLS) or unset it for PLAINTEXT"
            )
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SASL_MECHANISM={self.sasl_mechanism!r} is not one of "
                f"{', '.join(KAFKA_SASL_MECHANISMS)}: set the mechanism the cluster's "
                "listener enables (sasl.enabled.mechanisms)"
            )
        if bool(self.sasl_username) != bool(self.sasl_password):
            given, missing = (
                ("USERNAME", "PASSWORD") if self.sasl_username else ("PASSWORD", "USERNAME")
            )
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SASL_{given} is set but {ENV_PREFIX}KAFKA_SASL_{missing} "
                "is not: set both (a SASL user and its password) or neither"
            )
        if protocol == "PLAINTEXT" and self.sasl_username:
            protocol = "SASL_SSL"  # the credentials alone meant SASL_SSL before
        if protocol.startswith("SASL_") and not self.sasl_username:
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} needs a user: set "
                f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD"
            )
        if self.ssl_ca_file and not os.path.isfile(self.ssl_ca_file):
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SSL_CA_FILE={self.ssl_ca_file!r} is not a readable file: "
                "point it at the PEM file of the CA that signed the brokers' certificates, "
                "or unset it to trust the system's CAs"
            )
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "sasl_mechanism", mechanism)

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def librdkafka_config(self) -> dict[str, Any]:
        """These settings in librdkafka's names (nothing for PLAINTEXT)."""
        if self.protocol == "PLAINTEXT":
            return {}
        config: dict[str, Any] = {"security.protocol": self.protocol}
        if self.uses_sasl:
            config.update(
                {
                    "sasl.mechanisms": self.sasl_mechanism,
                    "sasl.username": self.sasl_username,
                    "sasl.password": self.sasl_password,
                }
            )
        if self.uses_tls and self.ssl_ca_file:
            config["ssl.ca.location"] = self.ssl_ca_file
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of Python clients (aiokafka): the CA file or the system's CAs,
        host names checked; None without TLS."""
        if not self.uses_tls:
            return None
        return ssl.create_default_context(cafile=self.ssl_ca_file or None)


def kafka_client_config(bootstrap: str, security: KafkaSecurity | None = None) -> dict[str, Any]:
    """librdkafka settings every confluent-kafka client of the pipeline starts from."""
    return {"bootstrap.servers": bootstrap, **(security or KafkaSecurity()).librdkafka_config()}


def check_redis_tls(url: str, ca_file: str | None) -> None:
    """ValueError naming the fix when ``OMNI_REDIS_CA_FILE`` and ``OMNI_REDIS_URL`` disagree.

    A CA file with a ``redis://`` URL would silently talk in clear to a server the
    operator meant to reach over TLS, so it is refused rather than ignored.
    """
    if ca_file is None:
        return
    scheme = urlsplit(url).scheme
    if scheme != "rediss":
        raise ValueError(
            f"OMNI_REDIS_CA_FILE is set but OMNI_REDIS_URL is a {scheme}:// URL (no TLS): "
            "use rediss://user:password@host:port/0 to reach Redis over TLS, or unset "
            "OMNI_REDIS_CA_FILE"
        )
    if not Path(ca_file).is_file():
        raise ValueError(
            f"OMNI_REDIS_CA_FILE={ca_file!r} is not a readable file: point it at the PEM "
            "certificate of the CA that signed the Redis server's certificate"
        )


def redis_client_options(ca_file: str | None) -> dict[str, Any]:
    """Keyword arguments for ``redis.Redis.from_url`` (sync or asyncio) beside the URL.

    The URL carries user, password (percent-encoded) and ``rediss://`` for TLS; the CA
    is the one thing a URL cannot say. Without it a ``rediss://`` client trusts the
    system's CAs. Server certificates are always verified (redis-py's default).
    """
    return {} if ca_file is None else {"ssl_ca_certs": ca_file}


def connect_redis(url: str, ca_file: str | None = None) -> Any:
    """A sync ``redis.Redis`` for ``url`` (user, password, TLS) and the CA file."""
    try:
        import redis
    except ImportError:
        raise ImportError(
            "A Redis client is needed (coupon claims, the read model): install it with "
            '`pip install "./contract[claims]"` (or `pip install redis`)'
        ) from None
    check_redis_tls(url, ca_file)
    return redis.Redis.from_url(url, **redis_client_options(ca_file))


class ProducerTarget(Protocol):
    """What the SDK reads from its settings (:class:`ProducerSettings` or the worker's)."""

    @property
    def kafka_bootstrap(self) -> str: ...

    @property
    def max_event_bytes(self) -> int: ...

    @property
    def max_future_skew_seconds(self) -> float: ...

    def kafka_client_config(self) -> dict[str, Any]: ...

    def touchpoint_topic(self, channel: str) -> str: ...


_T = TypeVar("_T", int, float, str)


def _parse(name: str, raw: str, kind: Callable[[str], _T], what: str) -> _T:
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not {what}: set a valid value or unset it "
            "for the default"
        ) from None


@dataclass(frozen=True)
class ProducerSettings:
    kafka_bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP
    kafka_sasl_username: str | None = None
    # Never printed: a repr of the settings ends up in logs.
    kafka_sasl_password: str | None = field(default=None, repr=False)
    #: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (README "Kafka: authentication and ACLs").
    kafka_security_protocol: str = DEFAULT_KAFKA_SECURITY_PROTOCOL
    kafka_sasl_mechanism: str = DEFAULT_KAFKA_SASL_MECHANISM
    kafka_ssl_ca_file: str = ""
    #: Prefix of every topic name (tests, shared clusters); '' in production.
    topic_namespace: str = ""
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    #: How far ahead of this clock ``occurred_at`` may be before the event is refused.
    max_future_skew_seconds: float = DEFAULT_MAX_FUTURE_SKEW_SECONDS
    #: For coupon claims (``CouponClaims.from_settings``): the till's Redis user is in it.
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    #: PEM CA for a ``rediss://`` URL; unset: the system's CAs.
    redis_ca_file: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "topic_namespace", namespace_prefix(self.topic_namespace))
        check_redis_tls(self.redis_url, self.redis_ca_file)
        self.kafka_security()  # refuses a bad combination now, not at the first send
        if self.max_event_bytes < 1 or self.max_future_skew_seconds < 0:
            raise ValueError(
                "max_event_bytes must be at least 1 and max_future_skew_seconds at least 0 "
                f"(got {self.max_event_bytes} and {self.max_future_skew_seconds})"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ProducerSettings:
        """From ``OMNI_*`` variables (names in any case, as the worker reads them), then
        ``overrides``; unset variables keep the defaults. The worker's ``.env`` file is
        not read: pass values explicitly or export them."""
        source = os.environ if environ is None else environ
        env = {k.upper(): v for k, v in source.items() if k.upper().startswith(ENV_PREFIX)}
        parsed: dict[str, Any] = {}
        for spec in fields(cls):
            raw = env.get(ENV_PREFIX + spec.name.upper())
            if raw is None:
                continue
            if spec.name == "max_event_bytes":
                parsed[spec.name] = _parse(spec.name, raw, int, "a whole number of bytes")
            elif spec.name == "max_future_skew_seconds":
                parsed[spec.name] = _parse(spec.name, raw, float, "a number of seconds")
            else:
                parsed[spec.name] = raw
        return cls(**{**parsed, **overrides})

    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username or None,
            sasl_password=self.kafka_sasl_password or None,
            ssl_ca_file=self.kafka_ssl_ca_file,
        )

    def kafka_client_config(self) -> dict[str, Any]:
        return kafka_client_config(self.kafka_bootstrap, self.kafka_security())

    def touchpoint_topic(self, channel: str) -> str:
        return touchpoint_topic(self.topic_namespace, channel)

    def redis_client(self) -> Any:
        """A sync Redis client for ``redis_url`` and ``redis_ca_file``."""
        return connect_redis(self.redis_url, self.redis_ca_file)
