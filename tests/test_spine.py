"""One commit flows end to end through the real services on a real nats-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from conveyor.app import Conveyor
from conveyor.demo import demo_files
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support.conveyors import running
from tests.support.repos import Repo
from tests.support.waits import wait_for_events


def settings_for(repo: Repo, nats: EmbeddedNats, data: Path) -> Settings:
    return Settings(nats_url=nats.url, data_dir=data, repo=str(repo.path), branch="main",
                    listen="127.0.0.1:0", interval=3600.0,  # polls only when triggered
                    secrets=SecretPolicy(env_allow=("OPS_*",)))


def finished(sha: str, envs: set[str], types: set[str] | None = None):  # type: ignore[no-untyped-def]
    done = types or {ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED, ev.RENDER_FAILED}

    def check(events: list[Event]) -> bool:
        return {e.subject for e in events if e.correlationid == sha and e.type in done} >= envs

    return check


def of(events: list[Event], sha: str, env: str) -> list[str]:
    return [e.type for e in events if e.correlationid == sha and e.subject == env]


async def trigger(conveyor: Conveyor) -> None:
    watcher = conveyor.service("git-watcher")
    assert isinstance(watcher, GitWatcher)
    await watcher.poll()


async def test_commit_reaches_both_target_branches(repo: Repo, nats_server: EmbeddedNats,
                                                   bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        events = await wait_for_events(bus, finished(first, {"dev", "prod"}))
        assert of(events, first, "dev") == [ev.COMMIT_DETECTED, ev.RENDER_SUCCEEDED,
                                            ev.APPLY_STARTED, ev.APPLY_SUCCEEDED]
        second = repo.commit(demo_files(tag="1.28", dev_replicas=4), "bump")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(second, {"dev", "prod"}))

    for env in ("dev", "prod"):
        files = repo.files(f"deploy/{env}")
        assert f"{env}/deployment.apps-web.yaml" in files
        assert f"_cluster/namespace-{env}.yaml" in files
        deployment = repo.read(f"deploy/{env}", f"{env}/deployment.apps-web.yaml")
        assert deployment is not None and "nginx:1.28" in deployment
        message = repo.log(f"deploy/{env}")[0]
        assert second in message and f"Conveyor-Environment: {env}" in message
        assert len(repo.log(f"deploy/{env}")) == 2  # one commit per applied source commit
    dev = repo.read("deploy/dev", "dev/deployment.apps-web.yaml")
    assert dev is not None and "replicas: 4" in dev
    # every event of the chain points at its cause and carries the commit
    chain = [e for e in events if e.correlationid == second and e.subject == "dev"
             and e.type != ev.APPLY_STARTED]
    assert [e.causationid for e in chain[1:]] == [e.id for e in chain[:-1]]
    started = next(e for e in events if e.correlationid == second and e.subject == "dev"
                   and e.type == ev.APPLY_STARTED)  # a record beside the outcome, same cause
    assert started.causationid == chain[-1].causationid


async def test_unchanged_render_is_skipped(repo: Repo, nats_server: EmbeddedNats, bus: EventBus,
                                           tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        # conveyor.yaml changes (a comment): every environment is due, nothing renders differently
        files = demo_files()
        second = repo.commit({"conveyor.yaml": files["conveyor.yaml"] + "# reviewed\n"},
                             "comment only")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(second, {"dev", "prod"}))
    assert of(events, second, "dev")[-1] == ev.APPLY_SKIPPED
    assert of(events, second, "prod")[-1] == ev.APPLY_SKIPPED
    assert len(repo.log("deploy/dev")) == 1


async def test_unaffected_environment_gets_no_event(repo: Repo, nats_server: EmbeddedNats,
                                                    bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        second = repo.commit({"envs/dev/kustomization.yaml":
                              demo_files(dev_replicas=5)["envs/dev/kustomization.yaml"]},
                             "dev only")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(second, {"dev"}))
    assert of(events, second, "prod") == []
    assert of(events, second, "dev")[-1] == ev.APPLY_SUCCEEDED


async def test_broken_yaml_fails_with_file_and_line_and_keeps_last_good(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    files = {"conveyor.yaml": "environments:\n  app:\n    path: app\n",
             "app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n"
                            "  k: v\n"}
    first = repo.commit(files, "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"app"}))
        good = repo.read("deploy/app", "default/configmap-a.yaml") or repo.files("deploy/app")
        bad = repo.commit({"app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
                                          "  name: a\ndata:\n  k: [unclosed\n"}, "broken")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(bad, {"app"}))
    failed = [e for e in events if e.correlationid == bad and e.type == ev.RENDER_FAILED]
    assert len(failed) == 1
    assert "app/cm.yaml:7" in failed[0].data["error"]
    assert ev.APPLY_SUCCEEDED not in of(events, bad, "app")
    assert (repo.read("deploy/app", "default/configmap-a.yaml") or repo.files("deploy/app")) \
        == good
    assert len(repo.log("deploy/app")) == 1


async def test_broken_config_is_an_event_and_last_good_config_stays(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        broken = repo.commit({"conveyor.yaml": "environments:\n  dev:\n    paht: envs/dev\n"},
                             "typo in config")
        await trigger(conveyor)
        events = await wait_for_events(
            bus, lambda evs: any(e.type == ev.CONFIG_INVALID for e in evs))
        invalid = next(e for e in events if e.type == ev.CONFIG_INVALID)
        assert invalid.correlationid == broken
        assert invalid.data["line"] == 3 and "did you mean 'path'" in invalid.data["error"]
        assert invalid.data["field"] == "environments.dev.paht"
        # a later commit that touches dev is still deployed with the last good config
        fix = repo.commit({"envs/dev/kustomization.yaml":
                           demo_files(dev_replicas=7)["envs/dev/kustomization.yaml"]},
                          "dev replicas while config is broken")
        await trigger(conveyor)
        await wait_for_events(bus, finished(fix, {"dev"}))
    dev = repo.read("deploy/dev", "dev/deployment.apps-web.yaml")
    assert dev is not None and "replicas: 7" in dev


async def test_restart_on_same_data_dir_neither_loses_nor_repeats(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, nats_server, tmp_path / "data")
    async with running(settings):
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
    # commits land while Conveyor is down
    second = repo.commit(demo_files(tag="2.0"), "while down 1")
    third = repo.commit(demo_files(tag="2.1"), "while down 2")
    async with running(settings):
        events = await wait_for_events(bus, finished(third, {"dev", "prod"}))
    detected = [(e.correlationid, e.subject) for e in events if e.type == ev.COMMIT_DETECTED]
    assert len(detected) == len(set(detected)), "a commit was announced twice"
    assert {(first, "dev"), (second, "dev"), (third, "dev")} <= set(detected)
    applied = [(e.correlationid, e.subject) for e in events if e.type == ev.APPLY_SUCCEEDED]
    assert len(applied) == len(set(applied))
    dev = repo.read("deploy/dev", "dev/deployment.apps-web.yaml")
    assert dev is not None and "nginx:2.1" in dev


async def test_webhook_notifier_posts_cloudevents(repo: Repo, nats_server: EmbeddedNats,
                                                  bus: EventBus, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[tuple[str, dict[str, object]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.headers["Content-Type"], await request.json()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    monkeypatch.setenv("OPS_WEBHOOK_URL", f"http://127.0.0.1:{port}/hook")
    files = demo_files()
    files["conveyor.yaml"] += "notifiers:\n  ops:\n    type: webhook\n    url: ${OPS_WEBHOOK_URL}\n"
    first = repo.commit(files, "initial")
    try:
        async with running(settings_for(repo, nats_server, tmp_path / "data")):
            events = await wait_for_events(bus, lambda evs: sum(
                e.type == ev.NOTIFY_SENT for e in evs) >= 2)
    finally:
        await runner.cleanup()
    sent = [e for e in events if e.type == ev.NOTIFY_SENT]
    assert {e.subject for e in sent} == {"dev", "prod"}
    kinds = {body["type"] for _, body in received}
    assert kinds == {ev.APPLY_SUCCEEDED}
    assert all(ct.startswith("application/cloudevents+json") for ct, _ in received)
    assert all(body["correlationid"] == first for _, body in received)
    # the URL (a secret) came from the environment and is in no event
    assert all(f"127.0.0.1:{port}" not in e.to_json().decode() for e in events)


async def test_api_serves_environments_events_and_refresh(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_API_TOKEN", "s3cret-token")
    first = repo.commit(demo_files(), "initial")
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                        repo=str(repo.path), branch="main", listen="127.0.0.1:0",
                        interval=3600.0, api_token="s3cret-token")
    async with running(settings) as conveyor:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        from services.api.app import ApiService

        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        # reads need the token too once one is set (tests/security/test_net_auth.py)
        async with aiohttp.ClientSession(
                headers={"Authorization": "Bearer s3cret-token"}) as http:
            async with http.get(f"{api.url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{api.url}/api/v1/events",
                                params={"correlation": first[:10], "env": "dev",
                                        "type": "conveyor.apply"}) as resp:
                body = await resp.json()
            assert [e["type"] for e in body["events"]] == [ev.APPLY_STARTED, ev.APPLY_SUCCEEDED]
            async with aiohttp.ClientSession() as anonymous, \
                    anonymous.post(f"{api.url}/api/v1/refresh") as resp:
                assert resp.status == 401
            second = repo.commit(demo_files(tag="3.0"), "via refresh")
            async with http.post(f"{api.url}/api/v1/refresh",
                                 headers={"Authorization": "Bearer s3cret-token"}) as resp:
                assert resp.status == 202
            await wait_for_events(bus, finished(second, {"dev", "prod"}))
            # the projection catches up with the log (awaited on the projector's condition)
            projector = api.projector

            def caught_up() -> bool:
                dev = projector.envs.get("dev")
                return dev is not None and dev.last_applied_revision == second

            async with projector.changed:
                await asyncio.wait_for(projector.changed.wait_for(caught_up), 10)
            async with http.get(f"{api.url}/api/v1/environments") as resp:
                envs = {e["name"]: e for e in (await resp.json())["environments"]}
            assert envs["dev"]["desired_revision"] == second
            assert envs["dev"]["last_applied_revision"] == second
            async with http.get(f"{api.url}/api/v1/trace/{second}") as resp:
                trace = await resp.json()
            assert set(trace["end_to_end_ms"]) == {"dev", "prod"}


async def test_sync_reapplies_the_latest_render_and_needs_the_token(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data",
                        repo=str(repo.path), branch="main", listen="127.0.0.1:0",
                        interval=3600.0, api_token="tok")
    async with running(settings) as conveyor:
        await wait_for_events(bus, finished(first, {"dev", "prod"}))
        from services.api.app import ApiService

        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{api.url}/api/v1/environments/dev/sync") as resp:
                assert resp.status == 401
            async with http.post(f"{api.url}/api/v1/environments/dev/sync",
                                 headers={"Authorization": "Bearer tok"}) as resp:
                assert resp.status == 202
                requested = (await resp.json())["requested"]
            events = await wait_for_events(bus, lambda evs: any(
                e.causationid == requested and e.type != ev.APPLY_STARTED for e in evs))
            outcome = next(e for e in events
                           if e.causationid == requested and e.type != ev.APPLY_STARTED)
            # the git target holds exactly these manifests: nothing to commit, but it was tried
            assert outcome.type == ev.APPLY_SKIPPED
            assert "already holds these manifests" in outcome.data["summary"]
            digest = outcome.data["digest"]
            async with http.get(f"{api.url}/api/v1/bundles/{digest}",
                                headers={"Authorization": "Bearer tok"}) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["format"] == "conveyor.bundle/v1" and len(body["objects"]) == 3
            async with http.get(f"{api.url}/api/v1/bundles/sha256:{'0' * 64}",
                                headers={"Authorization": "Bearer tok"}) as resp:
                assert resp.status == 404
