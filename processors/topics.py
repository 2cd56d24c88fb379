"""Create the contract topics, all with the same partition count (idempotent)."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from processors.settings import Settings

log = logging.getLogger(__name__)


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
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(name, settings.partitions, settings.replication_factor) for name in missing],
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
