"""git-watcher: polls the source, takes refresh requests, announces every new commit.

The cursor (last announced head and last good config per source) lives in the state bucket and
is written *after* the events are published. A crash in between re-announces the same commits
with the same deterministic ids, which JetStream drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator import subjects
from orchestrator.adapters import git_local
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.config import CONFIG_FILE, Config, EnvironmentConfig, parse_config
from orchestrator.domain.events import new_event
from orchestrator.errors import ConfigError, ConveyorError, TransientError
from orchestrator.runtime import Ack, Consumer, ConsumerSpec, Delivery, Outcome
from orchestrator.settings import Settings
from services.git_watcher.decide import SOURCE, SourceRef, events_for_commit
from services.git_watcher.source import Checkout, is_local

log = structlog.get_logger(__name__)

DEFAULT_LOCAL_INTERVAL = 5.0
DEFAULT_REMOTE_INTERVAL = 180.0


@dataclass
class Cursor:
    head: str | None = None
    config_text: str | None = None
    failing: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"head": self.head, "config_text": self.config_text, "failing": self.failing}


def _referenced(repo_path: str, sha: str):  # type: ignore[no-untyped-def]
    """referenced_paths bound to one commit (kustomize bases and the like)."""
    from orchestrator.rendering import referenced_paths

    def read(path: str) -> bytes | None:
        return git_local.read_file(repo_path, sha, path)

    def is_dir(path: str) -> bool:
        tid = git_local.tree_id(repo_path, sha, path)
        return tid is not None and git_local.read_file(repo_path, sha, path) is None

    def refs(env: EnvironmentConfig) -> frozenset[str]:
        try:
            return frozenset(referenced_paths(read, is_dir, env.path, env.render))
        except Exception:  # a broken kustomization is the renderer's to report
            return frozenset()

    return refs


class GitWatcher:
    def __init__(self, bus: EventBus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self.checkout = Checkout.shared(settings.repo, settings.data_dir)
        self.source = SourceRef("default", settings.repo, settings.branch)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: Consumer | None = None

    @property
    def interval(self) -> float:
        if self.settings.interval is not None:
            return self.settings.interval
        return DEFAULT_LOCAL_INTERVAL if is_local(self.settings.repo) else DEFAULT_REMOTE_INTERVAL

    @property
    def cursor_key(self) -> str:
        return f"watcher.{self.source.name}"

    async def start(self) -> None:
        if not self.source.branch:
            branch = (await self.checkout.fetch()).branch or "main"
            self.source = SourceRef(self.source.name, self.source.repo, branch)
        self._consumer = Consumer(self.bus, ConsumerSpec(
            durable="git-watcher", stage="source",
            filters=subjects.filter_for(ev.REFRESH_REQUESTED, [ev.NO_ENV]),
            handler=self._on_refresh, max_deliver=5, concurrency=1))
        await self._consumer.start()
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="git-watcher:poll"))

    async def _on_refresh(self, delivery: Delivery) -> Outcome:
        emitted = await self.poll()
        log.info("watcher.refreshed", announced=emitted)
        return Ack()

    def trigger(self) -> None:
        self._wake.set()

    async def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll()
            except Exception as exc:  # poll() reports failures as events; never die here
                log.exception("watcher.poll_crashed", error=str(exc))
            # jitter spreads many sources so they do not fetch in lockstep
            delay = self.interval * random.uniform(0.9, 1.1)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _load_cursor(self) -> tuple[Cursor, int]:
        found = await self.bus.kv_get(subjects.STATE_BUCKET, self.cursor_key)
        if found is None:
            return Cursor(), 0
        raw, rev = found
        return Cursor(raw.get("head"), raw.get("config_text"), bool(raw.get("failing"))), rev

    async def poll(self) -> int:
        """Fetch, announce new commits, advance the cursor. Returns events published."""
        async with self._lock:
            cursor, rev = await self._load_cursor()
            try:
                fetched = await self.checkout.fetch(self.source.branch)
                path = self.checkout.path
                head = fetched.head
            except ConveyorError as exc:
                await self._fetch_failed(cursor, rev, exc)
                return 1
            events = []
            if cursor.failing:
                events.append(new_event(ev.SOURCE_RECOVERED, env=ev.NO_ENV, source=SOURCE,
                                        correlation=head or "", key=f"{self.source.name}:{rev}",
                                        data={"source": self.source.name}))
                cursor.failing = False
            if head is None:
                if cursor.head is not None:
                    events.append(new_event(
                        ev.SOURCE_BRANCH_DELETED, env=ev.NO_ENV, source=SOURCE,
                        correlation=cursor.head, key=self.source.name,
                        data={"source": self.source.name, "branch": self.source.branch,
                              "last_head": cursor.head}))
                await self._commit(events, cursor, rev)
                return len(events)
            if head == cursor.head:
                await self._commit(events, cursor, rev)
                return len(events)
            events.extend(await asyncio.to_thread(self._announce, path, cursor, head))
            await self._commit(events, cursor, rev, head=head)
            return len(events)

    def _announce(self, path: str, cursor: Cursor, head: str) -> list[Any]:
        """Blocking: walk the new commits and decide their events (runs in a thread)."""
        events = []
        if cursor.head is not None and not git_local.has_commit(path, cursor.head):
            rewritten = True
        else:
            rewritten = cursor.head is not None and not git_local.is_ancestor(
                path, cursor.head, head)
        if rewritten:
            events.append(new_event(ev.SOURCE_REWRITTEN, env=ev.NO_ENV, source=SOURCE,
                                    correlation=head, key=self.source.name,
                                    data={"source": self.source.name,
                                          "branch": self.source.branch,
                                          "old_head": cursor.head, "new_head": head}))
        old = None if rewritten else cursor.head
        commits = git_local.new_commits(path, old, head)
        config: Config | None = None
        if cursor.config_text is not None:
            with contextlib.suppress(ConfigError):
                config = parse_config(cursor.config_text)
        first_sight = cursor.head is None or rewritten
        for i, commit in enumerate(commits):
            changed = None if (first_sight and i == 0) else git_local.changed_paths(
                path, commit.sha)
            sha = commit.sha

            def text(sha: str = sha) -> str | None:
                data = git_local.read_file(path, sha, CONFIG_FILE)
                return None if data is None else data.decode("utf-8", errors="replace")

            result = events_for_commit(commit, self.source, changed, text, config,
                                       _referenced(path, sha))
            events.extend(result.events)
            if result.config is not None and result.config is not config:
                config = result.config
                cursor.config_text = config.text
        return events

    async def _commit(self, events: list[Any], cursor: Cursor, rev: int,
                      head: str | None = None) -> None:
        await self.bus.publish_all(events)
        if head is not None:
            cursor.head = head
        if events or head is not None:
            await self.bus.kv_put(subjects.STATE_BUCKET, self.cursor_key, cursor.to_json())

    async def _fetch_failed(self, cursor: Cursor, rev: int, exc: ConveyorError) -> None:
        log.warning("watcher.fetch_failed", source=self.source.name, error=str(exc))
        event = new_event(ev.SOURCE_FETCH_FAILED, env=ev.NO_ENV, source=SOURCE,
                          correlation=cursor.head or "", key=f"{self.source.name}:{rev}",
                          data={"source": self.source.name, "error": str(exc),
                                "reason": exc.reason,
                                "transient": isinstance(exc, TransientError)})
        if not cursor.failing:  # one event per outage, not one per poll
            cursor.failing = True
            await self.bus.publish(event)
            await self.bus.kv_put(subjects.STATE_BUCKET, self.cursor_key, cursor.to_json())

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._consumer is not None:
            await self._consumer.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
