"""Process composition: which services run in this process, started and stopped in order.

``conveyor up`` runs all five (with an embedded nats-server unless ``--nats`` is given);
``conveyor run SERVICE`` runs one, which is how the same code deploys as microservices.
Shutdown on SIGTERM/SIGINT: stop pulling, let handlers finish within the grace period, nak the
rest, then close NATS and (if embedded) stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog
from aiohttp import web

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.settings import Settings

log = structlog.get_logger(__name__)

SERVICES = ("git-watcher", "renderer", "applier", "notifier", "api")


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def make_service(name: str, bus: EventBus, settings: Settings) -> Service:
    if name == "git-watcher":
        from services.git_watcher.service import GitWatcher

        return GitWatcher(bus, settings)
    if name == "renderer":
        from services.renderer.service import Renderer

        return Renderer(bus, settings)
    if name == "applier":
        from services.applier.service import Applier

        return Applier(bus, settings)
    if name == "notifier":
        from services.notifier.service import Notifier

        return Notifier(bus, settings)
    if name == "api":
        from services.api.app import ApiService

        return ApiService(bus, settings)
    raise ValueError(f"unknown service {name!r} (expected one of {', '.join(SERVICES)})")


class HealthServer:
    """/healthz and /metrics for a service that has no api of its own (microservice mode)."""

    def __init__(self, bus: EventBus, listen: str) -> None:
        self.bus = bus
        self.listen = listen
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def healthz(_: web.Request) -> web.Response:
            ok = self.bus.nc.is_connected
            return web.json_response({"status": "ok" if ok else "nats disconnected"},
                                     status=200 if ok else 503)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(),
                                headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = self.listen.rpartition(":")
        await web.TCPSite(self._runner, host, int(port)).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Conveyor:
    """A running set of services in this process."""

    settings: Settings
    names: tuple[str, ...] = SERVICES
    embedded: EmbeddedNats | None = None
    bus: EventBus | None = None
    services: list[tuple[str, Service]] = field(default_factory=list)

    async def start(self) -> None:
        settings = self.settings
        if not settings.nats_url:
            self.embedded = EmbeddedNats(settings.data_dir / "nats")
            url = await self.embedded.start()
            settings = self.settings = replace(settings, nats_url=url)
        self.bus = await EventBus.connect(settings.nats_url, name="conveyor-" + "-".join(
            self.names if len(self.names) == 1 else ("up",)), retention=settings.retention,
            tls_ca=settings.nats_ca)
        # consumers first, producers last: nothing is published before someone listens
        order = [n for n in ("api", "notifier", "applier", "renderer", "git-watcher")
                 if n in self.names]
        for name in order:
            service = make_service(name, self.bus, settings)
            await service.start()
            self.services.append((name, service))
            log.info("service.started", service=name)

    def service(self, name: str) -> Service:
        return next(s for n, s in self.services if n == name)

    async def stop(self, grace: float = 10.0) -> None:
        for name, service in reversed(self.services):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(service.stop(), grace)
            log.info("service.stopped", service=name)
        self.services.clear()
        if self.bus is not None:
            await self.bus.close()
        if self.embedded is not None:
            await self.embedded.stop()


async def run_until_signal(conveyor: Conveyor, extra: list[Service] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await conveyor.start()
        for svc in extra or []:
            await svc.start()
        await stop.wait()
        log.info("conveyor.stopping")
    finally:
        for svc in extra or []:
            with contextlib.suppress(Exception):
                await svc.stop()
        await conveyor.stop()
