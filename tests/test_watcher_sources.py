"""Several sources through the running git-watcher: a local primary holding conveyor.yaml, an
application repository over git:// and an infrastructure repository over HTTP with basic auth,
on a real nats-server. Each source has its own cursor and announces only to its environments.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.git_source import MirrorPool
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.resources import Resources
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support.gitservers import GitDaemon, GitHttpServer, Upstream
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

PASSWORD = "infra-Pa55word-never-in-events"
CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  v: '{v}'\n"


def config(apps_url: str, infra_url: str, *, api_source: str = "apps") -> str:
    return f"""\
sources:
  apps:
    url: {apps_url}
    branch: main
  infra:
    url: {infra_url}
    branch: main
    credentials:
      username: deploy
      password: ${{INFRA_PASSWORD}}
environments:
  cfg: {{path: cfg}}
  web: {{path: web, source: apps}}
  api: {{path: api, source: {api_source}}}
  net: {{path: net, source: infra}}
"""


def detected(events: list[Event], sha: str) -> set[str]:
    return {e.subject for e in events if e.type == ev.COMMIT_DETECTED and e.correlationid == sha}


@contextlib.asynccontextmanager
async def watching(bus: EventBus, settings: Settings) -> AsyncIterator[GitWatcher]:
    watcher = GitWatcher(Resources.around(bus, settings))
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


@dataclass
class World:
    apps: Upstream
    infra: Upstream
    primary: Repo
    daemon: GitDaemon
    http: GitHttpServer
    cfg_first: str
    apps_first: str
    infra_first: str


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.setenv("INFRA_PASSWORD", PASSWORD)
    srv = tmp_path / "srv"
    apps = Upstream(srv, "apps")
    infra = Upstream(srv, "infra")
    apps_first = apps.push({"web/cm.yaml": CM.format(name="web", v=1),
                            "api/cm.yaml": CM.format(name="api", v=1)}, "apps: first")
    infra_first = infra.push({"net/cm.yaml": CM.format(name="net", v=1)}, "infra: first")
    async with GitDaemon(srv) as daemon, GitHttpServer(
            srv, users={"deploy": PASSWORD}) as http:
        primary = Repo(tmp_path / "config")
        cfg_first = primary.commit({
            "conveyor.yaml": config(daemon.url("apps.git"), http.url("infra.git")),
            "cfg/cm.yaml": CM.format(name="cfg", v=1)}, "config: first")
        yield World(apps, infra, primary, daemon, http, cfg_first, apps_first, infra_first)


def settings_for(primary: Repo, nats: EmbeddedNats, data: Path) -> Settings:
    return Settings(nats_url=nats.url, data_dir=data, repo=str(primary.path), branch="main",
                    interval=3600.0,  # polls at start, then only when asked
                    secrets=SecretPolicy(env_allow=("INFRA_*",)))


async def test_each_source_announces_only_to_its_environments(
        world: World, nats_server: EmbeddedNats, bus: EventBus,
        tmp_path: Path) -> None:
    apps, infra, primary = world.apps, world.infra, world.primary
    cfg_first, apps_first, infra_first = world.cfg_first, world.apps_first, world.infra_first
    async with watching(bus, settings_for(primary, nats_server, tmp_path / "data")) as watcher:
        events = await wait_for_events(bus, lambda evs: detected(evs, cfg_first) == {"cfg"}
                                       and detected(evs, apps_first) == {"web", "api"}
                                       and detected(evs, infra_first) == {"net"})
        assert set(watcher.pollers) == {"default", "apps", "infra"}

        web_only = apps.push({"web/cm.yaml": CM.format(name="web", v=2)}, "apps: web only")
        net_change = infra.push({"net/cm.yaml": CM.format(name="net", v=2)}, "infra: net")
        assert await watcher.poll("apps") == 1  # one event: web; not api, nothing else
        events = await wait_for_events(bus, lambda evs: detected(evs, web_only) == {"web"})
        assert not detected(events, net_change)  # infra was not polled
        await watcher.poll("infra")
        events = await wait_for_events(bus, lambda evs: detected(evs, net_change) == {"net"})

    web = next(e for e in events if e.correlationid == web_only)
    assert web.data["source"] == "apps" and web.data["repo"].startswith("git://")
    assert web.data["changed"] == ["web/cm.yaml"]
    assert web.data["source_config"]["credentials"] == {}
    net = next(e for e in events if e.correlationid == net_change)
    assert net.data["source_config"]["credentials"]["password"] == "${INFRA_PASSWORD}"
    assert all(PASSWORD.encode() not in e.to_json() for e in events)  # never the secret
    for name, head in (("apps", web_only), ("infra", net_change)):
        found = await bus.kv_get(subjects.STATE_BUCKET, f"watcher.{name}")
        assert found is not None and found[0]["head"] == head


async def test_an_environment_moved_to_another_source_gets_its_head(
        world: World, nats_server: EmbeddedNats, bus: EventBus,
        tmp_path: Path) -> None:
    """conveyor.yaml changes which source an environment renders from: that source's head is
    announced to it, though the source itself did not move."""
    primary, daemon, http = world.primary, world.daemon, world.http
    apps_first, infra_first = world.apps_first, world.infra_first
    async with watching(bus, settings_for(primary, nats_server, tmp_path / "data")) as watcher:
        await wait_for_events(bus, lambda evs: detected(evs, infra_first) == {"net"}
                              and detected(evs, apps_first) == {"web", "api"})
        moved = primary.commit({"conveyor.yaml": config(
            daemon.url("apps.git"), http.url("infra.git"), api_source="infra")}, "api -> infra")
        await watcher.poll()
        events = await wait_for_events(bus, lambda evs: "api" in detected(evs, infra_first))
    assert detected(events, moved) == {"cfg"}  # conveyor.yaml changed: the primary's envs
    assert detected(events, infra_first) == {"net", "api"}
    assert [e.subject for e in events if e.correlationid == apps_first] == ["web", "api"]


async def test_the_renderer_finds_a_sources_credentials(
        world: World, nats_server: EmbeddedNats, bus: EventBus,
        tmp_path: Path) -> None:
    """mirrors.shared(repo) - the renderer's call - gets the watcher's registration, and
    for_event works from the event alone (a renderer in another process, its own pool)."""
    primary, infra, infra_first = world.primary, world.infra, world.infra_first
    data = tmp_path / "data"
    async with watching(bus, settings_for(primary, nats_server, data)) as watcher:
        events = await wait_for_events(bus, lambda evs: bool(detected(evs, infra_first)))
    event = next(e for e in events if e.correlationid == infra_first)
    later = infra.push({"net/cm.yaml": CM.format(name="net", v=3)}, "infra: later")
    path = await watcher.resources.mirrors.shared(event.data["repo"], data).ensure(later)
    assert Path(path).is_dir()
    elsewhere = MirrorPool().for_event(event.data, tmp_path / "renderer-pod",
                                       scope=SecretPolicy(env_allow=("INFRA_*",)).scope())
    assert elsewhere.mirror.source == "infra"
    assert Path(await elsewhere.ensure(later)).is_dir()
