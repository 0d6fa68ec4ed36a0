"""A whole Conveyor on a real nats-server and a real repository, for the attack tests."""

from __future__ import annotations

from collections.abc import Callable

from conveyor.app import Conveyor
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from services.git_watcher.service import GitWatcher
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

CONFIG = "environments:\n  app:\n    path: app\n"
DEPLOYED = "_cluster/configmap-a.yaml"  # where the git target writes app/cm.yaml
DONE = {ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED, ev.RENDER_FAILED,
        ev.COMMIT_REJECTED}


def configmap(value: str, name: str = "a") -> str:
    return (f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
            f"data:\n  k: {value!r}\n")


def good_files(value: str = "v1", config: str = CONFIG) -> dict[str, str]:
    return {"conveyor.yaml": config, "app/cm.yaml": configmap(value)}


async def poll(conveyor: Conveyor) -> None:
    watcher = conveyor.service("git-watcher")
    assert isinstance(watcher, GitWatcher)
    await watcher.poll()


def finished(sha: str, envs: set[str]) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        return {e.subject for e in events if e.correlationid == sha and e.type in DONE} >= envs

    return check


def of(events: list[Event], sha: str, env: str | None = None) -> list[str]:
    return [e.type for e in events if e.correlationid == sha
            and (env is None or e.subject == env)]


async def next_good_commit_deploys(conveyor: Conveyor, bus: EventBus, repo: Repo,
                                   value: str = "after-attack",
                                   config: str | None = None) -> list[Event]:
    """Commit a good change to ``app`` (and ``config`` as conveyor.yaml when given); it must
    reach the deploy branch."""
    files: dict[str, str] = {"app/cm.yaml": configmap(value)}
    if config is not None:
        files["conveyor.yaml"] = config
    sha = repo.commit(files, "good commit after the attack")
    await poll(conveyor)
    events = await wait_for_events(bus, finished(sha, {"app"}))
    assert of(events, sha, "app")[-1] == ev.APPLY_SUCCEEDED, of(events, sha, "app")
    deployed = repo.read("deploy/app", DEPLOYED)
    assert deployed is not None and value in deployed
    return events
