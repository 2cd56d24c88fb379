"""``create_app(settings)``: the Faust app with its topics, table, agents and endpoints.

Nothing here is global: tests and the benchmark build their own app.

    touchpoint.<channel> ──ingest──▶ omni.customer-events ──customer──▶ trigger.<channel>
            │                        (key = customer id, or     │      decision.log
            │                         <type>:<value> with the   │      identity.log
            │                         omni-kind header)         │
            └──▶ touchpoint.deadletter                           └──▶ customers, identities
                                                                      tables, Redis
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.types import StreamT, TableT
from faust.types.auth import CredentialsT
from faust.types.transports import TransportT
from prometheus_client import REGISTRY, CollectorRegistry

from processors.batching import adaptive_batches, without_acks
from processors.checkpoint import Checkpoint, CommittedOffsets
from processors.customer import CustomerProcessor
from processors.domain.contact import ContactPolicy
from processors.domain.identity import IdentityPolicy
from processors.domain.policy import DAY, Policy
from processors.domain.step import StepContext
from processors.faust_adapter import FaustApp, check_versions
from processors.health import PartitionProgress
from processors.identity import IdentityProcessor
from processors.ingest import Ingest
from processors.metrics import Metrics
from processors.monitor import LeanMonitor
from processors.output import OutputProducer, TableWriter
from processors.projection import ReadModelWriter
from processors.restore import RestoreProgress
from processors.rulebook import RuleSet, load_ruleset
from processors.settings import TRIGGER_CHANNELS, Settings
from processors.standby import StandbyPositions
from processors.store import CheckpointedTable
from processors.topics import changelog_configs
from processors.transport import new_transport
from producers.config import KafkaSecurity
from schemas import EventValidator

log = logging.getLogger(__name__)

MIB = 1024 * 1024

# Our code does the (orjson) decoding: Faust only moves bytes. (Agents re-derive
# their topic's schema from these arguments, so topics get them spelled out.)
RAW_ARGS: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


@dataclass(slots=True)
class Pipeline:
    """The parts of a running worker, for endpoints, tests and tools."""

    settings: Settings
    metrics: Metrics
    table: TableT[bytes, bytes]
    writer: ReadModelWriter
    #: Every record the worker emits goes through it; flushed before each commit.
    producer: OutputProducer
    #: Orders outputs, offset commits and local state (processors/checkpoint.py).
    checkpoint: Checkpoint
    source_topics: frozenset[str]
    customer: CustomerProcessor
    #: Health: processed/committed/highwater offsets per source partition; /livez
    #: fails on a stalled one. Agents call processed(), the commit path committed().
    progress: PartitionProgress
    #: Bulk changelog restores running now (processors/restore.py): not ready meanwhile.
    restore_progress: RestoreProgress
    #: Committed positions of standby partitions, read afresh (another worker commits).
    standby_positions: StandbyPositions


class OmniApp(FaustApp):
    pipeline: Pipeline

    def new_transport(self) -> TransportT:
        # Bulk delivery from the fetch loop, so agents see real batches.
        return new_transport(self)


def contact_policy(settings: Settings) -> ContactPolicy:
    return ContactPolicy(
        frequency_cap_day=settings.frequency_cap_day,
        frequency_cap_week=settings.frequency_cap_week,
        pause_after=settings.pause_after_responses,
        pause_window=settings.pause_window_days * DAY,
        pause_for=settings.pause_for_days * DAY,
        quiet_start=settings.quiet_hours_start,
        quiet_end=settings.quiet_hours_end,
        default_timezone=settings.default_timezone,
        release_spread_seconds=int(settings.release_spread_seconds),
        history_slack=min(7 * DAY, max(DAY, settings.max_event_age_seconds)),
    )


def step_context(settings: Settings, ruleset: RuleSet) -> StepContext:
    """What ``step`` needs, for one rule set (a reload builds a new one).

    Raises ``WeakActionTokenKeyError`` when ``OMNI_ACTION_TOKEN_KEY`` (or a previous key)
    is unset, public or too short: nothing signs action tokens with a key others may know.
    """
    return StepContext(
        policy=Policy.from_settings(settings),
        contact=contact_policy(settings),
        ruleset=ruleset,
        action_key=settings.action_token_keys().current,
        timeline_length=settings.timeline_length,
        lead_points=dict(settings.lead_points),
        lead_threshold=settings.lead_threshold,
        lead_window=settings.lead_window_days * DAY,
        control_share=settings.control_group_share,
        identity=IdentityPolicy.from_settings(settings),
    )


def broker_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for these settings: its consumer, producer and
    topic creation (changelogs) authenticate like every librdkafka client does."""
    context = security.ssl_context()
    if security.uses_sasl:
        # With an SSL context Faust speaks SASL_SSL, without one SASL_PLAINTEXT.
        return faust.SASLCredentials(
            username=security.sasl_username,
            password=security.sasl_password,
            mechanism=security.sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(settings: Settings, registry: CollectorRegistry = REGISTRY) -> OmniApp:
    """The worker's app. A bad rule file raises ``RuleFileError`` naming it, a missing or
    weak ``OMNI_ACTION_TOKEN_KEY`` ``WeakActionTokenKeyError``: fix and restart."""
    settings.action_token_keys()  # first: refuse before anything is built or connected
    check_versions()
    ruleset = load_ruleset(Path(settings.rules_dir), settings.rule_delays())
    app = OmniApp(
        settings.app_id,
        broker="kafka://" + settings.kafka_bootstrap.replace(",", ";"),
        broker_credentials=broker_credentials(settings.kafka_security()),
        store="rocksdb://",
        datadir=settings.data_dir,
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        # Static membership: a restarted worker (SIGKILL or SIGTERM) rejoins as the same
        # member and gets its partitions back without waiting out a session timeout; a
        # worker that is gone for good loses them after a short session timeout.
        consumer_group_instance_id=settings.group_instance_id(),
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.session_timeout_seconds / 4,
        # Health endpoints are served by WorkerRuntime (also during recovery).
        web_enabled=False,
        # Commit often: offsets only move once the read model has the batch.
        broker_commit_interval=settings.commit_interval_seconds,
        producer_linger_ms=settings.producer_linger_ms,
        producer_acks=-1,
        # A fetch never overfills an agent's queue: Faust pauses a partition at 80 % of
        # the buffer and a fetch brings at most half a batch more, so delivery never
        # takes Faust's blocking path (a task and a wait per message, measured).
        stream_buffer_maxsize=4 * settings.batch_max_events,
        broker_max_poll_records=max(1, settings.batch_max_events // 2),
        monitor=LeanMonitor(),
        # Standbys hold back records of uncommitted checkpoints (processors/standby.py).
        table_standby_replicas=settings.standby_replicas,
        # Tables on a store whose recovery skips records of uncommitted checkpoints.
        Table=CheckpointedTable,
        # A revocation completes or discards the pending checkpoint itself
        # (BulkDeliveryConsumer.on_partitions_revoked); Faust's wait for every
        # delivered event to be acked would hang a rebalance while Redis is down.
        stream_wait_empty=False,
        # Raw bytes everywhere: a decode error inside Faust's stream would crash
        # the agent before our per-event error handling could dead-letter it.
        key_serializer="raw",
        value_serializer="raw",
    )
    metrics = Metrics(registry)

    touchpoints = app.topic(*settings.touchpoint_topics, **RAW_ARGS)
    customer_events = app.topic(
        settings.customer_events_topic, partitions=settings.partitions, **RAW_ARGS
    )
    store_options = {
        "write_buffer_size": settings.rocksdb_write_buffer_mib * MIB,
        "max_write_buffer_number": 2,
        # Shared by every table partition of this worker (processors/store.py).
        "block_cache_size": settings.rocksdb_block_cache_mib * MIB,
        "memtable_budget": settings.rocksdb_memtable_budget_mib * MIB,
    }

    def state_table(name: str) -> TableT[bytes, bytes]:
        return app.Table(
            name,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            options=dict(store_options),  # Faust pops keys from it: one copy each
            # Compaction: recovery's filter needs the value before a skipped record (min
            # lag); an erasure needs her old values gone within a bound (max lag,
            # delete retention). processors/topics.py says why each.
            extra_topic_configs={
                name: int(value) for name, value in changelog_configs(settings).items()
            },
        )

    # One record per customer: state and timeline (processors/domain/record_codec.py).
    table = state_table("customers")
    # Timelines of records written before records held them: read as a fallback and
    # deleted as their customers are written (and at an erasure); kept so that a
    # store or changelog of an older worker still loads.
    timelines = state_table("timelines")
    # Offer performance per rule and channel, per partition (S11).
    stats = state_table("stats")
    # Identifier records (links, parked events, devices' customers), keyed
    # "<type>:<value>" on the same topic and checkpoint (processors/identity.py).
    identities = state_table("identities")
    writer = ReadModelWriter(
        settings.redis_url.get_secret_value(),
        metrics,
        settings.redis_retry_max_seconds,
        client_options=settings.redis_client_options(),
    )
    producer = OutputProducer(settings.kafka_client_config(), settings.producer_linger_ms)
    records = TableWriter(table, producer)
    timeline_records = TableWriter(timelines, producer)
    stats_records = TableWriter(stats, producer)
    identity_records = TableWriter(identities, producer)
    progress = PartitionProgress()
    committed_offsets = CommittedOffsets(
        settings.kafka_client_config(), settings.app_id, settings.customer_events_topic
    )
    checkpoint = Checkpoint(
        producer,
        (records, timeline_records, stats_records, identity_records),
        settings.customer_events_topic,
        committed_offsets,
        settings.max_pending_events,
        on_committed=progress.committed,
        on_skipped=metrics.changelog_records_skipped.inc,
    )
    identity_policy = IdentityPolicy.from_settings(settings)
    ingest = Ingest(
        settings,
        EventValidator(),
        metrics,
        producer,
        settings.customer_events_topic,
        settings.deadletter_topic,
        identity_policy,
    )
    customer = CustomerProcessor(
        settings=settings,
        ctx=step_context(settings, ruleset),
        metrics=metrics,
        producer=producer,
        checkpoint=checkpoint,
        records=records,
        timelines=timeline_records,
        stats=stats_records,
        trigger_topics={c: settings.trigger_topic(c) for c in TRIGGER_CHANNELS},
        customer_events_topic=settings.customer_events_topic,
        decision_topic=settings.decision_topic,
        deadletter_topic=settings.deadletter_topic,
        writer=writer,
        identity=IdentityProcessor(
            policy=identity_policy,
            metrics=metrics,
            producer=producer,
            records=identity_records,
            customer_events_topic=settings.customer_events_topic,
            identity_log_topic=settings.identity_log_topic,
        ),
        identity_log_topic=settings.identity_log_topic,
    )
    metrics.ruleset_info.labels(ruleset.ruleset_id).set(1)
    metrics.know_rules(ruleset.rules)
    app.pipeline = Pipeline(
        settings=settings,
        metrics=metrics,
        table=table,
        writer=writer,
        producer=producer,
        checkpoint=checkpoint,
        source_topics=frozenset([*settings.touchpoint_topics, settings.customer_events_topic]),
        customer=customer,
        progress=progress,
        restore_progress=RestoreProgress(),
        # One OffsetFetch per commit interval at most: the other worker commits that often,
        # and it blocks the event loop (recovery applies changelog batches synchronously).
        standby_positions=StandbyPositions(
            lambda partitions: committed_offsets.fetch(partitions, timeout=2.0),
            interval=settings.commit_interval_seconds,
        ),
    )
    batch_size = metrics.batch_events
    batch_seconds = metrics.batch_seconds

    @app.agent(touchpoints, name="ingest")
    async def ingest_agent(stream: StreamT[bytes]) -> None:
        stream = without_acks(stream)
        async for batch in adaptive_batches(stream, settings.batch_max_events):
            with batch_seconds("ingest").time():
                ingest.process(batch)
                progress.processed_events(batch)
                producer.poll()
            batch_size("ingest").observe(len(batch))
            for event in batch:
                await stream.ack(event)

    @app.agent(customer_events, name="customer")
    async def customer_agent(stream: StreamT[bytes]) -> None:
        stream = without_acks(stream)
        async for batch in adaptive_batches(stream, settings.batch_max_events):
            # Back-pressure: too many processed events wait for a commit (Redis down).
            await checkpoint.room()

            async def ack(batch: list[Any] = batch, epoch: int = checkpoint.epoch) -> None:
                if epoch != checkpoint.epoch:
                    return  # discarded at a revocation: its events are redone, not acked
                for event in batch:
                    await stream.ack(event)

            with batch_seconds("customer").time():
                customer.process(batch, ack)
                progress.processed_events(batch)
            batch_size("customer").observe(len(batch))

    return app
