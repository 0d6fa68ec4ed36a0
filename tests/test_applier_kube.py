"""The kubernetes target against the contract server: order, CRDs, wave gates, prune, health,
inventory and errors. Status changes are driven with ``FakeKubeAPI.set_status``; the tests await
conditions on the server's request log instead of sleeping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters.kube import KubeClient, load_kubeconfig
from orchestrator.domain.health import Health
from orchestrator.domain.inventory import ENVIRONMENT_LABEL
from orchestrator.errors import FencedError, ManifestError, PermanentError, TransientError
from orchestrator.ports import ApplyRequest, TargetState
from orchestrator.targets.kube.clients import KubePool
from orchestrator.targets.kube.target import KubeTarget, kube_target
from tests.support.kubeapi import FakeKubeAPI

FAST = {"wait": {"timeout": "5s", "interval": "10ms"}}
HEALTHY = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
           "availableReplicas": 1}


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as server:
        yield server


@pytest.fixture
def kubeconfig(fake: FakeKubeAPI, tmp_path: Path) -> Path:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


def make(kubeconfig: Path, env: str = "dev", **sync: Any) -> KubeTarget:
    return kube_target(env, {"kubeconfig": str(kubeconfig), "namespace": "shop"},
                       {**FAST, **sync}, KubePool())


def ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def cm(name: str, wave: int | None = None, namespace: str | None = None,
       **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if wave is not None:
        meta["annotations"] = {"conveyor.dev/sync-wave": str(wave)}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data or {"k": "v"}}


def deployment(name: str, image: str = "nginx:1", wave: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if wave is not None:
        meta["annotations"] = {"conveyor.dev/sync-wave": str(wave)}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}}}


CRD = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
       "metadata": {"name": "widgets.example.com"},
       "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                          "listKind": "WidgetList"},
                "versions": [{"name": "v1", "served": True, "storage": True,
                              "schema": {"openAPIV3Schema": {
                                  "type": "object",
                                  "x-kubernetes-preserve-unknown-fields": True}}}]}}
WIDGET = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"},
          "spec": {"size": 3}}


def request(objects: list[dict[str, Any]], digest: str = "sha256:one", seq: int = 1,
            revision: str = "a" * 40) -> ApplyRequest:
    return ApplyRequest(env="dev", revision=revision, digest=digest, objects=objects,
                        origin_seq=seq)


def patched(fake: FakeKubeAPI) -> list[str]:
    """The object names server-side applied, in order (dry runs and the inventory left out)."""
    return [r.path.rsplit("/", 1)[1] for r in fake.requests_to("PATCH")
            if "dryRun" not in r.query and "conveyor-inventory" not in r.path]


async def test_objects_are_labelled_and_namespaced_and_inventory_records_the_sync(
        fake: FakeKubeAPI, kubeconfig: Path) -> None:
    target = make(kubeconfig)
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "reader", "namespace": "ignored"}, "rules": []}
    assert await target.current() == TargetState(None, None, None)
    result = await target.apply(request([ns("shop"), cm("a"), role], seq=7))

    live = fake.get("v1", "ConfigMap", "shop", "a")
    assert live is not None and live["metadata"]["labels"][ENVIRONMENT_LABEL] == "dev"
    cluster_role = fake.get("rbac.authorization.k8s.io/v1", "ClusterRole", "", "reader")
    assert cluster_role is not None and "namespace" not in cluster_role["metadata"]
    managers = {m["manager"] for m in live["metadata"]["managedFields"]}
    assert managers == {"conveyor"}
    assert all(p.query["force"] == "true" for p in fake.requests_to("PATCH"))
    assert result.changed and "3 created" in result.summary
    assert result.details["inventory"]["configmap"] == "ConfigMap/shop/conveyor-inventory-dev"
    assert {e["name"] for e in result.details["inventory"]["entries"]} == {"shop", "a", "reader"}

    state = await target.current()
    assert (state.digest, state.revision, state.origin_seq) == ("sha256:one", "a" * 40, 7)
    inv = fake.get("v1", "ConfigMap", "shop", "conveyor-inventory-dev")
    assert inv is not None
    assert len(json.loads(inv["data"]["inventory.json"])["entries"]) == 3

    again = await target.apply(request([ns("shop"), cm("a"), role], digest="sha256:two"))
    assert not again.changed and "3 unchanged" in again.summary


async def test_namespaces_and_crds_first_and_crs_wait_until_the_crd_is_established(
        tmp_path: Path) -> None:
    async with FakeKubeAPI(crd_establish=None) as fake:
        target = make(fake.write_kubeconfig(tmp_path / "kc"))
        bundle = [WIDGET, cm("z", wave=-5), CRD, ns("shop")]
        task = asyncio.create_task(target.apply(request(bundle)))
        crd_path = "customresourcedefinitions/widgets.example.com$"
        # the applier polls the CRD: it is waiting for it to be Established
        await fake.wait_until(lambda: len(fake.requests_to("GET", crd_path)) >= 3)
        assert set(patched(fake)) == {"shop", "widgets.example.com"}
        assert not task.done()
        fake.establish("widgets.example.com")
        result = await task
    order = patched(fake)
    assert set(order[:2]) == {"shop", "widgets.example.com"}   # bootstrap, whatever the wave
    assert order[2:] == ["z", "w1"]   # wave -5, then wave 0
    assert result.details["waves"] == 3
    widget = fake.get("example.com/v1", "Widget", "shop", "w1")
    assert widget is not None   # namespaced from the CRD in the bundle: defaulted to shop


async def test_a_wave_starts_only_when_the_previous_one_is_healthy(
        fake: FakeKubeAPI, kubeconfig: Path) -> None:
    target = make(kubeconfig)
    bundle = [ns("shop"), deployment("db", wave=-1), cm("app-config", wave=0),
              deployment("app", wave=0)]
    task = asyncio.create_task(target.apply(request(bundle)))
    await fake.wait_until(lambda: len(fake.requests_to("GET", "deployments/db$")) >= 2)
    assert "app-config" not in patched(fake) and "app" not in patched(fake)
    fake.set_status("apps/v1", "Deployment", "shop", "db", HEALTHY)
    await fake.wait_until(lambda: "app" in patched(fake))
    assert not task.done()   # now waiting for wave 0
    fake.set_status("apps/v1", "Deployment", "shop", "app", HEALTHY)
    result = await task
    assert patched(fake)[:2] == ["shop", "db"]
    assert set(patched(fake)[2:]) == {"app-config", "app"}
    assert result.details["health"]["status"] == "Healthy"
    assert result.details["health"]["objects"] == []


async def test_health_timeout_fails_listing_the_objects_not_healthy(
        fake: FakeKubeAPI, kubeconfig: Path) -> None:
    target = make(kubeconfig, wait={"timeout": "300ms", "interval": "20ms"})
    failed = await target.apply(request([ns("shop"), deployment("web"), cm("later", wave=1)]))
    assert failed.failure == "HealthCheckTimeout"   # a value, not an exception
    assert "Deployment.apps/shop/web: Progressing" in failed.summary
    objects = failed.details["unhealthy_objects"]
    assert [(o["kind"], o["name"], o["status"]) for o in objects] == [
        ("Deployment", "web", "Progressing")]
    assert "generation" in objects[0]["message"]
    assert failed.health is not None and failed.health.status is Health.PROGRESSING
    assert failed.details["health"] == failed.health.to_dict()
    assert "later" not in patched(fake)   # the next wave never started
    # not recorded as applied: the same bundle is applied again next time, not skipped
    assert (await target.current()).digest is None
    stored = await target.stored()
    assert stored.attempted is not None and stored.attempted.digest == "sha256:one"


async def test_degraded_object_fails_at_once(fake: FakeKubeAPI, kubeconfig: Path) -> None:
    lazy = make(kubeconfig, wait=False)
    first = await lazy.apply(request([ns("shop"), deployment("web")]))
    assert first.details["health"]["status"] == "Progressing"   # not waited for
    fake.set_status("apps/v1", "Deployment", "shop", "web", {
        **HEALTHY, "conditions": [{"type": "Progressing", "status": "False",
                                   "reason": "ProgressDeadlineExceeded"}]})
    target = make(kubeconfig, wait={"timeout": "1h", "interval": "10ms"})
    failed = await target.apply(request([ns("shop"), deployment("web")], digest="sha256:two"))
    assert failed.failure == "Degraded"
    assert "exceeded its progress deadline" in failed.summary
    assert failed.health is not None and failed.health.status is Health.DEGRADED


async def test_prune_deletes_only_what_left_labelled_and_not_opted_out_in_reverse_order(
        fake: FakeKubeAPI, kubeconfig: Path) -> None:
    target = make(kubeconfig, prune=True)
    first = [ns("shop"), cm("keep"), cm("gone-cm"), cm("adopted"), cm("opted-out"),
             deployment("gone-deploy")]
    await make(kubeconfig, wait=False).apply(request(first))
    async with KubeClient(load_kubeconfig(kubeconfig)) as client:
        # someone else takes "adopted" (removes our label); "opted-out" asks to be kept
        base = "/api/v1/namespaces/shop/configmaps"
        await client.request("PATCH", f"{base}/adopted",
                             content_type="application/merge-patch+json",
                             body=json.dumps({"metadata": {"labels": {
                                 ENVIRONMENT_LABEL: "other"}}}).encode())
        await client.request("PATCH", f"{base}/opted-out",
                             content_type="application/merge-patch+json",
                             body=json.dumps({"metadata": {"annotations": {
                                 "conveyor.dev/prune": "disabled"}}}).encode())
        # an object labelled for dev that Conveyor never applied is not in the inventory
        await client.apply({**cm("stranger"), "metadata": {
            "name": "stranger", "namespace": "shop", "labels": {ENVIRONMENT_LABEL: "dev"}}},
            field_manager="someone")
    before = len(fake.requests_to("DELETE"))
    result = await target.apply(request([ns("shop"), cm("keep"), cm("new")],
                                         digest="sha256:two"))
    deletes = [r.path for r in fake.requests_to("DELETE")[before:]]
    assert deletes == ["/apis/apps/v1/namespaces/shop/deployments/gone-deploy",
                       "/api/v1/namespaces/shop/configmaps/gone-cm"]
    assert result.details["pruned"] == ["Deployment.apps/shop/gone-deploy",
                                        "ConfigMap/shop/gone-cm"]
    assert result.details["not_pruned"] == ["ConfigMap/shop/adopted", "ConfigMap/shop/opted-out"]
    for name in ("keep", "new", "adopted", "opted-out", "stranger"):
        assert fake.get("v1", "ConfigMap", "shop", name) is not None, name
    entries = {e["name"] for e in result.details["inventory"]["entries"]}
    assert entries == {"shop", "keep", "new"}


async def test_without_prune_nothing_is_deleted(fake: FakeKubeAPI, kubeconfig: Path) -> None:
    target = make(kubeconfig)   # prune defaults to false, as Argo CD's automated sync
    await target.apply(request([ns("shop"), cm("a"), cm("b")]))
    result = await target.apply(request([ns("shop"), cm("a")], digest="sha256:two"))
    assert fake.requests_to("DELETE") == []
    assert result.details["not_pruned"] == ["ConfigMap/shop/b"]
    assert fake.get("v1", "ConfigMap", "shop", "b") is not None


async def test_invalid_bundles_fail_before_anything_is_applied(
        fake: FakeKubeAPI, kubeconfig: Path) -> None:
    target = make(kubeconfig)
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    with pytest.raises(ManifestError) as err:
        await target.apply(request([ns("shop"), unknown]))
    assert err.value.reason == "NoKindMatch" and "Gadget" in str(err.value)
    with pytest.raises(ManifestError) as err:
        await target.apply(request([ns("shop"), cm("a", wave="soon")]))  # type: ignore[arg-type]
    assert err.value.reason == "InvalidSyncWave"
    assert fake.requests_to("PATCH") == []


async def test_errors_keep_their_classification(fake: FakeKubeAPI, kubeconfig: Path) -> None:
    target = make(kubeconfig)
    await target.apply(request([ns("shop")]))
    # one 503: retried inside the client, the sync succeeds
    fake.inject_failure("configmaps/a$", 503, times=1, method="PATCH")
    await target.apply(request([ns("shop"), cm("a")], digest="sha256:2"))
    # a lasting 503: transient, for the applier to retry later with backoff
    fake.inject_failure("configmaps/b$", 503, times=100, method="PATCH")
    with pytest.raises(TransientError) as transient:
        await target.apply(request([ns("shop"), cm("b")], digest="sha256:3"))
    assert "ConfigMap/shop/b" in str(transient.value)
    # an invalid object: permanent, with the API's message
    with pytest.raises(PermanentError) as invalid:
        await target.apply(request([ns("shop"), cm("Not_Valid")], digest="sha256:4"))
    assert "RFC 1123" in str(invalid.value)
    # a field another manager owns, with force off: permanent conflict
    strict = kube_target("dev", {"kubeconfig": str(kubeconfig), "namespace": "shop",
                                 "force": False}, FAST, KubePool())
    async with KubeClient(load_kubeconfig(kubeconfig)) as client:
        await client.apply(cm("shared", namespace="shop", k="theirs"), field_manager="helm")
    with pytest.raises(PermanentError) as conflict:
        await strict.apply(request([ns("shop"), cm("shared", k="ours")], digest="sha256:5"))
    assert conflict.value.reason == "FieldManagerConflict" and '"helm"' in str(conflict.value)


async def test_forbidden_is_permanent_with_the_api_message_and_no_token(tmp_path: Path) -> None:
    from tests.support.kubeapi.certs import TestPKI

    pki = TestPKI()
    token = "s3cr3t-applier-token-value"
    async with FakeKubeAPI(ssl_context=pki.server_context(), tokens={token}) as fake:
        kc = fake.write_kubeconfig(tmp_path / "kc", token=token, ca_pem=pki.ca_pem)
        message = ('configmaps "a" is forbidden: User "system:serviceaccount:conveyor:applier" '
                   'cannot patch resource "configmaps" in API group "" in the namespace "shop"')
        fake.inject_failure("configmaps/a$", 403, times=10, method="PATCH", message=message)
        target = make(kc)
        with pytest.raises(PermanentError) as err:
            await target.apply(request([ns("shop"), cm("a")]))
        assert err.value.reason == "Forbidden"
        assert message in str(err.value) and token not in str(err.value)
        assert "bearer" in {r.user for r in fake.requests}   # the token was sent, over TLS
        # a wrong token: 401, permanent, the token named nowhere
        bad = fake.write_kubeconfig(tmp_path / "bad", token="wrong-token-xyz", ca_pem=pki.ca_pem)
        with pytest.raises(PermanentError) as unauthorized:
            await make(bad).apply(request([ns("shop")]))
        assert unauthorized.value.reason == "Unauthorized"
        assert "wrong-token-xyz" not in str(unauthorized.value)


async def test_settings_are_checked(kubeconfig: Path) -> None:
    with pytest.raises(PermanentError) as err:
        kube_target("dev", {"kubeconfig": str(kubeconfig), "namespce": "x"}, {}, KubePool())
    assert "did you mean 'namespace'" in str(err.value)
    with pytest.raises(PermanentError) as err:
        kube_target("dev", {"kubeconfig": str(kubeconfig)}, {"wait": {"timeout": "soon"}},
                    KubePool())
    assert "sync.wait.timeout" in str(err.value)
    with pytest.raises(PermanentError) as err:
        kube_target("dev", {"kubeconfig": str(kubeconfig.parent / "missing")}, {}, KubePool())
    assert err.value.reason == "InvalidConfig"
    target = kube_target("dev", {"kubeconfig": str(kubeconfig), "inventoryNamespace": "ops"},
                         {"prune": True, "selfHeal": True, "driftInterval": "90s"}, KubePool())
    s = target.settings
    assert (s.prune, s.self_heal, s.drift_interval, s.wait_timeout) == (True, True, 90.0, 300.0)
    assert target.namespace == "default"   # the kubeconfig context's
    assert target.inventory.where == "ConfigMap/ops/conveyor-inventory-dev"


async def test_a_sync_applies_concurrently_within_the_bound_and_leaves_the_bundle_alone(
        fake: FakeKubeAPI, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = kube_target("dev", {"kubeconfig": str(kubeconfig), "namespace": "shop",
                                 "concurrency": 3}, {**FAST, "wait": False}, KubePool())
    real, flying, peak = target.client.apply, 0, 0

    async def counting(obj: Any, **kwargs: Any) -> Any:
        nonlocal flying, peak
        flying += 1
        peak = max(peak, flying)
        try:
            return await real(obj, **kwargs)
        finally:
            flying -= 1

    monkeypatch.setattr(target.client, "apply", counting)
    bundle = [ns("shop"), *(cm(f"c{i}") for i in range(20)), deployment("web")]
    pristine = json.loads(json.dumps(bundle))
    result = await target.apply(request(bundle))
    assert "22 created" in result.summary and peak == 3
    assert bundle == pristine                      # labels and namespaces went on copies

    # every object is tried even when some fail; a permanent failure wins over a transient one
    fake.inject_failure("configmaps/c3$", 503, times=100, method="PATCH")
    broken = [ns("shop"), *(cm(f"c{i}", v="2") for i in range(20)), cm("Not_Valid")]
    with pytest.raises(PermanentError) as err:
        await target.apply(request(broken, digest="sha256:two"))
    assert "Not_Valid" in str(err.value)
    changed = [i for i in range(20)
               if (fake.get("v1", "ConfigMap", "shop", f"c{i}") or {})["data"] == {"v": "2"}]
    assert changed == [i for i in range(20) if i != 3]


async def test_a_stale_lease_holder_is_refused(fake: FakeKubeAPI, kubeconfig: Path) -> None:
    """The inventory records the applier's lease token; an older holder may not sync over it."""
    target = make(kubeconfig)
    await target.apply(replace(request([ns("shop"), cm("a", k="new")], digest="sha256:new",
                                       seq=5), fence=20))
    before = len(fake.requests_to("PATCH"))
    with pytest.raises(FencedError, match="lease 20"):
        await target.apply(replace(request([ns("shop"), cm("a", k="old")],
                                           digest="sha256:old", seq=4), fence=10))
    assert len(fake.requests_to("PATCH")) == before  # nothing applied
    live = fake.get("v1", "ConfigMap", "shop", "a")
    assert live is not None and live["data"] == {"k": "new"}
    assert (await target.current()).digest == "sha256:new"
    assert await target.has_applied(replace(request([], digest="sha256:new", seq=5), fence=20))
