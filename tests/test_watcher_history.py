"""Change detection through the running git-watcher on real repositories: every new commit,
kustomize bases, force-pushes (over git://), deleted and re-created branches."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pygit2

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.resources import Resources
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support.gitservers import GitDaemon, Upstream
from tests.support.repos import AUTHOR, Repo
from tests.support.waits import wait_for_events

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  v: '{v}'\n"
KUSTOMIZATION = ("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                 "resources:\n  - {base}\n")


def detected(events: list[Event], sha: str) -> set[str]:
    return {e.subject for e in events if e.type == ev.COMMIT_DETECTED and e.correlationid == sha}


def of_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]


@contextlib.asynccontextmanager
async def watching(bus: EventBus, nats: EmbeddedNats, repo: str, data: Path,
                   branch: str = "main") -> AsyncIterator[GitWatcher]:
    watcher = GitWatcher(Resources.around(bus, Settings(nats_url=nats.url, data_dir=data, repo=repo,
                                       branch=branch, interval=3600.0)))
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


def kustomize_repo(path: Path) -> tuple[Repo, str]:
    repo = Repo(path)
    files = {
        "conveyor.yaml": "environments:\n  dev: {path: envs/dev}\n  staging: {path: "
                         "envs/staging}\n  prod: {path: envs/prod}\n",
        "base-a/kustomization.yaml": KUSTOMIZATION.format(base="cm.yaml"),
        "base-a/cm.yaml": CM.format(name="a", v=1),
        "base-b/kustomization.yaml": KUSTOMIZATION.format(base="cm.yaml"),
        "base-b/cm.yaml": CM.format(name="b", v=1),
        "envs/dev/kustomization.yaml": KUSTOMIZATION.format(base="../../base-a"),
        "envs/staging/kustomization.yaml": KUSTOMIZATION.format(base="../../base-a"),
        "envs/prod/kustomization.yaml": KUSTOMIZATION.format(base="../../base-b"),
    }
    return repo, repo.commit(files, "initial")


async def test_a_base_change_reaches_only_the_overlays_that_use_it(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    repo, first = kustomize_repo(tmp_path / "repo")
    async with watching(bus, nats_server, str(repo.path), tmp_path / "data") as watcher:
        await wait_for_events(bus, lambda evs: detected(evs, first) == {"dev", "staging",
                                                                         "prod"})
        base_a = repo.commit({"base-a/cm.yaml": CM.format(name="a", v=2)}, "base-a")
        base_b = repo.commit({"base-b/cm.yaml": CM.format(name="b", v=2)}, "base-b")
        docs = repo.commit({"README.md": "docs only\n"}, "docs")
        overlay = repo.commit({"envs/prod/kustomization.yaml": KUSTOMIZATION.format(
            base="../../base-a")}, "prod moves to base-a")
        config = repo.commit({"conveyor.yaml": "# reviewed\n" + (
            repo.path / "conveyor.yaml").read_text()}, "config comment")
        await watcher.poll()
        events = await wait_for_events(bus, lambda evs: len(detected(evs, config)) == 3)
    assert detected(events, base_a) == {"dev", "staging"}
    assert detected(events, base_b) == {"prod"}
    assert detected(events, docs) == set()
    assert detected(events, overlay) == {"prod"}
    assert detected(events, config) == {"dev", "staging", "prod"}
    # every commit, oldest first, each once
    order = [e.correlationid for e in of_type(events, ev.COMMIT_DETECTED)
             if e.subject == "dev"]
    assert order == [first, base_a, config]
    dev = next(e for e in events if e.correlationid == base_a and e.subject == "dev")
    assert dev.data["changed"] == ["base-a/cm.yaml"]


async def test_force_push_is_an_event_and_the_new_head_is_deployed(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    up = Upstream(tmp_path / "srv", "config")
    files = {"conveyor.yaml": "environments:\n  dev: {path: dev}\n  prod: {path: prod}\n",
             "dev/cm.yaml": CM.format(name="dev", v=1), "prod/cm.yaml": CM.format(name="p", v=1)}
    up.push(files, "first")
    old = up.push({"dev/cm.yaml": CM.format(name="dev", v=2)}, "second")
    async with GitDaemon(up.root) as daemon, watching(
            bus, nats_server, daemon.url("config.git"), tmp_path / "data") as watcher:
        await wait_for_events(bus, lambda evs: detected(evs, old) == {"dev", "prod"})
        new = up.rewrite({**files, "dev/cm.yaml": CM.format(name="dev", v=9)}, "rewritten")
        await watcher.poll()
        events = await wait_for_events(bus, lambda evs: detected(evs, new) == {"dev", "prod"})
    rewritten = of_type(events, ev.SOURCE_REWRITTEN)
    assert len(rewritten) == 1
    assert (rewritten[0].data["old_head"], rewritten[0].data["new_head"]) == (old, new)
    assert rewritten[0].data["source"] == "default"
    assert events.index(rewritten[0]) < min(
        i for i, e in enumerate(events) if e.correlationid == new and e.subject == "dev")


async def test_deleted_branch_is_an_event_and_a_recreated_branch_resumes(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    apps = Upstream(tmp_path / "srv", "apps")
    first = apps.push({"web/cm.yaml": CM.format(name="web", v=1)}, "release 1",
                      branch="release")
    async with GitDaemon(apps.root) as daemon:
        primary = Repo(tmp_path / "config")
        primary.commit({"conveyor.yaml": f"sources:\n  apps:\n    url: "
                        f"{daemon.url('apps.git')}\n    branch: release\nenvironments:\n"
                        "  web: {path: web, source: apps}\n"})
        async with watching(bus, nats_server, str(primary.path), tmp_path / "data") as w:
            await wait_for_events(bus, lambda evs: detected(evs, first) == {"web"})
            apps.delete("release")
            assert await w.poll("apps") == 1
            assert await w.poll("apps") == 0  # said once
            again = apps.push({"web/cm.yaml": CM.format(name="web", v=2)}, "release 2",
                              branch="release")
            await w.poll("apps")
            events = await wait_for_events(bus, lambda evs: detected(evs, again) == {"web"})
    deleted = of_type(events, ev.SOURCE_BRANCH_DELETED)
    assert len(deleted) == 1
    assert deleted[0].data["branch"] == "release" and deleted[0].data["last_head"] == first
    assert of_type(events, ev.SOURCE_REWRITTEN) == []  # it resumed where it stopped
    assert [e.correlationid for e in of_type(events, ev.COMMIT_DETECTED)] == [first, again]


async def test_a_recreated_branch_with_other_history_is_a_rewrite(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    first = repo.commit({"conveyor.yaml": "environments:\n  dev: {path: dev}\n",
                         "dev/cm.yaml": CM.format(name="d", v=1)}, "first")
    async with watching(bus, nats_server, str(repo.path), tmp_path / "data") as watcher:
        await wait_for_events(bus, lambda evs: detected(evs, first) == {"dev"})
        repo.repo.references.delete("refs/heads/main")
        await watcher.poll()
        tree = repo.repo.get(first).peel(pygit2.Commit).tree.id  # type: ignore[union-attr]
        orphan = str(repo.repo.create_commit("refs/heads/main", AUTHOR, AUTHOR, "orphan",
                                             tree, []))
        await watcher.poll()
        events = await wait_for_events(bus, lambda evs: detected(evs, orphan) == {"dev"})
    assert len(of_type(events, ev.SOURCE_BRANCH_DELETED)) == 1
    assert len(of_type(events, ev.SOURCE_REWRITTEN)) == 1

