"""The composition root: which services run in this process, built on one ``Resources``.

``conveyor up`` runs all five (with an embedded nats-server unless ``--nats`` is given);
``conveyor run SERVICE`` runs one, which is how the same code deploys as microservices.
``Conveyor.start`` opens the process's resources once (``orchestrator/resources.py``: bus,
mirrors, kubernetes clients, metrics registry, background tasks) and passes them to every
service; nothing else builds them. Shutdown on SIGTERM/SIGINT: stop pulling, let handlers finish
within the grace period, nak the rest, then close the resources in reverse order (background
tasks, kubernetes clients, NATS, the embedded server).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from orchestrator.adapters.nats_bus import EventBus
from orchestrator.ops import OpsServer
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from services.api.app import ApiService
from services.applier.service import Applier
from services.git_watcher.service import GitWatcher
from services.notifier.service import Notifier
from services.renderer.service import Renderer

log = structlog.get_logger(__name__)

SERVICES = ("git-watcher", "renderer", "applier", "notifier", "api")


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def make_service(name: str, resources: Resources) -> Service:
    if name == "git-watcher":
        return GitWatcher(resources)
    if name == "renderer":
        return Renderer(resources)
    if name == "applier":
        return Applier(resources)
    if name == "notifier":
        return Notifier(resources)
    if name == "api":
        return ApiService(resources)
    raise ValueError(f"unknown service {name!r} (expected one of {', '.join(SERVICES)})")


@dataclass
class Conveyor:
    """A running set of services in this process, and the resources they share.

    ``health_server``: serve ``/healthz`` and ``/metrics`` on ``settings.listen`` when the api
    (which serves them itself) is not among the services (``conveyor run SERVICE``)."""

    settings: Settings
    names: tuple[str, ...] = SERVICES
    health_server: bool = False
    resources: Resources | None = None
    services: list[tuple[str, Service]] = field(default_factory=list)

    @property
    def bus(self) -> EventBus | None:
        return self.resources.bus if self.resources is not None else None

    async def start(self) -> None:
        name = "conveyor-" + "-".join(self.names if len(self.names) == 1 else ("up",))
        self.resources = resources = await Resources.open(self.settings, name=name)
        self.settings = resources.settings  # with the embedded server's URL
        # consumers first, producers last: nothing is published before someone listens
        order = [n for n in ("api", "notifier", "applier", "renderer", "git-watcher")
                 if n in self.names]
        for service_name in order:
            service = make_service(service_name, resources)
            await service.start()
            self.services.append((service_name, service))
            log.info("service.started", service=service_name)
        if self.health_server and "api" not in self.names:
            server = OpsServer(resources, self.settings.listen)
            await server.start()
            self.services.insert(0, ("health", server))  # stopped last

    def service(self, name: str) -> Service:
        return next(s for n, s in self.services if n == name)

    async def stop(self, grace: float = 10.0) -> None:
        for name, service in reversed(self.services):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(service.stop(), grace)
            log.info("service.stopped", service=name)
        self.services.clear()
        if self.resources is not None:
            await self.resources.close()


async def run_until_signal(conveyor: Conveyor) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await conveyor.start()
        await stop.wait()
        log.info("conveyor.stopping")
    finally:
        await conveyor.stop()
