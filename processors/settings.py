"""The one settings object of the pipeline.

Every field comes from an environment variable prefixed ``OMNI_`` (for example
``OMNI_KAFKA_BOOTSTRAP=broker:9092``), or from a ``.env`` file in the working
directory. Secrets are ``SecretStr`` so printing the settings never shows them.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    topic_namespace: str = Field(
        "", description="Prefix for every topic name (tests and shared clusters); '' in prod"
    )
    partitions: int = Field(8, ge=1, le=1024, description="Partition count of all contract topics")
    replication_factor: int = Field(1, ge=1)
    app_id: str = Field("omni-pipeline", description="Faust app id = consumer group id")

    # --- Redis -------------------------------------------------------------
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"), description="Redis URL (may carry a password)"
    )
    redis_retry_max_seconds: float = Field(
        5.0, gt=0, description="Backoff ceiling while Redis is down"
    )

    # --- Worker ------------------------------------------------------------
    data_dir: str = Field(".omni/worker", description="Faust data dir (RocksDB state)")
    web_bind: str = Field("127.0.0.1", description="Address of the health and metrics endpoints")
    web_port: int = Field(6066, description="Health endpoints /livez and /readyz")
    metrics_port: int = Field(9108, description="Prometheus /metrics")
    batch_max_events: int = Field(2000, ge=1, description="Largest batch one agent step takes")
    max_event_bytes: int = Field(64 * 1024, description="Largest accepted event value")
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
    roaming_cooldown_days: float = Field(30.0, ge=0)
    overdraft_default_valid_hours: int = Field(24, ge=1, le=720)
    deadletter_raw_max_bytes: int = Field(
        8 * 1024, description="The raw field of a dead letter is cut here"
    )
    commit_interval_seconds: float = Field(1.0, gt=0, description="Offset commit interval")
    producer_linger_ms: int = Field(5, ge=0, description="Producer batching delay")
    log_level: str = "info"

    @field_validator("topic_namespace")
    @classmethod
    def _namespace_is_a_prefix(cls, value: str) -> str:
        if value and not value.endswith("."):
            value += "."
        return value

    # --- Topic names (one place) ------------------------------------------
    def touchpoint_topic(self, channel: str) -> str:
        return f"{self.topic_namespace}touchpoint.{channel}"

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

    def contract_topics(self) -> list[str]:
        """Every topic the contract names; all get ``partitions`` partitions."""
        return [
            *self.touchpoint_topics,
            self.deadletter_topic,
            self.customer_events_topic,
            self.decision_topic,
            *(self.trigger_topic(c) for c in TRIGGER_CHANNELS),
        ]

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every confluent-kafka client we build."""
        config: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        if self.kafka_sasl_username and self.kafka_sasl_password:
            config.update(
                {
                    "security.protocol": "SASL_SSL",
                    "sasl.mechanisms": "PLAIN",
                    "sasl.username": self.kafka_sasl_username,
                    "sasl.password": self.kafka_sasl_password.get_secret_value(),
                }
            )
        return config
