"""Every commit is an event: bursts between polls, and bursts longer than one walk."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.app import Conveyor
from orchestrator.adapters import git_local
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

CONFIG = "environments:\n  app:\n    path: app\n"


def cm(i: int) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  i: \"{i}\"\n"


async def test_a_burst_longer_than_one_walk_is_announced_in_order(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git_local, "MAX_WALK", 7)  # chunks of 7 commits
    first = repo.commit({"conveyor.yaml": CONFIG, "app/cm.yaml": cm(0)}, "initial")
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                        repo=str(repo.path), branch="main", interval=3600.0)
    conveyor = Conveyor(settings, names=("git-watcher",))
    await conveyor.start()
    try:
        await wait_for_events(bus, lambda evs: any(e.correlationid == first for e in evs))
        burst = [repo.commit({"app/cm.yaml": cm(i)}, f"change {i}") for i in range(1, 26)]
        watcher = conveyor.service("git-watcher")
        assert isinstance(watcher, GitWatcher)
        await watcher.poll()
        events = await wait_for_events(bus, lambda evs: sum(
            e.type == ev.COMMIT_DETECTED for e in evs) >= 26)
    finally:
        await conveyor.stop()
    detected = [e.correlationid for e in events if e.type == ev.COMMIT_DETECTED]
    assert detected == [first, *burst]  # all of them, oldest first, none twice
    cursor = await bus.kv_get("conveyor-state", "watcher.default")
    assert cursor is not None and cursor[0]["head"] == burst[-1]
