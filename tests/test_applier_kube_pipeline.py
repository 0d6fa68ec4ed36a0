"""Commits flow through the real services to a kubernetes target (the contract server): apply,
health events, prune, skip, health timeout, credential errors, per-environment scoping and
``conveyor diff``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conveyor.app import Conveyor
from orchestrator import subjects
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.kube import KubeClient, load_kubeconfig
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.commands.diff import diff_command
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import digest_of, encode_bundle
from orchestrator.domain.codec import decode
from orchestrator.domain.events import Event, new_event
from orchestrator.domain.payloads import ApplyFailed
from orchestrator.resources import Resources
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.api.app import ApiService
from services.applier.service import Applier
from services.git_watcher.service import GitWatcher
from tests.support.kubeapi import FakeKubeAPI
from tests.support.kubeapi.certs import TestPKI
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

HEALTHY = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
           "availableReplicas": 1}

CONFIG = """\
environments:
  dev:
    path: dev
    target:
      kubernetes:
        kubeconfig: ${DEV_KUBECONFIG}
        namespace: shop
    sync:
      prune: true
      wait: {timeout: 2s, interval: 20ms}
"""
NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"
CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  level: '1'\n"


def web(image: str = "nginx:1.27") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: {image}
"""


def files(**extra: str | None) -> dict[str, str | None]:
    return {"conveyor.yaml": CONFIG, "dev/namespace.yaml": NAMESPACE, "dev/web.yaml": web(),
            "dev/settings.yaml": CONFIGMAP, **extra}


@contextlib.asynccontextmanager
async def running(repo: Repo, nats: EmbeddedNats, data: Path) -> AsyncIterator[Conveyor]:
    # the operator allows DEV_KUBECONFIG, which names a file in its secret directory
    conveyor = Conveyor(Settings(nats_url=nats.url, data_dir=data, repo=str(repo.path),
                                 branch="main", listen="127.0.0.1:0", interval=3600.0,
                                 secrets=SecretPolicy(env_allow=("DEV_*",),
                                                      secrets_dirs=(str(data.parent),))))
    await conveyor.start()
    try:
        yield conveyor
    finally:
        await conveyor.stop()


async def trigger(conveyor: Conveyor) -> None:
    watcher = conveyor.service("git-watcher")
    assert isinstance(watcher, GitWatcher)
    await watcher.poll()


def outcome(sha: str, *also: str, env: str = "dev") -> Callable[[list[Event]], bool]:
    """The commit's apply outcome is in the log (and the events of types ``also``)."""
    done = {ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED, ev.RENDER_FAILED}

    def check(events: list[Event]) -> bool:
        seen = {e.type for e in events if e.correlationid == sha and e.subject == env}
        return bool(seen & done) and set(also) <= seen

    return check


def of(events: list[Event], sha: str, *types: str) -> list[Event]:
    return [e for e in events if e.correlationid == sha and (not types or e.type in types)]


@pytest.fixture
async def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as server:
        monkeypatch.setenv("DEV_KUBECONFIG",
                           str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        yield server


async def test_commits_are_applied_pruned_skipped_and_health_timeouts_fail(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, fake: FakeKubeAPI,
        tmp_path: Path) -> None:
    first = repo.commit(files(), "initial")
    async with running(repo, nats_server, tmp_path / "data") as conveyor:
        await fake.wait_until(lambda: fake.get("apps/v1", "Deployment", "shop", "web") is not None)
        fake.set_status("apps/v1", "Deployment", "shop", "web", HEALTHY)
        events = await wait_for_events(bus, outcome(first, ev.HEALTH_HEALTHY))
        applied, health = of(events, first, ev.APPLY_SUCCEEDED, ev.HEALTH_HEALTHY)
        assert applied.data["target"].startswith("kubernetes http://127.0.0.1:")
        assert {e["name"] for e in applied.data["inventory"]["entries"]} == {
            "shop", "web", "settings"}
        assert health.data["status"] == "Healthy" and health.causationid == applied.causationid
        cm = fake.get("v1", "ConfigMap", "shop", "settings")
        assert cm is not None and cm["metadata"]["labels"]["conveyor.dev/environment"] == "dev"

        second = repo.commit({"dev/settings.yaml": None}, "drop the settings")
        await trigger(conveyor)
        events = await wait_for_events(bus, outcome(second))
        [pruned] = of(events, second, ev.APPLY_SUCCEEDED)
        assert pruned.data["pruned"] == ["ConfigMap/shop/settings"]
        assert fake.get("v1", "ConfigMap", "shop", "settings") is None

        third = repo.commit({"conveyor.yaml": CONFIG + "# reviewed\n"}, "comment only")
        await trigger(conveyor)
        events = await wait_for_events(bus, outcome(third))
        assert [e.type for e in of(events, third)][-1] == ev.APPLY_SKIPPED

        fourth = repo.commit({"dev/web.yaml": web("nginx:1.28")}, "bump, never becomes ready")
        await trigger(conveyor)
        events = await wait_for_events(bus, outcome(fourth, ev.HEALTH_PROGRESSING))
        failed, progressing = of(events, fourth, ev.APPLY_FAILED, ev.HEALTH_PROGRESSING)
        payload = decode(failed)
        assert isinstance(payload, ApplyFailed) and payload.reason == "HealthCheckTimeout"
        assert [(o["kind"], o["name"], o["status"]) for o in payload.unhealthy_objects] == [
            ("Deployment", "web", "Progressing")]
        assert "Deployment.apps/shop/web: Progressing" in payload.error
        assert progressing.data["objects"][0]["name"] == "web"
    inventory = fake.get("v1", "ConfigMap", "shop", "conveyor-inventory-dev")
    assert inventory is not None
    annotations = inventory["metadata"]["annotations"]
    assert annotations["conveyor.dev/applied-revision"] == second   # the last healthy sync
    assert annotations["conveyor.dev/attempted-revision"] == fourth


async def test_forbidden_is_apply_failed_with_the_api_message_and_no_token_anywhere(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pki = TestPKI()
    token = "applier-token-0123456789abcdef"
    async with FakeKubeAPI(ssl_context=pki.server_context(), tokens={token}) as fake:
        monkeypatch.setenv("DEV_KUBECONFIG", str(fake.write_kubeconfig(
            tmp_path / "kc", token=token, ca_pem=pki.ca_pem)))
        message = ('namespaces is forbidden: User "system:serviceaccount:conveyor:applier" '
                   'cannot patch resource "namespaces" in API group "" at the cluster scope')
        fake.inject_failure("/namespaces/shop$", 403, times=100, method="PATCH",
                            message=message)
        first = repo.commit(files(), "initial")
        async with running(repo, nats_server, tmp_path / "data"):
            events = await wait_for_events(bus, outcome(first))
    [failed] = of(events, first, ev.APPLY_FAILED)
    assert failed.data["reason"] == "Forbidden" and message in failed.data["error"]
    assert not of(events, first, ev.APPLY_RETRYING)   # permanent: not retried
    assert all(token not in e.to_json().decode() for e in events)
    assert token not in capsys.readouterr().out


async def test_an_applier_scoped_to_dev_ignores_prod(nats_server: EmbeddedNats, bus: EventBus,
                                                     fake: FakeKubeAPI, tmp_path: Path) -> None:
    kc = str(tmp_path / "kubeconfig")

    async def render(env: str, key: str) -> None:
        objects = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": env}},
                   {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": f"cfg-{key}"}, "data": {"k": key}}]
        payload = encode_bundle(objects)
        await bus.put_bundle(digest_of(payload), payload)
        env_cfg: dict[str, Any] = {"name": env, "path": env, "target": {"kubernetes": {
            "kubeconfig": kc, "namespace": env}}, "sync": {"wait": False}}
        await bus.publish(new_event(ev.RENDER_SUCCEEDED, env=env, correlation=key * 40,
                                    data={"env": env_cfg, "digest": digest_of(payload),
                                          "origin_seq": await bus.last_seq() + 1}))

    applier = Applier(Resources.around(bus, Settings(
        nats_url=nats_server.url, data_dir=tmp_path, envs=("dev",),
        secrets=SecretPolicy(secrets_dirs=(str(tmp_path),)))))
    await applier.start()
    try:
        await render("prod", "a")
        await render("dev", "b")
        await render("prod", "c")
        await render("dev", "d")
        events = await wait_for_events(bus, lambda es: any(
            e.type == ev.APPLY_SUCCEEDED and e.correlationid == "d" * 40 for e in es))
        info = await bus.js.consumer_info(subjects.STREAM, "applier--dev")
    finally:
        await applier.stop()
    assert not [e for e in events if e.subject == "prod" and e.type.startswith("conveyor.apply")]
    assert fake.get("v1", "Namespace", "", "prod") is None
    assert fake.get("v1", "ConfigMap", "dev", "cfg-d") is not None
    filters = info.config.filter_subjects or [info.config.filter_subject]
    assert filters == ["conveyor.events.dev.render.succeeded",
                       "conveyor.events.dev.environment.removed"]


async def test_conveyor_diff_shows_desired_vs_live(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, fake: FakeKubeAPI,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `conveyor diff` reaches what the operator's environment allows, like the applier
    monkeypatch.setenv("CONVEYOR_ENV_ALLOW", "DEV_*")
    monkeypatch.setenv("CONVEYOR_SECRETS_DIR", str(tmp_path))
    first = repo.commit(files(), "initial")
    async with running(repo, nats_server, tmp_path / "data") as conveyor:
        await fake.wait_until(lambda: fake.get("apps/v1", "Deployment", "shop", "web") is not None)
        fake.set_status("apps/v1", "Deployment", "shop", "web", HEALTHY)
        await wait_for_events(bus, outcome(first))
        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        api_url = api.url

        async def diff(**kwargs: Any) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = await diff_command("dev", stdout=out, stderr=err, **kwargs)
            return code, out.getvalue(), err.getvalue()

        code, out, _ = await diff(nats=nats_server.url)
        assert code == 0 and "No differences." in out

        async with KubeClient(load_kubeconfig(tmp_path / "kubeconfig")) as client:
            await client.request(
                "PATCH", "/api/v1/namespaces/shop/configmaps/settings",
                params={"fieldManager": "kubectl-edit"},
                content_type="application/merge-patch+json",
                body=json.dumps({"data": {"level": "9"}}).encode())
        code, out, _ = await diff(nats=nats_server.url)
        assert code == 1
        assert "-  level: '9'" in out and "+  level: '1'" in out
        assert "1 object differs: 1 changed" in out
        code, out, _ = await diff(nats=nats_server.url, output="json")
        assert code == 1 and json.loads(out)[0]["name"] == "settings"

        code, out, _ = await diff(api=api_url)   # the same through the api's bundle route
        assert code == 1 and "1 object differs: 1 changed" in out
        code, _, err = await diff()
        assert code == 2 and "--nats" in err
    out_io, err_io = io.StringIO(), io.StringIO()
    code = await diff_command("nope", nats=nats_server.url, stdout=out_io, stderr=err_io)
    assert code == 2 and "has no successful render" in err_io.getvalue()


def owned_by(owner: dict[str, Any], api_version: str, kind: str, name: str,
             **spec: Any) -> dict[str, Any]:
    """An object a controller would create for ``owner`` (the contract server runs none)."""
    meta = owner["metadata"]
    return {"apiVersion": api_version, "kind": kind, **spec, "metadata": {
        "name": name, "namespace": meta["namespace"], "ownerReferences": [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": True}]}}


async def test_the_health_verdict_and_objects_route_carry_the_live_tree(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, fake: FakeKubeAPI,
        tmp_path: Path) -> None:
    first = repo.commit(files(), "initial")
    async with running(repo, nats_server, tmp_path / "data") as conveyor:
        await fake.wait_until(lambda: fake.get("apps/v1", "Deployment", "shop", "web") is not None)
        deploy = fake.get("apps/v1", "Deployment", "shop", "web")
        assert deploy is not None
        async with KubeClient(load_kubeconfig(str(fake.write_kubeconfig(
                tmp_path / "controller")))) as controller:  # acts as the controllers would
            rs = await controller.apply(owned_by(deploy, "apps/v1", "ReplicaSet", "web-abc",
                                                 spec={"replicas": 2, "selector": {
                                                     "matchLabels": {"app": "web"}}}))
            await controller.apply(owned_by(rs, "v1", "Pod", "web-abc-1",
                                            spec={"containers": [{"name": "web",
                                                                  "image": "nginx"}]}))
            await controller.apply(owned_by(rs, "v1", "Pod", "web-abc-2",
                                            spec={"containers": [{"name": "web",
                                                                  "image": "nginx"}]}))
            stranger = {**deploy, "metadata": {**deploy["metadata"], "uid": "not-web"}}
            await controller.apply(owned_by(stranger, "apps/v1", "ReplicaSet", "other"))
        fake.set_status("apps/v1", "ReplicaSet", "shop", "web-abc", {
            "observedGeneration": 1, "replicas": 2, "readyReplicas": 1,
            "availableReplicas": 1})
        fake.set_status("v1", "Pod", "shop", "web-abc-1", {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"}]})
        fake.set_status("v1", "Pod", "shop", "web-abc-2", {"phase": "Pending"})
        fake.set_status("apps/v1", "Deployment", "shop", "web", HEALTHY)
        events = await wait_for_events(bus, outcome(first, ev.HEALTH_HEALTHY))
        [applied, health] = of(events, first, ev.APPLY_SUCCEEDED, ev.HEALTH_HEALTHY)
        assert "children" not in applied.data["health"]  # recorded once, in the verdict
        [tree] = health.data["children"]
        assert (tree["kind"], tree["namespace"], tree["name"]) == ("Deployment", "shop", "web")
        [replicaset] = tree["children"]
        assert (replicaset["kind"], replicaset["name"]) == ("ReplicaSet", "web-abc")
        assert replicaset["status"] == "Progressing"
        assert [(p["kind"], p["name"], p["status"]) for p in replicaset["children"]] == [
            ("Pod", "web-abc-2", "Progressing"), ("Pod", "web-abc-1", "Healthy")]

        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        end = await bus.last_seq()
        async with asyncio.timeout(30), api.projector.changed:
            await api.projector.changed.wait_for(lambda: api.projector.position >= end)
        async with aiohttp.ClientSession() as http, \
                http.get(api.url + "/api/v1/environments/dev/objects") as resp:
            assert resp.status == 200
            body = await resp.json()
        by_kind = {o["kind"]: o for o in body["objects"]}
        assert by_kind["ConfigMap"]["children"] == []
        web_tree = by_kind["Deployment"]["children"]
        assert [(c["kind"], c["name"], c["status"]) for c in web_tree] == [
            ("ReplicaSet", "web-abc", "Progressing")]
        assert {(p["name"], p["status"]) for p in web_tree[0]["children"]} == {
            ("web-abc-1", "Healthy"), ("web-abc-2", "Progressing")}
