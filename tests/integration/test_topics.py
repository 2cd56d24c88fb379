"""Contract topics: created idempotently, and a partition-count mismatch stops start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from devstack.provision import Provided
from processors.topics import TopicLayoutError, ensure_topics
from tests.integration.harness import make_settings

pytestmark = pytest.mark.integration


def test_ensure_topics_is_idempotent_and_refuses_other_partition_counts(
    kafka: Provided, redis_service: Provided, tmp_path: Path
) -> None:
    settings = make_settings(kafka.address, redis_service.address, tmp_path)
    created = ensure_topics(settings)
    assert sorted(created) == sorted(settings.contract_topics())
    assert ensure_topics(settings) == []

    topics = AdminClient(settings.kafka_client_config()).list_topics(timeout=10).topics
    for name in settings.contract_topics():
        assert len(topics[name].partitions) == settings.partitions

    other = settings.model_copy(update={"partitions": settings.partitions + 1})
    with pytest.raises(TopicLayoutError, match="OMNI_PARTITIONS"):
        ensure_topics(other)
