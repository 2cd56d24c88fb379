"""Prometheus metrics of the worker. Labels are low-cardinality (never a customer id)
and bound once per label value, so the hot path only does an ``inc``."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from processors.domain import reasons
from processors.domain.identity import IDENTITY_REFUSALS
from schemas import REJECTION_REASONS

if TYPE_CHECKING:
    from processors.rulebook.model import CompiledRule

M = TypeVar("M", Counter, Gauge, Histogram)

#: Channels a ``preferred`` trigger can resolve to (profile ``preferred_channel``).
PREFERRED_CHANNELS = ("sms", "email", "push")
#: Reasons a decision can be suppressed with first (the ``reason`` label): grant refusals
#: come second, after ``unauthorized``.
FIRST_SUPPRESSION_REASONS = (
    reasons.EXPIRED,
    reasons.STALE,
    reasons.CONSENT,
    reasons.PROFILE,
    reasons.COOLDOWN,
    reasons.PAUSED,
    reasons.FREQUENCY_CAP,
    reasons.QUIET_HOURS,
    reasons.ARBITRATION,
    reasons.CONTROL_GROUP,
    reasons.UNAUTHORIZED,
)
#: Offer outcomes a rule's conversion is computed from (dashboard, ``omni stats``).
OFFER_OUTCOMES = ("emitted", "accepted", "declined", "ignored")
#: ``reason`` labels of ``omni_read_model_writes_dropped`` (processors.projection.drop_reason).
READ_MODEL_DROP_REASONS = ("wrong_type", "no_permission", "invalid_expire", "refused")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Bound(Generic[M]):
    """Children of a labelled metric, created on first use and cached."""

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[Hashable, M] = {}

    def __call__(self, *labels: str) -> M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child

    def remove(self, *labels: str) -> None:
        """Stop exporting one child (e.g. a revoked partition's gauge)."""
        if self._children.pop(labels, None) is not None:
            self._metric.remove(*labels)


class Metrics:
    """Every metric the worker exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.ingested = Bound(
            Counter(
                "omni_events_ingested",
                "Valid touchpoint events forwarded by the ingest agent",
                ["channel", "type"],
                registry=r,
            )
        )
        self.deadlettered = Bound(
            Counter(
                "omni_events_deadlettered",
                "Messages sent to the dead-letter topic",
                ["reason"],
                registry=r,
            )
        )
        # The same dead letters by the channel of the source topic (touchpoint.<channel>;
        # "none" for a topic that is not one, e.g. the customer step's processing_error),
        # so a spike from one channel backend shows (and alerts) without being diluted by
        # the others. Both labels are closed sets.
        self.deadlettered_by_channel = Bound(
            Counter(
                "omni_events_deadlettered_by_channel",
                "Messages sent to the dead-letter topic, by source channel and reason",
                ["channel", "reason"],
                registry=r,
            )
        )
        self.processed = Counter(
            "omni_events_processed", "Events folded into customer state", registry=r
        )
        self.duplicates = Counter(
            "omni_events_duplicate", "Events dropped as duplicates (same event_id)", registry=r
        )
        self.dedup_early_evictions = Counter(
            "omni_dedup_early_evictions",
            "Event ids evicted from a full dedup ring before dedup_days passed",
            registry=r,
        )
        self.triggers = Bound(
            Counter(
                "omni_triggers_emitted",
                "Triggers sent to channels",
                ["trigger_type", "channel"],
                registry=r,
            )
        )
        self.suppressed = Bound(
            Counter(
                "omni_decisions_suppressed",
                "Decisions not emitted, by first reason",
                ["trigger_type", "reason"],
                registry=r,
            )
        )
        self.trigger_latency = Bound(
            Histogram(
                "omni_event_to_trigger_latency_seconds",
                "From the touchpoint event's produce time to the trigger's delivery",
                ["trigger_type"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            )
        )
        self.redis_write_errors = Counter(
            "omni_redis_write_errors", "Failed Redis pipeline writes (retried)", registry=r
        )
        # --- Input bounds: refused Redis writes, trimmed customer records -----------------
        self.read_model_writes_dropped = Bound(
            Counter(
                "omni_read_model_writes_dropped",
                "Read-model writes Redis refused for their key (wrong_type, invalid_expire, "
                "no_permission, refused): logged and dropped, not retried",
                ["reason"],
                registry=r,
            )
        )
        self.state_items_dropped = Bound(
            Counter(
                "omni_state_items_dropped",
                "Items dropped from customer records by a cap (count or OMNI_MAX_STATE_BYTES), "
                "by collection",
                ["collection"],
                registry=r,
            )
        )
        self.read_model_lag = Gauge(
            "omni_read_model_lag_seconds",
            "Age of the oldest read-model write not yet in Redis (0 = converged)",
            registry=r,
        )
        self.consumer_lag = Bound(
            Gauge(
                "omni_consumer_lag_messages",
                "Messages behind the high watermark",
                ["topic", "partition"],
                registry=r,
            )
        )
        # --- Health: per-partition progress (processors/health.py) --------------------
        # Set by the runtime's gauge timer for each assigned source partition and removed
        # when the partition is revoked, so a moved partition never alerts from here.
        self.committed_lag = Bound(
            Gauge(
                "omni_consumer_committed_lag_messages",
                "Messages past the group's committed offset (read again after a crash); "
                "grows while Redis is down, since offsets wait for the read model",
                ["topic", "partition"],
                registry=r,
            )
        )
        self.stall_seconds = Bound(
            Gauge(
                "omni_partition_stall_seconds",
                "Seconds this partition has had messages waiting and none processed "
                "(0 = progressing or idle)",
                ["topic", "partition"],
                registry=r,
            )
        )
        self.partition_stalled = Bound(
            Gauge(
                "omni_partition_stalled",
                "1 when the partition has had lag and no processing progress for "
                "OMNI_STALL_SECONDS (then /livez fails), else 0",
                ["topic", "partition"],
                registry=r,
            )
        )
        self.recovery_remaining = Gauge(
            "omni_table_recovery_remaining_messages",
            "Changelog messages left to restore before tables are ready",
            registry=r,
        )
        self.ready = Gauge(
            "omni_worker_ready", "1 when partitions are assigned and tables recovered", registry=r
        )
        self.batch_events = Bound(
            Histogram(
                "omni_batch_events",
                "Events per agent batch",
                ["agent"],
                buckets=BATCH_BUCKETS,
                registry=r,
            )
        )
        self.batch_seconds = Bound(
            Histogram(
                "omni_batch_duration_seconds",
                "Time to process one agent batch",
                ["agent"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            )
        )
        self.decisions = Bound(
            Counter(
                "omni_decisions",
                "Decisions logged, by rule and outcome (emitted, suppressed, deferred, released)",
                ["rule", "outcome"],
                registry=r,
            )
        )
        self.rule_errors = Bound(
            Counter(
                "omni_rule_errors",
                "Rule expressions that failed at run time (treated as no match)",
                ["rule"],
                registry=r,
            )
        )
        self.offer_outcomes = Bound(
            Counter(
                "omni_offer_outcomes",
                "Offer performance by rule and channel: emitted, suppressed:<reason>, deferred, "
                "released, accepted, declined, ignored, control_accepted",
                ["rule", "channel", "outcome"],
                registry=r,
            )
        )
        self.offer_accepted_value = Bound(
            Counter(
                "omni_offer_accepted_value",
                "Sum of the value of accepted offers, by rule and channel",
                ["rule", "channel"],
                registry=r,
            )
        )
        self.timers_fired = Counter(
            "omni_timers_fired", "Per-customer timers fired by the tick", registry=r
        )
        # --- the checkpoint (processors/checkpoint.py) ---
        self.timer_failures = Counter(
            "omni_timer_failures",
            "Timer firings that raised; the timers stay in the record and are retried",
            registry=r,
        )
        self.changelog_records_skipped = Counter(
            "omni_changelog_records_skipped",
            "Changelog records of uncommitted checkpoints skipped by recovery",
            registry=r,
        )
        self.pending_events = Gauge(
            "omni_checkpoint_pending_events",
            "Processed events whose state waits for their offsets to be committed",
            registry=r,
        )
        self.timers_refused = Counter(
            "omni_timers_refused",
            "Timers not scheduled because a customer's list was full",
            registry=r,
        )
        self.timers_cancelled = Counter(
            "omni_timers_cancelled",
            "Rule timers cancelled by the event that made them moot",
            registry=r,
        )
        self.timers_dropped = Counter(
            "omni_timers_dropped",
            "Rule timers dropped because a reload removed their rule",
            registry=r,
        )
        self.timer_lag = Histogram(
            "omni_timer_lag_seconds",
            "How late a timer fired after its due time",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.timers_pending = Gauge(
            "omni_timers_pending_customers", "Customers with a timer scheduled", registry=r
        )
        self.ruleset_reloads = Bound(
            Counter(
                "omni_ruleset_reloads",
                "Rule set reloads on SIGHUP, by result (ok, refused)",
                ["result"],
                registry=r,
            )
        )
        self.ruleset_reload_refused = Gauge(
            "omni_ruleset_reload_refused",
            "1 when the last rule set reload was refused (the rules on disk are not the ones "
            "running), 0 after a successful one or a (re)start",
            registry=r,
        )
        self.ruleset_info = Gauge(
            "omni_ruleset_info", "The running rule set (value 1)", ["ruleset"], registry=r
        )
        # --- identity resolution (processors/identity.py) ---
        self.identity_events = Bound(
            Counter(
                "omni_identity_events",
                "Identified events by what resolution did: parked (waiting for a link), "
                "resolved (to a known customer), anonymous (to the identifier's anonymous "
                "profile)",
                ["outcome"],
                registry=r,
            )
        )
        self.identity_records = Bound(
            Counter(
                "omni_identity_records",
                "identity.log records: links, unlinks, merges and refusals (reason)",
                ["type", "reason"],
                registry=r,
            )
        )
        self.identity_blocked = Counter(
            "omni_identity_blocked_values",
            "Identifiers an event carried with a blocked value (OMNI_IDENTITY_BLOCKED_VALUES), "
            "ignored",
            registry=r,
        )
        # Known label values start at 0, so a dashboard panel or a rate() over an idle
        # worker shows 0 rather than "no data", and the first increment is a visible
        # step from 0 (increase() misses a series' first sample).
        for reason in REJECTION_REASONS:
            self.deadlettered(reason)
        for reason in READ_MODEL_DROP_REASONS:
            self.read_model_writes_dropped(reason)
        for result in ("ok", "refused"):
            self.ruleset_reloads(result)
        for outcome in ("parked", "resolved", "anonymous"):
            self.identity_events(outcome)
        for record_type in ("identity.linked", "identity.unlinked", "identity.merged"):
            self.identity_records(record_type, "none")
        for reason in IDENTITY_REFUSALS:
            self.identity_records("identity.refused", reason)

    def know_rules(self, rules: Iterable[CompiledRule]) -> None:
        """Start each rule's label values at 0 (at start and after a reload).

        Bounded by the rule files (rules x their few channels), never by customers.
        A rule dropped by a reload keeps its series until restart, like its counts.
        """
        for rule in rules:
            channels = {rule.channel}
            if rule.channel == "preferred":
                channels = {*PREFERRED_CHANNELS, rule.fallback_channel or "email"}
            for channel in sorted(channels):
                self.triggers(rule.trigger_type, channel)
                for outcome in OFFER_OUTCOMES:
                    self.offer_outcomes(rule.id, channel, outcome)
                self.offer_accepted_value(rule.id, channel)
            for reason in FIRST_SUPPRESSION_REASONS:
                self.suppressed(rule.trigger_type, reason)
            self.rule_errors(rule.id)
            self.trigger_latency(rule.trigger_type)
