"""git-watcher: polls every source, takes refresh requests, announces every new commit.

The primary source (``default``: ``--repo``, the repository holding conveyor.yaml) is always
watched; every entry of conveyor.yaml's ``sources:`` is watched too, each by its own
``SourcePoller`` (own cursor, own interval and backoff, own loop task), so a slow or failing
source never delays another. Fetches run in worker threads (``GitMirror``). After each poll of
the primary the set of pollers is reconciled with the configuration in force, and when that
configuration changed the other sources are polled right away (an environment that moved to
another source, or whose block changed, is due that source's head).

``conveyor.refresh.requested`` (the api's refresh button, or a verified webhook) with
``data.source`` polls that source only; without it, every source. The request is acknowledged
once the poll is done (a crash meanwhile redelivers it); requests are handled in one lane per
source, so a slow remote does not hold up a webhook for another. A poll takes the poller's
lock, so it is serialised with the poller's own timer.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from orchestrator import subjects
from orchestrator.adapters.git_source import Checkout
from orchestrator.domain import events as ev
from orchestrator.domain.codec import decode_as
from orchestrator.domain.config import DEFAULT_SOURCE, Config
from orchestrator.domain.payloads import RefreshRequested
from orchestrator.gitops.forge import ForgeSettings, PullLister
from orchestrator.resources import Resources
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Outcome
from services.git_watcher import decide
from services.git_watcher.cursor import Cursor, cursor_key
from services.git_watcher.decide import (
    DEFAULT_LOCAL_INTERVAL,
    DEFAULT_REMOTE_INTERVAL,
    SourceRef,
    WatchedSource,
)
from services.git_watcher.poller import SourcePoller

log = structlog.get_logger(__name__)

__all__ = ["DEFAULT_LOCAL_INTERVAL", "DEFAULT_REMOTE_INTERVAL", "Cursor", "GitWatcher"]


class GitWatcher:
    def __init__(self, resources: Resources, *, forge: ForgeSettings | None = None) -> None:
        """``forge``: the operator's forge API (``CONVEYOR_FORGE_*``), for the open pull
        requests of ``pullRequests`` generators; without it they make no environment."""
        self.resources = resources
        self.bus = resources.bus
        self.settings = settings = resources.settings
        self.forge = forge
        self.config: Config | None = None
        self._config_held: tuple[object, ...] = (None, (), ())
        self.pollers: dict[str, SourcePoller] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._consumer: Consumer | None = None
        self._add(decide.watched_sources(None, settings.repo, settings.branch)[DEFAULT_SOURCE])

    # ------------------------------------------------------------------ compatibility

    @property
    def primary(self) -> SourcePoller:
        return self.pollers[DEFAULT_SOURCE]

    @property
    def checkout(self) -> Checkout:
        return self.primary.checkout

    @property
    def source(self) -> SourceRef:
        return self.primary.source.ref(self.primary.branch)

    @property
    def interval(self) -> float:
        return self.primary.interval

    @property
    def cursor_key(self) -> str:
        return cursor_key(DEFAULT_SOURCE)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cursor, _ = await self.primary.load_cursor()
        self._set_config(cursor)
        self._reconcile()
        self._consumer = Consumer(self.bus, ConsumerSpec(
            durable="git-watcher", stage="source",
            filters=subjects.filter_for(ev.REFRESH_REQUESTED, [ev.NO_ENV]),
            handler=self._on_refresh, max_deliver=5, concurrency=4, ack_wait=300.0,
            key=lambda e: decode_as(e, RefreshRequested).source or "*"))
        await self._consumer.start()
        for name in list(self.pollers):
            self._start_loop(name)

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await self._consumer.stop()
        for name in list(self._tasks):
            await self._stop_loop(name)

    # ------------------------------------------------------------------ sources

    def _add(self, source: WatchedSource) -> SourcePoller:
        poller = SourcePoller(self.bus, source, self.settings.data_dir,
                              interval=decide.poll_interval(source, self.settings.interval),
                              config=lambda: self.config, mirrors=self.resources.mirrors,
                              metrics=self.resources.metrics,
                              scope=self.settings.secrets.scope(),
                              local_dirs=self.settings.allow_local_paths,
                              pulls=PullLister(self.forge, source.repo)
                              if source.primary and self.forge is not None else None)
        self.pollers[source.name] = poller
        return poller

    def _set_config(self, cursor: Cursor) -> bool:
        """Adopt the primary's config (its text, the directories and pull requests its
        generators used); True when it changed."""
        held = (cursor.config_text, cursor.config_dirs, cursor.config_pulls)
        if held == self._config_held:
            return False
        self._config_held = held
        self.config = cursor.config()
        return True

    def _reconcile(self) -> list[str]:
        """Bring the pollers in line with the config; returns the sources (re)created."""
        wanted = decide.watched_sources(self.config, self.settings.repo, self.settings.branch)
        changed: list[str] = []
        for name in list(self.pollers):
            if name not in wanted:
                log.info("watcher.source_removed", source=name)
                self.pollers.pop(name)
                task = self._tasks.pop(name, None)
                if task is not None:
                    task.cancel()
        for name, source in wanted.items():
            current = self.pollers.get(name)
            if current is not None and current.source == source:
                continue
            if current is not None and name == DEFAULT_SOURCE:
                # the primary keeps its poller (and resolved branch); settings may change
                current.source = source
                current.interval = decide.poll_interval(source, self.settings.interval)
                continue
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
            self._add(source)
            changed.append(name)
            log.info("watcher.source_added", source=name, repo=source.repo,
                     branch=source.branch or "(default)")
        return changed

    def _start_loop(self, name: str) -> None:
        if name not in self._tasks and not self._stopping.is_set():
            self._tasks[name] = asyncio.create_task(self._loop(name),
                                                    name=f"git-watcher:{name}")

    async def _stop_loop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self, name: str) -> None:
        poller = self.pollers[name]
        while not self._stopping.is_set() and self.pollers.get(name) is poller:
            poller.wake.clear()  # a wake during the poll below polls again right after
            try:
                await self._poll_one(poller)
            except Exception as exc:  # poll() reports failures as events; never die here
                log.exception("watcher.poll_crashed", source=name, error=str(exc))
            delay = poller.next_delay if poller.failures else poller.delay()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: it can lose a cancel (3.11)
                    await poller.wake.wait()

    async def _poll_one(self, poller: SourcePoller) -> int:
        emitted = await poller.poll()
        if poller.source.primary:
            cursor, _ = await poller.load_cursor()
            if self._set_config(cursor):
                self._reconcile()
                for name, other in self.pollers.items():
                    if not other.source.primary:
                        self._start_loop(name)
                        other.wake.set()  # config changed: environments may be due a head
        return emitted

    # ------------------------------------------------------------------ triggers

    def trigger(self, source: str | None = None) -> None:
        """Poll ``source`` (every source when None) as soon as its loop is free."""
        for name, poller in self.pollers.items():
            if source is None or name == source:
                poller.wake.set()

    async def poll(self, source: str | None = None) -> int:
        """Poll now and wait: the primary then every other source, or just ``source``.
        Returns the number of events published."""
        if source is not None:
            poller = self.pollers.get(source)
            if poller is None:
                raise KeyError(f"no source {source!r} (known: {sorted(self.pollers)})")
            return await self._poll_one(poller)
        emitted = await self._poll_one(self.primary)
        others = [p for p in self.pollers.values() if not p.source.primary]
        counts = await asyncio.gather(*(self._poll_one(p) for p in others))
        return emitted + sum(counts)

    async def _on_refresh(self, delivery: Delivery) -> Outcome:
        refresh = decode_as(delivery.event, RefreshRequested)
        name = str(refresh.source) if refresh.source else None
        if name is not None and name not in self.pollers:
            log.info("watcher.refresh_unknown_source", source=name)
            name = None  # maybe a source the next config adds: poll everything
        emitted = await self.poll(name)
        log.info("watcher.refreshed", source=name or "*", announced=emitted,
                 by=refresh.by)
        return Ack()
