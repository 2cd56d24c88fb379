"""What runs beside the agents: the Redis writer, health endpoints, and gauges.

The health server is ours rather than Faust's web server because Faust starts
its own only after table recovery, and an orchestrator must see the worker
alive (``/livez``) while it recovers, and not ready (``/readyz``) until it has.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from mode import Service

if TYPE_CHECKING:
    from faust.tables.manager import TableManager

    from processors.app import OmniApp

log = logging.getLogger(__name__)


class WorkerRuntime(Service):
    def __init__(self, app: OmniApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self._runner: web.AppRunner | None = None

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

    async def on_stop(self) -> None:
        await self.app.pipeline.writer.stop()
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
