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
from orchestrator.gitops.auto import AutoPromoter
from orchestrator.gitops.forge import ForgeSettings
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
STOP_GRACE = 6.0  # services' share of the 10 s a SIGTERM may take
CLOSE_WITHIN = 3.0  # the resources' share (drain, close, embedded server)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def make_service(name: str, resources: Resources) -> Service:
    if name == "git-watcher":
        return GitWatcher(resources, forge=ForgeSettings.from_env())
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

    ``health_server``: serve ``/livez``, ``/readyz``, ``/healthz`` and ``/metrics`` on
    ``settings.listen`` from before the first connection attempt (``conveyor run SERVICE``);
    with the api among the services it hands the address over to the api once connected."""

    settings: Settings
    names: tuple[str, ...] = SERVICES
    health_server: bool = False
    resources: Resources | None = None
    services: list[tuple[str, Service]] = field(default_factory=list)
    _started: bool = False

    @property
    def bus(self) -> EventBus | None:
        return self.resources.bus if self.resources is not None else None

    async def start(self) -> None:
        if self.health_server:  # up before the first connection attempt: probes answer
            server = OpsServer(self, self.settings.listen)
            await server.start()
            self.services.append(("health", server))  # first: stopped last
        name = "conveyor-" + "-".join(self.names if len(self.names) == 1 else ("up",))
        self.resources = resources = await Resources.open(self.settings, name=name,
                                                          services=self.names)
        self.settings = resources.settings  # with the embedded server's URL
        if self.health_server and "api" in self.names:
            await self.services.pop(0)[1].stop()  # the api serves them on this address now
        # consumers first, producers last: nothing is published before someone listens
        order = [n for n in ("api", "notifier", "applier", "renderer", "git-watcher")
                 if n in self.names]
        for service_name in order:
            service = make_service(service_name, resources.for_service(service_name))
            await service.start()
            self.services.append((service_name, service))
            log.info("service.started", service=service_name)
        if "git-watcher" in self.names and self.settings.repo:  # it has the push credentials
            watcher = self.service("git-watcher")
            assert isinstance(watcher, GitWatcher)

            def refresh(source: str) -> None:
                # the promoter's commit is fetched now, in this process: in k8s/base only the
                # api's bus user may publish refresh events (docs/security.md, The bus)
                resources.background.spawn(watcher.poll(source if source in watcher.pollers
                                                        else None), name="promoter-refresh")

            promoter = AutoPromoter(resources.for_service("git-watcher"),
                                    forge=ForgeSettings.from_env(), refresh=refresh)
            await promoter.start()
            self.services.append(("promoter", promoter))
        self._started = True

    async def not_ready(self) -> str | None:
        """Why this process is not ready (None: ready)."""
        if self.resources is None:
            return "connecting to NATS"
        if not self._started:
            return "starting services"
        return await self.resources.not_ready()

    def service(self, name: str) -> Service:
        return next(s for n, s in self.services if n == name)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the services (all of them within ``grace``), then close the resources
        (bounded too): a SIGTERM ends the process in under 10 s whatever it was doing."""
        self._started = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for name, service in reversed(self.services):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(service.stop(), max(0.5, deadline - loop.time()))
            log.info("service.stopped", service=name)
        self.services.clear()
        if self.resources is not None:
            try:
                await asyncio.wait_for(self.resources.close(), CLOSE_WITHIN)
            except TimeoutError:
                log.warning("conveyor.close_timed_out", within=CLOSE_WITHIN)


async def run_until_signal(conveyor: Conveyor) -> None:
    """Run until SIGTERM/SIGINT, which is honoured in every state: while connecting (an
    unreachable cluster is retried for ever) and while services start, the start is cancelled."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.ensure_future(conveyor.start())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("conveyor.stopping", during="start")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        starting.result()  # a start-up error ends the process with its message
        await stopping
        log.info("conveyor.stopping")
    finally:
        stopping.cancel()
        await conveyor.stop()
