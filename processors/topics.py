"""Create the contract topics, all with the same partition count (idempotent), and keep
the retention settings of the topics that hold personal data where the settings say."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from processors.settings import Settings

log = logging.getLogger(__name__)


#: The worker's tables; each has a changelog topic ``<app id>-<table>-changelog`` (Faust).
STATE_TABLES: tuple[str, ...] = ("customers", "timelines", "stats", "identities")


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Broker configs of every state changelog (Faust creates them with these).

    ``min.compaction.lag.ms``: recovery skips records of uncommitted checkpoints, so the
    value before one must outlive compaction. ``max.compaction.lag.ms``: an erased
    customer's old values are compacted away (the active segment rolled) within this lag
    of her tombstone. ``delete.retention.ms``: the tombstone itself stays this long after.
    """
    return {
        "min.compaction.lag.ms": str(int(settings.changelog_min_compaction_lag_seconds * 1000)),
        "max.compaction.lag.ms": str(int(settings.changelog_max_compaction_lag_seconds * 1000)),
        "delete.retention.ms": str(int(settings.changelog_delete_retention_seconds * 1000)),
    }


def changelog_topic_names(settings: Settings) -> list[str]:
    return [f"{settings.app_id}-{table}-changelog" for table in STATE_TABLES]


class TopicLayoutError(RuntimeError):
    """A contract topic exists with a partition count other than the configured one."""


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing contract topics; returns the names created.

    Raises :class:`TopicLayoutError` when an existing topic has another
    partition count: keys would land on other partitions than the customer
    state expects, so we refuse to start rather than split a customer's history.
    """
    admin = AdminClient(settings.kafka_client_config())
    existing = admin.list_topics(timeout=timeout).topics
    wanted = settings.contract_topics()
    wrong = {
        name: len(existing[name].partitions)
        for name in wanted
        if name in existing and len(existing[name].partitions) != settings.partitions
    }
    if wrong:
        raise TopicLayoutError(
            f"Topics {wrong} have a partition count other than OMNI_PARTITIONS="
            f"{settings.partitions}. All contract topics must have the same count: set "
            "OMNI_PARTITIONS to match the cluster, or recreate the topics."
        )
    configs = settings.topic_configs()
    # Topics made before a setting changed (or by an older worker) get it too; Faust
    # never alters a changelog it created.
    present = {name: configs[name] for name in configs if name in existing}
    present.update({name: changelog_configs(settings) for name in changelog_topic_names(settings)})
    align_topic_configs(admin, {n: c for n, c in present.items() if n in existing}, timeout)
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                settings.partitions,
                settings.replication_factor,
                config=configs.get(name, {}),
            )
            for name in missing
        ],
        operation_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            # Another process (a second worker, make up) created it first: fine.
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    log.info("Created topics: %s", ", ".join(created))
    return created


def align_topic_configs(
    admin: AdminClient, wanted: dict[str, dict[str, str]], timeout: float = 30.0
) -> list[str]:
    """Set the configs in ``wanted`` (topic -> name -> value) where a topic differs;
    returns the topics changed. Other configs of those topics are left as they are."""
    if not wanted:
        return []
    described = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, name) for name in wanted],
        request_timeout=timeout,
    )
    changes = []
    for resource, future in described.items():
        try:
            current = future.result()
        except KafkaException as exc:
            if not _not_authorized(exc):
                raise
            # A least-privilege worker may not read topic configs: topic configs are the
            # admin's (`python -m processors topics` as an admin principal, the topics Job).
            log.warning(
                "Topic configs of %s not checked: this principal may not describe them (%s). "
                "Run `python -m processors topics` as an admin principal to align retention "
                "and compaction",
                resource.name,
                exc.args[0].name(),
            )
            continue
        differs = {
            key: value
            for key, value in wanted[resource.name].items()
            if key not in current or current[key].value != value
        }
        if differs:
            entries = [
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in differs.items()
            ]
            changes.append(
                ConfigResource(
                    ConfigResource.Type.TOPIC, resource.name, incremental_configs=entries
                )
            )
    if not changes:
        return []
    changed = []
    altered = admin.incremental_alter_configs(changes, request_timeout=timeout)
    for resource, future in altered.items():
        try:
            future.result()
        except KafkaException as exc:
            if not _not_authorized(exc):
                raise
            log.warning(
                "Topic configs of %s differ from the settings but this principal may not "
                "alter them (%s). Run `python -m processors topics` as an admin principal",
                resource.name,
                exc.args[0].name(),
            )
            continue
        changed.append(resource.name)
    changed.sort()
    if not changed:
        return []
    log.info("Aligned topic configs (retention, compaction) of: %s", ", ".join(changed))
    return changed


def _not_authorized(exc: KafkaException) -> bool:
    return exc.args[0].code() in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    )
