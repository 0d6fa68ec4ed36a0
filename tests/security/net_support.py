"""Shared by the network/host attack tests: a running Conveyor, and the proof that after an
attack it still deploys the next good commit."""

from __future__ import annotations

import uuid

from conveyor.app import Conveyor
from conveyor.demo import demo_files
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from services.api.app import ApiService
from services.git_watcher.service import GitWatcher
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

OPERATOR = "operator-token-7f3a"
READER = "read-only-token-91c2"


def api_url(conveyor: Conveyor) -> str:
    api = conveyor.service("api")
    assert isinstance(api, ApiService)
    return api.url


def applied(sha: str, envs: frozenset[str] = frozenset({"dev", "prod"})):  # type: ignore[no-untyped-def]
    def check(events: list[Event]) -> bool:
        return {e.subject for e in events
                if e.correlationid == sha and e.type == ev.APPLY_SUCCEEDED} >= envs

    return check


async def deploys_next_commit(conveyor: Conveyor, repo: Repo, bus: EventBus,
                              files: dict[str, str] | None = None,
                              envs: frozenset[str] = frozenset({"dev", "prod"})) -> str:
    """Commit a new good revision, poll, and wait until every environment applied it."""
    sha = repo.commit(files or demo_files(tag=f"1.{uuid.uuid4().hex[:8]}"), "the next good commit")
    watcher = conveyor.service("git-watcher")
    assert isinstance(watcher, GitWatcher)
    await watcher.poll()
    await wait_for_events(bus, applied(sha, envs))
    return sha
