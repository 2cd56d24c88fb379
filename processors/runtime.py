"""What runs beside the agents: the Redis writer, health endpoints, gauges, and the rules watch.

The health server is ours rather than Faust's web server because Faust starts
its own only after table recovery, and an orchestrator must see the worker
alive (``/livez``) while it recovers, and not ready (``/readyz``) until it has.

Rules reload on SIGHUP and, without a signal, when the rule files change: a
Kubernetes ConfigMap update swaps the mount's ``..data`` symlink and sends
nothing, so the folder is polled every ``RULES_POLL_SECONDS`` (a hash of the
``*.yaml`` files' names and contents: a few KiB read) and a change goes through
the same reload as SIGHUP.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from mode import Service

from processors.faust_adapter import FaustConsumer, recovery_completed, recovery_remaining
from processors.health import liveness
from processors.rulebook import try_reload

if TYPE_CHECKING:
    from faust.types import TP

    from processors.app import OmniApp

log = logging.getLogger(__name__)

#: How often the rules folder is compared with what was last loaded.
RULES_POLL_SECONDS = 5.0


def rules_fingerprint(directory: Path) -> str | None:
    """A hash of the names and contents of the ``*.yaml`` files a reload would read.

    Follows symlinks (a ConfigMap's files are links through ``..data``), so a swapped
    target is seen whatever its mtimes. ``None`` when the folder cannot be read now
    (mid-update, removed): the watch then keeps what it has and looks again later.
    """
    if not directory.is_dir():
        return None
    digest = hashlib.sha256()
    try:
        for path in sorted(directory.glob("*.yaml")):
            content = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + str(len(content)).encode() + b"\0")
            digest.update(content)
    except OSError:
        return None
    return digest.hexdigest()


class WorkerRuntime(Service):
    def __init__(self, app: OmniApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self._runner: web.AppRunner | None = None
        #: Source partitions whose per-partition gauges are exported (removed on revoke).
        self._gauged: set[TP] = set()
        #: The rule files as of the last load or reload attempt (the watch compares).
        self._rules_seen = rules_fingerprint(self._rules_dir)

    @property
    def _rules_dir(self) -> Path:
        return Path(self.app.pipeline.settings.rules_dir)

    def is_ready(self) -> bool:
        """Partitions assigned and tables recovered."""
        app = self.app
        try:
            return (
                not app.rebalancing
                and not app.pipeline.restore_progress.busy
                and recovery_completed(app)
                and bool(app.consumer.assignment())
            )
        except Exception:  # consumer not started yet
            return False

    async def on_start(self) -> None:
        self.app.pipeline.writer.start()
        try:
            self.loop.add_signal_handler(signal.SIGHUP, self.reload_rules)
        except (NotImplementedError, RuntimeError):  # not the main thread / not POSIX
            log.warning("SIGHUP rule reload is not available in this process")
        http = web.Application()
        http.router.add_get("/livez", self._livez)
        http.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(http, access_log=None)
        await self._runner.setup()
        settings = self.app.pipeline.settings
        await web.TCPSite(self._runner, settings.web_bind, settings.web_port).start()
        log.info(
            "Health endpoints on http://%s:%d/livez and /readyz",
            settings.web_bind,
            settings.web_port,
        )

    def reload_rules(self) -> bool:
        """Swap in the rule files as they are now; a bad set is refused, the old one runs on.

        Runs on the event loop between agent batches (batches are processed without
        awaiting), so one batch never sees two rule sets. State is untouched.
        """
        # Taken before reading: files changed during the load differ at the next look.
        self._rules_seen = rules_fingerprint(self._rules_dir)
        pipeline = self.app.pipeline
        customer = pipeline.customer
        current = customer.ctx.ruleset
        ruleset, error = try_reload(Path(pipeline.settings.rules_dir), current)
        if error is not None:
            pipeline.metrics.ruleset_reloads("refused").inc()
            pipeline.metrics.ruleset_reload_refused.set(1)
            log.error(
                "Rule reload refused, still running rule set %s: %s", current.ruleset_id, error
            )
            return False
        from processors.app import step_context

        customer.ctx = step_context(pipeline.settings, ruleset)
        pipeline.metrics.ruleset_info.remove(current.ruleset_id)
        pipeline.metrics.ruleset_info.labels(ruleset.ruleset_id).set(1)
        pipeline.metrics.know_rules(ruleset.rules)
        pipeline.metrics.ruleset_reloads("ok").inc()
        pipeline.metrics.ruleset_reload_refused.set(0)
        log.info(
            "Rule set %s replaced by %s (%d rules)",
            current.ruleset_id,
            ruleset.ruleset_id,
            len(ruleset.rules),
        )
        return True

    def check_rules(self) -> bool | None:
        """Reload when the rule files differ from the last load: the reload's outcome, or
        ``None`` when nothing changed. A refused set is not retried until the files change
        again (one error per change, not one per poll)."""
        now = rules_fingerprint(self._rules_dir)
        if now is None or now == self._rules_seen:
            return None
        log.info("Rule files changed in %s: reloading", self._rules_dir)
        return self.reload_rules()

    async def watch_rules(self, interval: float = RULES_POLL_SECONDS) -> None:
        """Look at the rules folder every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.check_rules()
            except Exception:  # never let the watch die: SIGHUP still works
                log.exception("Rules watch failed; looking again in %.0fs", interval)

    @Service.task
    async def _rules_watch(self) -> None:
        await self.watch_rules()

    @Service.task
    async def _timer_tick(self) -> None:
        """Send timer markers for due per-customer timers on this worker's partitions.

        The index is rebuilt after every rebalance (a revocation discards pending
        state, so the index may hold timers of discarded batches) and restart.
        """
        pipeline = self.app.pipeline
        interval = pipeline.settings.timer_tick_seconds
        checkpoint = pipeline.checkpoint
        indexed: tuple[int, int, frozenset[int]] | None = None
        while not self.should_stop:
            await self.sleep(interval)
            if not self.is_ready():
                indexed = None
                continue
            try:
                current = (checkpoint.generation, checkpoint.epoch, checkpoint.owned)
                if current != indexed:
                    started = time.monotonic()
                    count = pipeline.customer.rebuild_due(set(checkpoint.owned))
                    indexed = current
                    log.info(
                        "Timer index rebuilt for partitions %s: %d customers in %.2fs",
                        sorted(checkpoint.owned),
                        count,
                        time.monotonic() - started,
                    )
                pipeline.customer.fire_due(time.time())
            except Exception:  # never let the tick die: timers stay in state
                log.exception("Timer tick failed; retrying at the next tick")
                indexed = None

    async def on_stop(self) -> None:
        await self.app.pipeline.writer.stop()
        undelivered = self.app.pipeline.producer.close()
        if undelivered:
            log.warning(
                "Stopped with %d records undelivered; their events were not committed "
                "and are processed again after restart.",
                undelivered,
            )
        if self._runner is not None:
            await self._runner.cleanup()

    async def _livez(self, _: web.Request) -> web.Response:
        """200 while the event loop answers, 503 naming them when partitions are stalled."""
        pipeline = self.app.pipeline
        stall_seconds = pipeline.settings.stall_seconds
        # Not ready (recovering, rebalancing): nothing can be processed, so no stall.
        ready = self.is_ready()
        stalls = pipeline.progress.stalls(time.monotonic(), stall_seconds) if ready else []
        status, body = liveness(stalls, stall_seconds, pipeline.writer.lag_seconds)
        if status != 200:
            log.error("Liveness failing: stalled partitions %s", body["stalled"])
        return web.json_response(body, status=status)

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self.is_ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    @Service.timer(1.0)
    async def _recheck_standbys(self) -> None:
        """Standby records held for their checkpoint, checked again without new records
        (processors/standby.py); the committed positions are read at most once per
        commit interval whatever this timer does."""
        for table in self.app.tables.values():
            recheck = getattr(table.data, "recheck_standby", None)
            if recheck is None:
                continue
            try:
                recheck()
            except Exception:  # never let the timer die: the next batch or promotion decides
                log.exception("Checking held standby records of %s failed", table.name)

    @Service.timer(2.0)
    async def _update_gauges(self) -> None:
        pipeline = self.app.pipeline
        metrics = pipeline.metrics
        ready = self.is_ready()
        metrics.ready.set(1 if ready else 0)
        metrics.read_model_lag.set(pipeline.writer.lag_seconds)
        try:
            metrics.recovery_remaining.set(
                recovery_remaining(self.app) + pipeline.restore_progress.remaining
            )
            consumer = self.app.consumer
            assigned = {tp for tp in consumer.assignment() if tp.topic in pipeline.source_topics}
            self._forget_partitions(self._gauged - assigned)
            self._gauged |= assigned
            now = time.monotonic()
            for tp in assigned:
                # None until the first fetch response for tp.
                highwater: int | None = consumer.highwater(tp)
                position = await consumer.position(tp)
                if position is not None and highwater is not None:
                    lag = max(0, highwater - position)
                    metrics.consumer_lag(tp.topic, str(tp.partition)).set(lag)
                await self._observe_progress(tp, highwater, now)
            if not ready:  # recovery and rebalances never count towards a stall
                pipeline.progress.restart_clocks(now)
            self._export_progress(assigned, now)
        except Exception as exc:  # gauges are best effort; never take the worker down
            log.debug("Gauge update skipped: %r", exc)

    async def _observe_progress(self, tp: TP, highwater: int | None, now: float) -> None:
        """Feed ``tp``'s highwater and the group's committed offset to the progress tracker."""
        progress = self.app.pipeline.progress
        consumer = self.app.consumer
        # Faust's own record of the committed offset: read at assignment (so a restarted
        # worker has a baseline before its first batch) and updated by every commit.
        committed = cast(FaustConsumer, consumer).committed_offsets.get(tp)
        if committed is not None:
            progress.committed(tp, committed, now)
        if highwater is None:
            return
        if highwater > 0 and progress.needs_start(tp):
            # No commit yet (a new group): reading starts at the log start (auto reset
            # "earliest"). Asked once per assignment; the first batch makes it moot.
            earliest = await consumer.earliest_offsets(tp)
            if earliest.get(tp) is not None:
                progress.start(tp, earliest[tp], now)
        progress.observe(tp, highwater, now)

    def _export_progress(self, assigned: set[TP], now: float) -> None:
        pipeline = self.app.pipeline
        metrics = pipeline.metrics
        progress = pipeline.progress
        stalled = set(progress.stalled(now, pipeline.settings.stall_seconds))
        for tp in assigned:
            labels = (tp.topic, str(tp.partition))
            committed_lag = progress.committed_lag(tp)
            if committed_lag is not None:
                metrics.committed_lag(*labels).set(committed_lag)
            metrics.stall_seconds(*labels).set(progress.stall_seconds(tp, now))
            metrics.partition_stalled(*labels).set(1 if tp in stalled else 0)

    def _forget_partitions(self, revoked: set[TP]) -> None:
        """Stop tracking and exporting partitions this worker no longer owns."""
        if not revoked:
            return
        self.app.pipeline.progress.forget(revoked)
        metrics = self.app.pipeline.metrics
        for tp in revoked:
            labels = (tp.topic, str(tp.partition))
            for gauge in (
                metrics.consumer_lag,
                metrics.committed_lag,
                metrics.stall_seconds,
                metrics.partition_stalled,
            ):
                gauge.remove(*labels)
        self._gauged -= revoked
