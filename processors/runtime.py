"""What runs beside the agents: the Redis writer, health endpoints, and gauges.

The health server is ours rather than Faust's web server because Faust starts
its own only after table recovery, and an orchestrator must see the worker
alive (``/livez``) while it recovers, and not ready (``/readyz``) until it has.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from mode import Service

from processors.rulebook import try_reload

if TYPE_CHECKING:
    from faust.tables.manager import TableManager

    from processors.app import OmniApp

log = logging.getLogger(__name__)


class WorkerRuntime(Service):
    def __init__(self, app: OmniApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self._runner: web.AppRunner | None = None
        self._indexed_partitions: frozenset[int] | None = None

    def is_ready(self) -> bool:
        """Partitions assigned and tables recovered."""
        app = self.app
        try:
            return (
                not app.rebalancing
                and cast("TableManager", app.tables).recovery.completed.is_set()
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
        pipeline = self.app.pipeline
        customer = pipeline.customer
        current = customer.ctx.ruleset
        ruleset, error = try_reload(Path(pipeline.settings.rules_dir), current)
        if error is not None:
            pipeline.metrics.ruleset_reloads("refused").inc()
            log.error(
                "Rule reload refused, still running rule set %s: %s", current.ruleset_id, error
            )
            return False
        from processors.app import step_context

        customer.ctx = step_context(pipeline.settings, ruleset)
        pipeline.metrics.ruleset_info.remove(current.ruleset_id)
        pipeline.metrics.ruleset_info.labels(ruleset.ruleset_id).set(1)
        pipeline.metrics.ruleset_reloads("ok").inc()
        log.info(
            "Rule set %s replaced by %s (%d rules)",
            current.ruleset_id,
            ruleset.ruleset_id,
            len(ruleset.rules),
        )
        return True

    @Service.task
    async def _timer_tick(self) -> None:
        """Fire due per-customer timers on this worker's partitions."""
        pipeline = self.app.pipeline
        interval = pipeline.settings.timer_tick_seconds
        topic = pipeline.settings.customer_events_topic
        while not self.should_stop:
            await self.sleep(interval)
            if not self.is_ready():
                self._indexed_partitions = None
                continue
            try:
                assigned = frozenset(
                    tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic
                )
                if assigned != self._indexed_partitions:
                    started = time.monotonic()
                    indexed = pipeline.customer.rebuild_due(set(assigned))
                    self._indexed_partitions = assigned
                    log.info(
                        "Timer index rebuilt for partitions %s: %d customers in %.2fs",
                        sorted(assigned),
                        indexed,
                        time.monotonic() - started,
                    )
                pipeline.customer.fire_due(time.time())
            except Exception:  # never let the tick die: timers stay in state
                log.exception("Timer tick failed; retrying at the next tick")
                self._indexed_partitions = None

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
        return web.json_response({"live": True})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self.is_ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    @Service.timer(2.0)
    async def _update_gauges(self) -> None:
        pipeline = self.app.pipeline
        metrics = pipeline.metrics
        ready = self.is_ready()
        metrics.ready.set(1 if ready else 0)
        metrics.read_model_lag.set(pipeline.writer.lag_seconds)
        try:
            tables = cast("TableManager", self.app.tables)
            metrics.recovery_remaining.set(tables.recovery.active_remaining_total())
            consumer = self.app.consumer
            for tp in consumer.assignment():
                if tp.topic not in pipeline.source_topics:
                    continue
                position = await consumer.position(tp)
                if position is not None:
                    lag = max(0, consumer.highwater(tp) - position)
                    metrics.consumer_lag(tp.topic, str(tp.partition)).set(lag)
        except Exception as exc:  # gauges are best effort; never take the worker down
            log.debug("Gauge update skipped: %r", exc)
