"""The operational endpoints every Conveyor process serves: probes and ``/metrics``.

One implementation, mounted two ways: the api adds these routes to its own application
(``add_routes``), and a process that runs no api (``conveyor run renderer`` ...) serves them
alone (``OpsServer``), from before its first connection attempt. Either way there is one small
HTTP server per process.

- ``GET /livez``: 200 while the event loop runs (it answers): the liveness probe. It stays 200
  while NATS is unreachable, so an outage does not restart every pod.
- ``GET /readyz``, and ``GET /healthz`` (the same): 200 ``{"status": "ready"}`` when connected
  and the stream, the buckets, the object store and this process's consumers answer; else 503
  with the reason (``connecting to NATS``, ``consumer applier does not exist``...).
- ``GET /metrics``: the Prometheus text format of this Conveyor's registry. With
  ``queue_depth`` (the api) it first refreshes ``conveyor_consumer_pending`` from JetStream,
  bounded by ``PENDING_TIMEOUT`` (else the last values): one process reports the queues, not
  every replica of every service.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, Protocol

import structlog
from aiohttp import web

from orchestrator.resources import Resources

log = structlog.get_logger(__name__)

PENDING_TIMEOUT: Final = 2.0


class Probed(Protocol):
    """What the probes look at: the resources once open, and why the process is not ready."""

    @property
    def resources(self) -> Resources | None: ...

    async def not_ready(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Opened:
    """A process whose resources are open (the api mounts its routes only then)."""

    resources: Resources

    async def not_ready(self) -> str | None:
        return await self.resources.not_ready()


OPS: Final = web.AppKey("ops_probed", Probed)
QUEUE_DEPTH: Final = web.AppKey("ops_queue_depth", bool)


async def livez(_: web.Request) -> web.Response:
    return web.json_response({"status": "live"})


async def readyz(request: web.Request) -> web.Response:
    reason = await request.app[OPS].not_ready()
    return web.json_response({"status": "ready" if reason is None else "not ready",
                              **({"reason": reason} if reason else {})},
                             status=200 if reason is None else 503)


async def metrics(request: web.Request) -> web.Response:
    resources = request.app[OPS].resources
    if resources is None:
        return web.Response(status=503, text="connecting to NATS\n")
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


def add_routes(app: web.Application, probed: Probed | Resources, *,
               queue_depth: bool) -> None:
    app[OPS] = Opened(probed) if isinstance(probed, Resources) else probed
    app[QUEUE_DEPTH] = queue_depth
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", readyz)
    app.router.add_get("/metrics", metrics)


class OpsServer:
    """The probes and ``/metrics`` on ``listen`` for a process that runs no api (or before
    its api is up): ``probed`` is the process (``conveyor.app.Conveyor``)."""

    def __init__(self, probed: Probed | Resources, listen: str) -> None:
        self.probed = probed
        self.listen = listen
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        add_routes(app, self.probed, queue_depth=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = self.listen.rpartition(":")
        await web.TCPSite(self._runner, host, int(port)).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
