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


def kafka_client_config(
    bootstrap: str, sasl_username: str | None = None, sasl_password: str | None = None
) -> dict[str, Any]:
    """librdkafka settings every confluent-kafka client of the pipeline starts from."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap}
    if sasl_username and sasl_password:
        config.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": "PLAIN",
                "sasl.username": sasl_username,
                "sasl.password": sasl_password,
            }
        )
    return config


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

    def kafka_client_config(self) -> dict[str, Any]:
        return kafka_client_config(
            self.kafka_bootstrap, self.kafka_sasl_username, self.kafka_sasl_password
        )

    def touchpoint_topic(self, channel: str) -> str:
        return touchpoint_topic(self.topic_namespace, channel)

    def redis_client(self) -> Any:
        """A sync Redis client for ``redis_url`` and ``redis_ca_file``."""
        return connect_redis(self.redis_url, self.redis_ca_file)
