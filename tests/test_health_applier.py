"""The applier waits by the user's health rules: a repository's Lua tree and CEL checks (at the
commit it applies) over the operator's tree over the built-in rules; a kind no rule knows is
not waited for and is named in ``conveyor.health.*``. Real services, the kubernetes contract
server, a real git repository."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import yaml

from conveyor.app import Conveyor
from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import digest_of, encode_bundle
from orchestrator.domain.events import Event, new_event
from orchestrator.resources import Resources
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.applier.service import Applier
from services.git_watcher.service import GitWatcher
from tests.support.kubeapi import FakeKubeAPI
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

CONFIG = """\
environments:
  dev:
    path: dev
    target:
      kubernetes:
        kubeconfig: ${DEV_KUBECONFIG}
        namespace: shop
    sync:
      wait: {timeout: 3s, interval: 20ms}
health:
  customizations: health
  checks:
    - apiVersion: example.com/v1
      kind: Sprocket
      failed: "has(status.phase) && status.phase == 'Jammed'"
      current: "has(status.phase) && status.phase == 'Turning'"
"""
REPO_WIDGET_LUA = """\
if obj.status ~= nil and obj.status.spinning == true then
  return {status = "Healthy", message = "spinning"}
end
return {status = "Progressing", message = "waiting for the widget to spin"}
"""
OPERATOR_WIDGET_LUA = 'return {status = "Degraded", message = "the operator\'s rule"}\n'
OPERATOR_GADGET_LUA = 'return {status = "Healthy", message = "gadgets are fine"}\n'


def crd(kind: str) -> dict[str, object]:
    plural = kind.lower() + "s"
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind,
                               "listKind": f"{kind}List"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "x-kubernetes-preserve-unknown-fields": True}}}]}}


def cr(kind: str, name: str) -> dict[str, object]:
    return {"apiVersion": "example.com/v1", "kind": kind, "metadata": {"name": name},
            "spec": {"size": 1}}


def manifests(*objects: dict[str, object]) -> str:
    return yaml.safe_dump_all(objects)


NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}


def outcome(sha: str, *also: str) -> Callable[[list[Event]], bool]:
    done = {ev.APPLY_SUCCEEDED, ev.APPLY_SKIPPED, ev.APPLY_FAILED, ev.RENDER_FAILED}

    def check(events: list[Event]) -> bool:
        seen = {e.type for e in events if e.correlationid == sha}
        return bool(seen & done) and set(also) <= seen

    return check


def of(events: list[Event], sha: str, *types: str) -> list[Event]:
    return [e for e in events if e.correlationid == sha and e.type in types]


@contextlib.asynccontextmanager
async def running(repo: Repo, nats: EmbeddedNats, data: Path,
                  operator: Path) -> AsyncIterator[Conveyor]:
    conveyor = Conveyor(Settings(nats_url=nats.url, data_dir=data, repo=str(repo.path),
                                 branch="main", listen="127.0.0.1:0", interval=3600.0,
                                 health_customizations=(operator,),
                                 # the operator allows DEV_KUBECONFIG, a file in its directory
                                 secrets=SecretPolicy(env_allow=("DEV_*",),
                                                      secrets_dirs=(str(data.parent),))))
    await conveyor.start()
    try:
        yield conveyor
    finally:
        await conveyor.stop()


@pytest.fixture
async def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as server:
        monkeypatch.setenv("DEV_KUBECONFIG",
                           str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        yield server


@pytest.fixture
def operator(tmp_path: Path) -> Path:
    root = tmp_path / "operator-health"
    for relative, text in {"example.com/Widget/health.lua": OPERATOR_WIDGET_LUA,
                           "example.com/Gadget/health.lua": OPERATOR_GADGET_LUA}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


async def test_the_applier_waits_by_repo_and_operator_rules_and_names_kinds_without_one(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, fake: FakeKubeAPI,
        tmp_path: Path, operator: Path) -> None:
    first = repo.commit({
        "conveyor.yaml": CONFIG,
        "health/example.com/Widget/health.lua": REPO_WIDGET_LUA,
        "dev/crds.yaml": manifests(crd("Widget"), crd("Gadget"), crd("Doohickey")),
        "dev/objects.yaml": manifests(NAMESPACE, cr("Widget", "w"), cr("Gadget", "g"),
                                      cr("Doohickey", "d")),
    }, "widgets, gadgets and an unruled doohickey")
    async with running(repo, nats_server, tmp_path / "data", operator) as conveyor:
        # the repository's Widget rule keeps the sync waiting: re-reads (the operator's
        # Degraded rule would have failed it at once, with none)
        await fake.wait_until(lambda: len(fake.requests_to("GET", "widgets/w$")) >= 2)
        fake.set_status("example.com/v1", "Widget", "shop", "w", {"spinning": True})
        events = await wait_for_events(bus, outcome(first, ev.HEALTH_HEALTHY))
        [applied] = of(events, first, ev.APPLY_SUCCEEDED)
        [health] = of(events, first, ev.HEALTH_HEALTHY)
        assert health.data["no_rule"] == ["Doohickey.example.com"]
        assert "no health rule for Doohickey.example.com" in health.data["message"]
        assert applied.data["health"]["no_rule"] == ["Doohickey.example.com"]

        # a CEL check from conveyor.yaml: a jammed sprocket fails the sync at once
        second = repo.commit({"dev/crds.yaml": manifests(crd("Widget"), crd("Gadget"),
                                                         crd("Doohickey"), crd("Sprocket")),
                              "dev/sprocket.yaml": manifests(cr("Sprocket", "s"))},
                             "a sprocket")
        watcher = conveyor.service("git-watcher")
        assert isinstance(watcher, GitWatcher)
        await watcher.poll()
        await fake.wait_until(lambda: fake.get("example.com/v1", "Sprocket", "shop", "s")
                              is not None)
        fake.set_status("example.com/v1", "Sprocket", "shop", "s", {"phase": "Jammed"})
        events = await wait_for_events(bus, outcome(second, ev.HEALTH_DEGRADED))
        [failed] = of(events, second, ev.APPLY_FAILED)
        assert failed.data["reason"] == "Degraded"
        [sprocket] = [o for o in failed.data["unhealthy_objects"] if o["kind"] == "Sprocket"]
        assert sprocket["status"] == "Degraded" and sprocket["rule"] == "cel:conveyor.yaml:13"


async def test_a_missing_rule_tree_fails_the_render_naming_it(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, fake: FakeKubeAPI,
        tmp_path: Path, operator: Path) -> None:
    first = repo.commit({"conveyor.yaml": CONFIG, "dev/objects.yaml": manifests(NAMESPACE)},
                        "no health/ directory")
    async with running(repo, nats_server, tmp_path / "data", operator):
        events = await wait_for_events(bus, outcome(first))
    [failed] = of(events, first, ev.RENDER_FAILED)
    assert failed.data["reason"] == "InvalidHealthRules"
    assert "health.customizations: health: no such directory" in str(failed.data["errors"])


async def test_rules_an_event_carries_that_cannot_be_used_fail_the_apply_naming_them(
        nats_server: EmbeddedNats, bus: EventBus, fake: FakeKubeAPI, tmp_path: Path) -> None:
    # an event that bypassed the watcher's checks: a CEL expression that does not compile
    objects = [NAMESPACE]
    payload = encode_bundle(objects)
    await bus.put_bundle(digest_of(payload), payload)
    env = {"name": "dev", "path": "dev",
           "target": {"kubernetes": {"kubeconfig": str(tmp_path / "kubeconfig"),
                                     "namespace": "shop"}},
           "sync": {"wait": {"timeout": "2s"}},
           "health": {"checks": [{"apiVersion": "example.com/v1", "kind": "Sprocket",
                                  "current": "status.phase ==", "line": 7}]}}
    sha = "c" * 40
    applier = Applier(Resources.around(bus, Settings(
        nats_url=nats_server.url, data_dir=tmp_path,
        secrets=SecretPolicy(secrets_dirs=(str(tmp_path),)))))
    await applier.start()
    try:
        await bus.publish(new_event(ev.RENDER_SUCCEEDED, env="dev", correlation=sha,
                                    data={"env": env, "digest": digest_of(payload),
                                          "origin_seq": await bus.last_seq() + 1}))
        events = await wait_for_events(bus, outcome(sha))
    finally:
        await applier.stop()
    [failed] = of(events, sha, ev.APPLY_FAILED)
    assert failed.data["reason"] == "InvalidHealthRules"
    assert failed.data["error"].startswith("conveyor.yaml:7: current: Failed to parse")
    assert not of(events, sha, ev.APPLY_STARTED)  # the target was never touched
    assert fake.get("v1", "Namespace", "", "shop") is None
