"""The operational endpoints every Conveyor process serves: ``/healthz`` and ``/metrics``.

One implementation, mounted two ways: the api adds these routes to its own application
(``add_routes``), and a process that runs no api (``conveyor run renderer`` ...) serves them
alone (``OpsServer``). Either way there is one small HTTP server per process.

- ``GET /healthz``: 200 ``{"status": "ok"}`` while connected to NATS, else 503.
- ``GET /metrics``: the Prometheus text format of this Conveyor's registry. With
  ``queue_depth`` (the api) it first refreshes ``conveyor_consumer_pending`` from JetStream,
  bounded by ``PENDING_TIMEOUT`` (else the last values): one process reports the queues, not
  every replica of every service.
"""

from __future__ import annotations

import asyncio
from typing import Final

import structlog
from aiohttp import web

from orchestrator.resources import Resources

log = structlog.get_logger(__name__)

PENDING_TIMEOUT: Final = 2.0
OPS: Final = web.AppKey("ops_resources", Resources)
QUEUE_DEPTH: Final = web.AppKey("ops_queue_depth", bool)


async def healthz(request: web.Request) -> web.Response:
    ok = request.app[OPS].bus.nc.is_connected
    return web.json_response({"status": "ok" if ok else "nats disconnected"},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    resources = request.app[OPS]
    if request.app[QUEUE_DEPTH]:
        try:
            async with asyncio.timeout(PENDING_TIMEOUT):
                pending = await resources.bus.consumer_pending()
            resources.metrics.set_consumer_pending(pending)
        except Exception as exc:  # the scrape still answers, with the last known depths
            log.warning("metrics.pending_refresh_failed", error=str(exc) or type(exc).__name__)
    registry = resources.metrics
    return web.Response(body=registry.exposition(),
                        headers={"Content-Type": registry.content_type})


def add_routes(app: web.Application, resources: Resources, *, queue_depth: bool) -> None:
    app[OPS] = resources
    app[QUEUE_DEPTH] = queue_depth
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)


class OpsServer:
    """``/healthz`` and ``/metrics`` on ``listen`` for a process that runs no api."""

    def __init__(self, resources: Resources, listen: str) -> None:
        self.resources = resources
        self.listen = listen
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        add_routes(app, self.resources, queue_depth=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = self.listen.rpartition(":")
        await web.TCPSite(self._runner, host, int(port)).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
