"""The one settings object of the pipeline.

Every field comes from an environment variable prefixed ``OMNI_`` (for example
``OMNI_KAFKA_BOOTSTRAP=broker:9092``), or from a ``.env`` file in the working
directory. Secrets are ``SecretStr`` so printing the settings never shows them.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from processors.domain.identity import DEFAULT_BLOCKED_IDENTIFIERS, DEFAULT_IDENTITY_LIMITS
from processors.domain.policy import DEFAULT_ENTITLEMENT_CHANNELS, DEFAULT_OVERDRAFT_MAX_LIMIT

# The producer side's settings (the contract package) share these names, defaults and
# topic naming; they are defined there so an SDK and the worker cannot disagree.
from producers.actions import ActionTokenKeys
from producers.config import (
    DEFAULT_KAFKA_BOOTSTRAP,
    DEFAULT_KAFKA_SASL_MECHANISM,
    DEFAULT_KAFKA_SECURITY_PROTOCOL,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_FUTURE_SKEW_SECONDS,
    DEFAULT_REDIS_URL,
    KafkaSecurity,
    check_redis_tls,
    connect_redis,
    kafka_client_config,
    namespace_prefix,
    redis_client_options,
    touchpoint_topic,
)
from schemas.identity import IDENTIFIER_TYPES

#: The rule files shipped with the package (``rules/`` at the repository root).
DEFAULT_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"

#: Channels that publish touchpoint events (``touchpoint.<channel>``).
TOUCHPOINT_CHANNELS: tuple[str, ...] = (
    "mobile",
    "web",
    "atm",
    "branch",
    "callcenter",
    "email",
    "sms",
    "telco",
    "pos",
    "kiosk",
    "tv",
    "hotel",
    "crm",
)
#: Channels that consume triggers (``trigger.<channel>``).
TRIGGER_CHANNELS: tuple[str, ...] = (
    "sms",
    "email",
    "push",
    "mobile",
    "web",
    "atm",
    "pos",
    "crm",
    "branch",
    "callcenter",
    "hotel",
    "kiosk",
)


class Settings(BaseSettings):
    """Pipeline settings; see README "Settings" for the full table."""

    model_config = SettingsConfigDict(env_prefix="OMNI_", env_file=".env", extra="ignore")

    # --- Kafka -------------------------------------------------------------
    kafka_bootstrap: str = Field(DEFAULT_KAFKA_BOOTSTRAP, description="Kafka bootstrap servers")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # One set of settings for every Kafka client: Faust's consumer, producer and topic
    # creation, the output producer, the admin, the SDK and the CLI (README "Kafka:
    # authentication and ACLs"). Checked together by _kafka_security_is_complete.
    kafka_security_protocol: str = Field(
        DEFAULT_KAFKA_SECURITY_PROTOCOL,
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (SASL_SSL when only a SASL "
        "user and password are set)",
    )
    kafka_sasl_mechanism: str = Field(
        DEFAULT_KAFKA_SASL_MECHANISM, description="SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN"
    )
    kafka_ssl_ca_file: str = Field(
        "", description="PEM file of the CA of the brokers' certificates; '' = system CAs"
    )
    topic_namespace: str = Field(
        "", description="Prefix for every topic name (tests and shared clusters); '' in prod"
    )
    # 24: a partition is processed by one worker at a time, so the count caps the workers of
    # a group, and it cannot change later without re-keying every customer's state. 24
    # divides evenly among 1, 2, 3, 4, 6, 8, 12 and 24 workers (bench/results/scaling.md).
    partitions: int = Field(24, ge=1, le=1024, description="Partition count of all contract topics")
    replication_factor: int = Field(1, ge=1)
    app_id: str = Field("omni-pipeline", description="Faust app id = consumer group id")

    # --- Redis -------------------------------------------------------------
    redis_url: SecretStr = Field(
        SecretStr(DEFAULT_REDIS_URL),
        description="Redis URL: redis://user:password@host:port/db, rediss:// for TLS",
    )
    redis_ca_file: str | None = Field(
        None, description="PEM CA that signed the Redis server's certificate (rediss:// only)"
    )
    redis_retry_max_seconds: float = Field(
        5.0, gt=0, description="Backoff ceiling while Redis is down"
    )

    # --- Worker ------------------------------------------------------------
    data_dir: str = Field(".omni/worker", description="Faust data dir (RocksDB state)")
    # Faust opens one RocksDB per table and partition with 3 x 64 MiB memtables and a
    # 2 GiB block cache each: 24 of them grew a 1M-customer worker past 3.5 GiB. Here the
    # cache and the memtable budget are per worker, shared by all its table partitions.
    rocksdb_write_buffer_mib: int = Field(
        16, ge=1, description="RocksDB memtable size per table partition (two of them), MiB"
    )
    rocksdb_memtable_budget_mib: int = Field(
        256,
        ge=16,
        description="All RocksDB memtables of the worker together, MiB (past it the largest "
        "are flushed)",
    )
    rocksdb_block_cache_mib: int = Field(
        256,
        ge=8,
        description="RocksDB block cache of the worker, shared by all its table partitions, MiB",
    )
    web_bind: str = Field("127.0.0.1", description="Address of the health and metrics endpoints")
    web_port: int = Field(6066, description="Health endpoints /livez and /readyz")
    metrics_port: int = Field(9108, description="Prometheus /metrics")
    batch_max_events: int = Field(2000, ge=1, description="Largest batch one agent step takes")
    max_event_bytes: int = Field(
        DEFAULT_MAX_EVENT_BYTES, description="Largest accepted event value"
    )
    max_event_age_seconds: float = Field(
        3600.0, gt=0, description="Marketing triggers are never sent for older events (stale)"
    )
    marketing_consent_default: bool = Field(
        True, description="Marketing consent counts as granted until withdrawn"
    )
    dedup_capacity: int = Field(
        512, ge=16, description="Event ids remembered per customer (ring), at least dedup_days"
    )
    dedup_days: int = Field(7, ge=1)
    roaming_cooldown_days: float = Field(
        30.0, ge=0, description="No second roaming offer for a country within this (rule delay)"
    )
    overdraft_default_valid_hours: int = Field(24, ge=1, le=720)
    # --- Authorised grants (processors/domain/grants.py) ---
    entitlement_channels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ENTITLEMENT_CHANNELS),
        description="Channels whose offer.accepted may grant an overdraft entitlement "
        '(JSON list, e.g. ["mobile", "web"]); from any other: refused channel_not_allowed',
    )
    overdraft_max_limit: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_OVERDRAFT_MAX_LIMIT),
        description="Largest overdraft limit an acceptance may grant, per ISO 4217 currency "
        '(JSON, e.g. {"EUR": 5000}); above it limit_too_high, another currency unknown_currency',
    )
    deadletter_raw_max_bytes: int = Field(
        8 * 1024, description="The raw field of a dead letter is cut here"
    )
    commit_interval_seconds: float = Field(1.0, gt=0, description="Offset commit interval")
    # --- Group membership (restarts within seconds) ---
    instance_id: str = Field(
        "",
        description="Static group member id (Kafka group.instance.id): a worker restarted "
        "with the same id gets its partitions back at once. Empty: derived from the host name "
        "and the data dir; must differ between workers of one group",
    )
    session_timeout_seconds: float = Field(
        6.0,
        ge=6.0,
        description="Consumer group session timeout: how long a worker that stopped "
        "heartbeating keeps its partitions (the broker's minimum is 6 s)",
    )
    standby_replicas: int = Field(
        1,
        ge=0,
        description="Standby copies of each table partition on other workers (Faust's "
        "table_standby_replicas): a worker that takes over a dead one's partitions "
        "promotes its warm copy instead of replaying the changelog; no effect with one worker",
    )
    standby_max_held_records: int = Field(
        10_000,
        ge=1,
        description="Changelog records a standby partition may hold back per table while "
        "their checkpoint has not committed; past it the partition stops following until "
        "the next rebalance",
    )
    # --- The checkpoint (processors/checkpoint.py) ---
    max_pending_events: int = Field(
        50_000,
        ge=1,
        description="Processed events whose state may wait for a commit (Redis down) before "
        "consumption pauses",
    )
    changelog_min_compaction_lag_seconds: float = Field(
        86_400.0,
        ge=0,
        description="min.compaction.lag.ms of the state changelogs: recovery skips records of "
        "uncommitted checkpoints, so the value before one must outlive compaction",
    )
    # --- Erasure and retention (README "Erasure and retention") ---
    changelog_max_compaction_lag_seconds: float = Field(
        7 * 86_400.0,
        gt=0,
        description="max.compaction.lag.ms of the state changelogs: an erased customer's "
        "values are compacted away (physically gone) at most this long after her tombstone",
    )
    changelog_delete_retention_seconds: float = Field(
        86_400.0,
        ge=0,
        description="delete.retention.ms of the state changelogs: how long a tombstone stays "
        "after compaction, for readers (a recovering worker, a rebuild) to see the deletion",
    )
    deadletter_retention_hours: float = Field(
        72.0,
        gt=0,
        description="retention.ms of touchpoint.deadletter (raw input), set when the worker "
        "creates or checks the topics",
    )
    producer_linger_ms: int = Field(5, ge=0, description="Producer batching delay")
    log_level: str = "info"

    # --- Decisioning (rules as data, contact policy) -------------------------
    rules_dir: str = Field(
        str(DEFAULT_RULES_DIR),
        description="Folder of rule files (*.yaml); SIGHUP reloads it without a restart",
    )
    # No default: a key in the code is a key anyone can read. The worker refuses to start
    # without a good one (action_token_keys(), called where tokens are signed); tools that
    # sign nothing (omni publish, deadletters, topics) run without it.
    action_token_key: SecretStr | None = Field(
        None,
        description="HMAC key signing one-tap action tokens (required by the worker): a "
        "random secret of at least 32 bytes, shared with the channel backends that verify",
    )
    action_token_previous_keys: SecretStr | None = Field(
        None,
        description="Comma-separated keys that were OMNI_ACTION_TOKEN_KEY before a rotation: "
        "tokens they signed still verify until they expire",
    )
    timeline_length: int = Field(20, ge=1, le=200, description="Interactions kept per customer")
    frequency_cap_day: int = Field(3, ge=0, description="Marketing triggers per rolling 24 h")
    frequency_cap_week: int = Field(10, ge=0, description="Marketing triggers per rolling 7 days")
    pause_after_responses: int = Field(
        2, ge=1, description="Declines/ignores of an offer type within the window that pause it"
    )
    pause_window_days: float = Field(30.0, gt=0)
    pause_for_days: float = Field(60.0, gt=0)
    quiet_hours_start: str = Field("21:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    quiet_hours_end: str = Field("08:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    default_timezone: str = Field("UTC", description="IANA zone for customers without one")
    release_spread_seconds: float = Field(
        600.0, ge=0, description="Deferred triggers are released over this many seconds"
    )
    # --- Journeys (timers in rules, carts, coupons, leads, stats) ----------------
    cart_abandon_after_seconds: float = Field(
        86400.0, gt=0, description="An unordered cart gets its reminder this long after it changed"
    )
    coupon_reminder_before_seconds: float = Field(
        86400.0, gt=0, description="An unredeemed coupon is reminded this long before it expires"
    )
    appointment_reminder_before_seconds: float = Field(
        86400.0, gt=0, description="Appointment reminders go out this long before scheduled_at"
    )
    lead_points: dict[str, float] = Field(
        default_factory=lambda: {
            "page.viewed": 5.0,
            "email.clicked": 10.0,
            "cart.updated": 15.0,
            "offer.accepted": 20.0,
            "order.placed": 30.0,
            "branch.visit": 10.0,
            "appointment.booked": 10.0,
        },
        description="Lead-score points per event type (JSON), counted over lead_window_days",
    )
    lead_threshold: float = Field(50.0, gt=0, description="Score that makes a qualified lead")
    lead_window_days: float = Field(30.0, gt=0)
    control_group_share: float = Field(
        0.0, ge=0, le=0.5, description="Share of customers held out of marketing (lift)"
    )
    timer_tick_seconds: float = Field(
        0.5, gt=0, description="How often each worker fires due per-customer timers"
    )
    # --- identity resolution (README "Identity resolution") ---
    identity_park_seconds: float = Field(
        600.0,
        ge=0,
        le=7 * 86400,
        description="How long an identified event with no known customer waits for a link "
        "before it goes to the identifier's anonymous profile",
    )
    identity_park_max_events: int = Field(
        100,
        ge=1,
        le=1000,
        description="Parked events per identifier; one more sends them all to the "
        "anonymous profile at once",
    )
    identity_limits: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_IDENTITY_LIMITS),
        description="At most this many values per identifier type per customer (JSON); a "
        "new one past it is refused (identity.refused identifier_limit)",
    )
    identity_blocked_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLOCKED_IDENTIFIERS),
        description="Identifier values (any type, compared lower-case) that never link or "
        "resolve (JSON list)",
    )
    identity_shared_device_customers: int = Field(
        3,
        ge=1,
        le=100,
        description="A device seen for more than this many customers within "
        "identity_shared_device_days is shared: it never links or merges",
    )
    identity_shared_device_days: float = Field(30.0, gt=0, le=365)
    identity_log_retention_hours: float = Field(
        168.0,
        gt=0,
        description="retention.ms of identity.log (it names identifiers), set when the "
        "worker creates or checks the topics",
    )

    # --- Health: stalled partitions (processors/health.py) --------------------------
    # 120 s: far above any legitimate pause in processing a partition with lag while the
    # worker is ready (a 2,000-event batch takes well under a second, the timer index
    # rebuild ~4 s at 1M customers; recovery and rebalances do not count, and neither
    # does Redis back-pressure), yet an ATM overdraft stuck behind a stopped partition
    # waits minutes, not hours, before the orchestrator restarts the worker.
    stall_seconds: float = Field(
        120.0,
        gt=0,
        description="A partition with lag and no processing progress this long fails /livez",
    )

    # --- Input bounds: event time and record size (schemas/bounds.py, domain/caps.py) ---
    max_future_skew_seconds: float = Field(
        DEFAULT_MAX_FUTURE_SKEW_SECONDS,
        ge=0,
        description="An occurred_at further ahead of the worker's clock is dead-lettered "
        "(future_event)",
    )
    # 256 KiB: a quarter of the broker's 1 MiB message limit, so a customer's changelog
    # record (with key and overhead) can never be refused.
    max_state_bytes: int = Field(
        256 * 1024,
        ge=64 * 1024,
        le=512 * 1024,
        description="A customer's encoded record never exceeds this; oldest items are "
        "trimmed (counted) to fit",
    )

    # --- Customer 360 API (omni api, processors/api/) ---------------------------------
    api_host: str = Field("0.0.0.0", description="Address the Customer 360 API listens on")
    api_port: int = Field(
        8081, ge=1, le=65535, description="Port of the Customer 360 API (omni api)"
    )
    # The hashes of the callers' tokens, not the tokens; still masked when printed. Parsed
    # by processors.api.auth.parse_api_tokens when the API starts (a malformed value must
    # not stop the worker): unset or empty, `omni api` refuses to start.
    api_tokens: SecretStr | None = Field(
        None,
        description='Callers of the API as JSON: {"<caller>": {"sha256": "<hex SHA-256 of its '
        'token>", "scopes": ["customers:read", "identifiers:read"]}}; required by omni api',
    )

    @field_validator("identity_limits")
    @classmethod
    def _identity_limits_name_types(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = [name for name in value if name not in IDENTIFIER_TYPES]
        if unknown or any(limit < 1 for limit in value.values()):
            raise ValueError(
                f"{value} must map identifier types ({', '.join(IDENTIFIER_TYPES)}) to limits "
                'of at least 1, as JSON, e.g. \'{"email": 5, "device_id": 10}\'; a type left '
                "out takes no identifiers of that type"
            )
        return value

    @field_validator("entitlement_channels")
    @classmethod
    def _entitlement_channels_are_touchpoints(cls, value: list[str]) -> list[str]:
        unknown = [channel for channel in value if channel not in TOUCHPOINT_CHANNELS]
        if unknown:
            raise ValueError(
                f"{unknown} are not touchpoint channels: list only channels of "
                f"{', '.join(TOUCHPOINT_CHANNELS)} (as JSON, e.g. "
                '\'["mobile", "web", "branch", "callcenter"]\')'
            )
        return value

    @field_validator("overdraft_max_limit")
    @classmethod
    def _overdraft_limits_are_per_currency(cls, value: dict[str, float]) -> dict[str, float]:
        for currency, limit in value.items():
            if len(currency) != 3 or not currency.isascii() or not currency.isupper():
                raise ValueError(
                    f"{currency!r} is not an ISO 4217 currency code: use three upper-case "
                    'letters, e.g. {"EUR": 5000, "GBP": 5000}'
                )
            if not limit > 0:
                raise ValueError(
                    f"the largest overdraft in {currency} is {limit}: give a limit above 0, "
                    "or leave the currency out to refuse overdrafts in it"
                )
        return value

    @model_validator(mode="after")
    def _compaction_lags_are_ordered(self) -> Settings:
        # The broker refuses a changelog whose min.compaction.lag.ms exceeds its max.
        if self.changelog_max_compaction_lag_seconds < self.changelog_min_compaction_lag_seconds:
            raise ValueError(
                "OMNI_CHANGELOG_MAX_COMPACTION_LAG_SECONDS "
                f"({self.changelog_max_compaction_lag_seconds:g}) is below "
                "OMNI_CHANGELOG_MIN_COMPACTION_LAG_SECONDS "
                f"({self.changelog_min_compaction_lag_seconds:g}); Kafka refuses such a "
                "changelog: raise the max or lower the min"
            )
        return self

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        self.kafka_security()  # raises ValueError naming the variable to fix
        return self

    @field_validator("topic_namespace")
    @classmethod
    def _namespace_is_a_prefix(cls, value: str) -> str:
        return namespace_prefix(value)

    @model_validator(mode="after")
    def _redis_tls_is_consistent(self) -> Settings:
        check_redis_tls(self.redis_url.get_secret_value(), self.redis_ca_file)
        return self

    # --- Redis clients (one place: user, password, TLS) ---------------------
    def redis_client_options(self) -> dict[str, Any]:
        """Keyword arguments beside the URL for ``Redis.from_url`` (sync or asyncio)."""
        return redis_client_options(self.redis_ca_file)

    def redis_client(self) -> Any:
        """A sync ``redis.Redis`` for the tools (rebuild, stats, demo)."""
        return connect_redis(self.redis_url.get_secret_value(), self.redis_ca_file)

    # --- Topic names (one place) ------------------------------------------
    def touchpoint_topic(self, channel: str) -> str:
        return touchpoint_topic(self.topic_namespace, channel)

    def group_instance_id(self) -> str:
        """This worker's static member id: the setting, else host name + data dir."""
        if self.instance_id:
            return self.instance_id
        where = f"{socket.gethostname()}:{Path(self.data_dir).resolve()}"
        return f"{self.app_id}-{hashlib.sha256(where.encode()).hexdigest()[:12]}"

    def trigger_topic(self, channel: str) -> str:
        return f"{self.topic_namespace}trigger.{channel}"

    @cached_property
    def touchpoint_topics(self) -> dict[str, str]:
        """topic name -> channel, for every input topic."""
        return {self.touchpoint_topic(c): c for c in TOUCHPOINT_CHANNELS}

    @property
    def deadletter_topic(self) -> str:
        return f"{self.topic_namespace}touchpoint.deadletter"

    @property
    def customer_events_topic(self) -> str:
        return f"{self.topic_namespace}omni.customer-events"

    @property
    def decision_topic(self) -> str:
        return f"{self.topic_namespace}decision.log"

    @property
    def identity_log_topic(self) -> str:
        return f"{self.topic_namespace}identity.log"

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Broker configs of contract topics that differ from the broker's defaults."""
        retention_ms = int(self.deadletter_retention_hours * 3_600_000)
        identity_ms = int(self.identity_log_retention_hours * 3_600_000)
        return {
            self.deadletter_topic: {"retention.ms": str(retention_ms)},
            self.identity_log_topic: {"retention.ms": str(identity_ms)},
        }

    def contract_topics(self) -> list[str]:
        """Every topic the contract names; all get ``partitions`` partitions."""
        return [
            *self.touchpoint_topics,
            self.deadletter_topic,
            self.customer_events_topic,
            self.decision_topic,
            self.identity_log_topic,
            *(self.trigger_topic(c) for c in TRIGGER_CHANNELS),
        ]

    def kafka_security(self) -> KafkaSecurity:
        """How every Kafka client authenticates (librdkafka and Faust's aiokafka alike)."""
        password = self.kafka_sasl_password
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username or None,
            sasl_password=None if password is None else password.get_secret_value() or None,
            ssl_ca_file=self.kafka_ssl_ca_file,
        )

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every confluent-kafka client we build."""
        return kafka_client_config(self.kafka_bootstrap, self.kafka_security())

    def action_token_keys(self) -> ActionTokenKeys:
        """The key tokens are signed with and the previous ones still accepted.

        Raises ``WeakActionTokenKeyError`` (a ``ValueError``) when a key is unset, a
        published example or shorter than 32 bytes, saying how to generate one.
        """
        current, previous = self.action_token_key, self.action_token_previous_keys
        return ActionTokenKeys.from_text(
            None if current is None else current.get_secret_value(),
            None if previous is None else previous.get_secret_value(),
        )

    def rule_delays(self) -> dict[str, float]:
        """Named delays rules may use (``after: cart_abandon_after``, ``cooldown:
        roaming_cooldown``, ``delays.<name>``)."""
        return {
            "cart_abandon_after": self.cart_abandon_after_seconds,
            "coupon_reminder_before": self.coupon_reminder_before_seconds,
            "appointment_reminder_before": self.appointment_reminder_before_seconds,
            "lead_window": self.lead_window_days * 86400.0,
            "roaming_cooldown": self.roaming_cooldown_days * 86400.0,
        }

    def as_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` without OMNI_* plus these settings, so ``Settings()`` in a child equals self.

        Secrets are written in clear (a child process needs them); complex values as JSON.
        """
        env = {k: v for k, v in base.items() if not k.startswith("OMNI_")}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            env[f"OMNI_{name.upper()}"] = text
        return env
