"""KubeClient's four verbs against the contract server: apply, get, list, delete."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from orchestrator.adapters.kube import KubeClient, KubeConfig
from orchestrator.errors import ManifestError, PermanentError
from tests.support.kubeapi import FakeKubeAPI


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as server:
        yield server


@pytest.fixture
async def client(fake: FakeKubeAPI) -> AsyncIterator[KubeClient]:
    async with KubeClient(KubeConfig(server=fake.url, namespace="team")) as c:
        await c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
        yield c


def cm(name: str, namespace: str | None = None, labels: dict[str, str] | None = None,
       **data: str) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "labels": labels or {}}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def deployment(image: str, replicas: int = 2) -> dict[str, object]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "team"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}}}


async def test_apply_creates_then_updates_with_server_bookkeeping(
        client: KubeClient, fake: FakeKubeAPI) -> None:
    created = await client.apply(deployment("nginx:1"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    again = await client.apply(deployment("nginx:1"))
    assert again["metadata"]["resourceVersion"] == meta["resourceVersion"]   # no-op apply
    changed = await client.apply(deployment("nginx:2"))
    assert changed["metadata"]["generation"] == 2
    assert int(changed["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert changed["metadata"]["uid"] == meta["uid"]

    patch = fake.requests_to("PATCH")[-1]
    assert patch.content_type == "application/apply-patch+yaml"
    assert patch.query == {"fieldManager": "conveyor", "force": "false"}
    fake.set_status("apps/v1", "Deployment", "team", "web", {"readyReplicas": 2})
    live = await client.get("apps/v1", "Deployment", "team", "web")
    assert live is not None and live["status"] == {"readyReplicas": 2}
    # a later apply keeps the status the server owns, and the generation stays put
    kept = await client.apply(deployment("nginx:2"))
    assert kept["status"] == {"readyReplicas": 2} and kept["metadata"]["generation"] == 2


async def test_fields_dropped_from_the_applied_config_are_removed(client: KubeClient) -> None:
    await client.apply(cm("settings", a="1", b="2"))
    out = await client.apply(cm("settings", a="1"))
    assert out["data"] == {"a": "1"}


async def test_dry_run_returns_the_would_be_object_and_stores_nothing(
        client: KubeClient, fake: FakeKubeAPI) -> None:
    out = await client.apply(cm("ghost", a="1"), dry_run=True)
    assert out["data"] == {"a": "1"}
    assert fake.requests_to("PATCH")[-1].query["dryRun"] == "All"
    assert await client.get("v1", "ConfigMap", "team", "ghost") is None
    await client.apply(cm("real", a="1"))
    assert await client.delete("v1", "ConfigMap", "team", "real", dry_run=True)
    assert await client.get("v1", "ConfigMap", "team", "real") is not None


async def test_default_namespace_and_cluster_scope(client: KubeClient, fake: FakeKubeAPI) -> None:
    out = await client.apply(cm("no-namespace-given", a="1"))
    assert out["metadata"]["namespace"] == "team"          # the kubeconfig context's
    ns = await client.apply({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": "other", "namespace": "ignored"}})
    assert "namespace" not in ns["metadata"]
    assert fake.requests_to("PATCH")[-1].path == "/api/v1/namespaces/other"
    role = await client.apply({"apiVersion": "rbac.authorization.k8s.io/v1",
                               "kind": "ClusterRole", "metadata": {"name": "reader"},
                               "rules": [{"apiGroups": [""], "resources": ["pods"],
                                          "verbs": ["get"]}]})
    assert role["rules"][0]["verbs"] == ["get"]


async def test_list_selectors_namespaces_and_pages(client: KubeClient, fake: FakeKubeAPI) -> None:
    await client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}})
    for i in range(5):
        await client.apply(cm(f"c{i}", "team", {"app": "web", "tier": str(i % 2)}))
    await client.apply(cm("other", "b", {"app": "db"}))

    assert len(await client.list("v1", "ConfigMap", "team", label_selector={"app": "web"})) == 5
    names = [o["metadata"]["name"] for o in await client.list(
        "v1", "ConfigMap", label_selector="app in (web,db),tier!=1")]
    assert names == ["other", "c0", "c2", "c4"]              # all namespaces, sorted by key
    assert [o["metadata"]["name"] for o in await client.list(
        "v1", "ConfigMap", label_selector="!tier")] == ["other"]
    items = await client.list("v1", "ConfigMap", "team", label_selector="tier", page_size=2)
    assert len(items) == 5 and all(i["kind"] == "ConfigMap" for i in items)
    pages = fake.requests_to("GET", "^/api/v1/namespaces/team/configmaps$")[-3:]
    assert [p.query.get("continue") for p in pages] == [None, "2", "4"]
    by_name = await client.list("v1", "ConfigMap", "team", field_selector="metadata.name=c3")
    assert [o["metadata"]["name"] for o in by_name] == ["c3"]


async def test_delete_reports_whether_it_deleted(client: KubeClient, fake: FakeKubeAPI) -> None:
    await client.apply(cm("gone", a="1"))
    assert await client.delete("v1", "ConfigMap", "team", "gone") is True
    assert fake.requests_to("DELETE")[-1].body["propagationPolicy"] == "Background"
    assert await client.delete("v1", "ConfigMap", "team", "gone") is False
    assert await client.get("v1", "ConfigMap", "team", "gone") is None


async def test_owner_references_cascade_unless_orphaned(client: KubeClient) -> None:
    owner = await client.apply(cm("owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
           "uid": owner["metadata"]["uid"]}
    dependent = cm("dependent")
    dependent["metadata"]["ownerReferences"] = [ref]   # type: ignore[index]
    await client.apply(dependent)
    await client.delete("v1", "ConfigMap", "team", "owner")
    assert await client.get("v1", "ConfigMap", "team", "dependent") is None


async def test_the_api_server_refuses_like_the_real_one(client: KubeClient) -> None:
    with pytest.raises(PermanentError) as missing_ns:
        await client.apply(cm("x", "nowhere"))
    assert missing_ns.value.reason == "NotFound"
    assert 'namespaces "nowhere" not found' in str(missing_ns.value)

    with pytest.raises(PermanentError) as invalid:
        await client.apply(cm("Not_A_Name"))
    assert invalid.value.reason == "Invalid"
    assert "RFC 1123" in str(invalid.value)

    with pytest.raises(ManifestError):
        await client.apply({"kind": "ConfigMap", "metadata": {"name": "x"}})

    with pytest.raises(PermanentError) as unknown:
        await client.get("example.com/v1", "Nope", "team", "x")
    assert unknown.value.reason == "NoKindMatch"


async def test_not_found_is_a_status_object_shaped_like_the_real_one(fake: FakeKubeAPI) -> None:
    url = f"{fake.url}/apis/apps/v1/namespaces/default/deployments/x"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 404
        body = json.loads(await r.read())
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": 'deployments.apps "x" not found', "reason": "NotFound",
                    "details": {"name": "x", "group": "apps", "kind": "deployments"},
                    "code": 404}


async def test_secret_string_data_is_stored_as_data(client: KubeClient) -> None:
    out = await client.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                              "stringData": {"password": "hunter2"}})
    assert out["data"] == {"password": "aHVudGVyMg=="} and "stringData" not in out


async def test_apply_leaves_the_callers_object_as_it_was(client: KubeClient,
                                                          fake: FakeKubeAPI) -> None:
    obj = {"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": "other", "namespace": "team", "labels": {"a": "b"}}}
    before = json.loads(json.dumps(obj))
    await client.apply(obj)
    assert obj == before                                  # the namespace is dropped in a copy
    sent = fake.requests_to("PATCH", "/namespaces/other$")[-1]
    assert sent.content_type == "application/apply-patch+yaml"
    assert sent.body == {"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": "other", "labels": {"a": "b"}}}


@pytest.mark.parametrize("server", ["http://127.0.0.1:6443", "https://h.example/k8s/c%201/",
                                    "https://bücher.example", "https://[::1]:6443"])
def test_request_urls_mean_what_aiohttp_would_have_sent(server: str) -> None:
    client = KubeClient(KubeConfig(server=server.rstrip("/")))
    cases = [("/api/v1/namespaces/a/configmaps/b", {"fieldManager": "m", "force": "false"}),
             ("/apis/rbac.authorization.k8s.io/v1/clusterroles/system:aggregate-to-view", None),
             ("/api/v1/pods", {"labelSelector": "app in (a,b),conveyor.dev/env=x y",
                               "limit": "500", "continue": "a+b/c=="})]
    for path, params in cases:
        built = client._url(path, params)
        expected = URL(server.rstrip("/") + path).extend_query(params or {})
        assert (built.scheme, built.raw_host, built.port) == (
            expected.scheme, expected.raw_host, expected.port)
        assert (built.path, built.query) == (expected.path, expected.query)
