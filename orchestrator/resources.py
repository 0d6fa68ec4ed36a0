"""What one Conveyor owns while it runs, built once by the composition root and passed down.

``conveyor/app.py`` (``Conveyor.start``) opens one ``Resources`` and hands it to every service
it runs; nothing below reaches for a module global. Two Conveyors in one process (a test, a
program embedding it) therefore share nothing: each has its own NATS connection (with the
embedded server, one per service as its own bus user: ``for_service``) (and embedded
nats-server), its own mirrors and fetch locks, its own kubernetes clients and environment
locks, its own Prometheus registry and its own background tasks.

``close`` undoes ``open`` in reverse order: background tasks are cancelled and awaited, the
kubernetes clients closed, the bus drained and closed, and an embedded nats-server stopped.
Services are stopped by their owner before that (they may still publish while stopping).

What stays process-wide, by the libraries' design rather than ours (see docs/architecture.md):
libgit2's global options (``pygit2.settings``: the timeouts ``open`` sets once through
``git_callbacks.set_timeouts``, the same for every Conveyor, and the SSH home that
``git_callbacks.ssh_home`` swaps under its lock) and ``git_local``'s per-thread cache of open
repositories (libgit2 objects must not cross threads; entries are keyed by path, so two
Conveyors on different data dirs never meet in it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from orchestrator.adapters import git_callbacks, nats_auth
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.git_source import MirrorPool
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.errors import ConveyorError
from orchestrator.health_rules.engine import HealthEngine, load_rules
from orchestrator.health_rules.sources import HealthRuleError
from orchestrator.metrics import Metrics
from orchestrator.settings import Settings
from orchestrator.targets.git.push import PathLocks
from orchestrator.targets.kube.clients import KubePool

log = structlog.get_logger(__name__)


def operator_health(settings: Settings) -> HealthEngine:
    """The health engine of the operator's rule trees; a tree that cannot be used is an error
    naming it."""
    try:
        return HealthEngine(load_rules(directories=settings.health_customizations))
    except HealthRuleError as exc:
        raise ConveyorError(f"--health-customizations: {exc}", reason="InvalidHealthRules"
                            ) from None


class Background:
    """Fire-and-forget tasks of one Conveyor, held (so they are not garbage collected mid-run)
    and cancelled on close (so a stop leaves none pending)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> None:
        if self._closed:
            coro.close()  # stopping: the work is dropped, as a cancelled task's would be
            return
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Resources:
    """One Conveyor's resources (``open`` builds them, ``close`` releases them)."""

    settings: Settings
    bus: EventBus
    metrics: Metrics = field(default_factory=Metrics)
    mirrors: MirrorPool = field(default_factory=MirrorPool)
    kube: KubePool = field(default_factory=KubePool)
    git_locks: PathLocks = field(default_factory=PathLocks)
    background: Background = field(default_factory=Background)
    embedded: EmbeddedNats | None = None
    owns_bus: bool = True
    health: HealthEngine | None = None
    """The operator's health rules over the built-in ones, and the one Lua runtime every
    apply's engine shares (``health_engine``)."""
    buses: dict[str, EventBus] = field(default_factory=dict)
    """With the embedded server: each service's own connection, as its own bus user
    (``nats_permissions``); ``bus`` is then the operator's bootstrap connection, which
    created the schema before the services connected."""

    def health_engine(self) -> HealthEngine:
        """The operator's engine, read from ``settings.health_customizations`` on first use."""
        if self.health is None:
            self.health = operator_health(self.settings)
        return self.health

    def for_service(self, service: str) -> Resources:
        """What ``service`` is given: these resources, with its own bus when it has one."""
        if service not in self.buses:
            return self
        # the other connections stay visible for readiness (one process: no boundary)
        return replace(self, bus=self.buses[service], owns_bus=False)

    async def not_ready(self) -> str | None:
        """Why this process cannot work now (None: it can), over every connection it has."""
        for bus in dict.fromkeys([self.bus, *self.buses.values()]):
            why = await bus.not_ready()
            if why is not None:
                return why
        return None

    @classmethod
    async def open(cls, settings: Settings, *, name: str = "conveyor",
                   services: tuple[str, ...] = ()) -> Resources:
        """Start nats-server when no ``nats_url`` is set, connect, ensure the stream.

        With the embedded server, the operator's connection reconciles the schema (the
        bootstrap step) and then each of ``services`` connects as its own bus user."""
        health = operator_health(settings)  # a bad rule tree stops the start, before any I/O
        git_callbacks.set_timeouts()  # libgit2's, process-wide by its design
        embedded: EmbeddedNats | None = None
        if not settings.nats_url:
            embedded = EmbeddedNats(settings.data_dir / nats_auth.EMBEDDED_DIR,
                                    sync=settings.sync)
            settings = replace(settings, nats_url=await embedded.start())
        metrics = Metrics()
        buses: dict[str, EventBus] = {}
        bus: EventBus | None = None
        try:
            bus = await EventBus.connect(settings.nats_url, name=name,
                                         retention=settings.retention,
                                         replicas=settings.replicas, retry_for=None,
                                         on_published=metrics.event_published,
                                         tls_ca=settings.nats_ca)
            for service in services:
                if embedded is None:
                    break  # an operator's server: one connection, as its URL's user
                buses[service] = await EventBus.connect(
                    embedded.url_for(service), name=f"{name}-{service}", retry_for=None,
                    on_published=metrics.event_published, manage_schema=False)
        except BaseException:
            for opened in [*buses.values(), *([bus] if bus is not None else [])]:
                with contextlib.suppress(Exception):
                    await opened.close()
            if embedded is not None:
                await embedded.stop()
            raise
        return cls(settings, bus, metrics=metrics, embedded=embedded, health=health,
                   buses=buses)

    @classmethod
    def around(cls, bus: EventBus, settings: Settings) -> Resources:
        """Resources over a bus the caller owns (and closes): for tests and tools that
        connect themselves. Publishes are counted on this ``metrics`` from now on."""
        metrics = Metrics()
        bus.on_published = metrics.event_published
        git_callbacks.set_timeouts()  # libgit2's, process-wide by its design
        return cls(settings, bus, metrics=metrics, owns_bus=False)

    async def close(self) -> None:
        await self.background.close()
        await self.kube.close()
        for service_bus in self.buses.values() if self.owns_bus else ():
            with contextlib.suppress(Exception):
                await service_bus.close()
        if self.owns_bus:
            with contextlib.suppress(Exception):
                await self.bus.close()
        if self.embedded is not None:
            await self.embedded.stop()
