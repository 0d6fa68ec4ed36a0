"""The contract server against the real kubectl, and our client against the same objects.

If kubectl can apply, read and delete through FakeKubeAPI, the fake speaks enough of the real
API (discovery fallback from aggregated discovery, openapi v3 field-validation probe, server-side
apply, Status errors) for our own client's tests against it to mean something.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from orchestrator.adapters.kube import KubeClient, load_kubeconfig
from orchestrator.errors import PermanentError
from tests.support.kubeapi import FakeKubeAPI
from tests.support.kubeapi.certs import TestPKI

KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
    "kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl binary not installed")

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: demo, labels: {app: web}}
data: {a: "1"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: "nginx:1.27"}]}
"""

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"""


class Kubectl:
    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(home)}

    async def __call__(self, *args: str, check: bool = True) -> str:
        assert KUBECTL is not None
        proc = await asyncio.create_subprocess_exec(
            KUBECTL, *args, env=self.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
        return out.decode() + err.decode()


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as server:
        yield server


async def test_kubectl_server_side_apply_get_delete(fake: FakeKubeAPI, tmp_path: Path) -> None:
    kubectl = Kubectl(fake.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)
    (tmp_path / "m.yaml").write_text(MANIFESTS)

    out = await kubectl("apply", "--server-side", "-f", str(tmp_path / "m.yaml"))
    assert "configmap/cfg serverside-applied" in out
    assert "deployment.apps/web serverside-applied" in out

    # kubectl asked for aggregated discovery, got the classic documents, and fell back to them
    assert "as=APIGroupDiscoveryList" in fake.requests_to("GET", "^/apis$")[0].accept
    assert fake.requests_to("GET", "^/apis/apps/v1$")
    patches = fake.requests_to("PATCH")
    assert {p.content_type for p in patches} == {"application/apply-patch+yaml"}
    assert all(p.query["fieldManager"] == "kubectl" for p in patches)

    cm = yaml.safe_load(await kubectl("get", "configmap", "cfg", "-n", "demo", "-o", "yaml"))
    assert cm["data"] == {"a": "1"}
    deploy = yaml.safe_load(await kubectl("get", "deployment", "web", "-n", "demo", "-o", "yaml"))
    assert deploy["metadata"]["generation"] == 1
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.27"

    listed = yaml.safe_load(await kubectl("get", "cm", "-n", "demo", "-l", "app in (web,api)",
                                          "-o", "yaml"))
    assert [i["metadata"]["name"] for i in listed["items"]] == ["cfg"]

    # our client sees the very same objects
    cfg = load_kubeconfig(tmp_path / "kubeconfig")
    async with KubeClient(cfg) as client:
        mine = await client.get("v1", "ConfigMap", "demo", "cfg")
        assert mine is not None
        assert mine["metadata"]["uid"] == cm["metadata"]["uid"]
        managers = {m["manager"] for m in mine["metadata"]["managedFields"]}
        assert managers == {"kubectl"}

    out = await kubectl("delete", "deployment", "web", "-n", "demo")
    assert 'deployment.apps "web" deleted' in out
    out = await kubectl("get", "deployment", "web", "-n", "demo", check=False)
    assert 'deployments.apps "web" not found' in out
    out = await kubectl("delete", "-f", str(tmp_path / "m.yaml"), "--ignore-not-found")
    assert 'namespace "demo" deleted' in out
    assert fake.get("v1", "Namespace", "", "demo") is None


async def test_kubectl_and_client_share_fields_and_conflict(fake: FakeKubeAPI,
                                                            tmp_path: Path) -> None:
    kubectl = Kubectl(fake.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)
    (tmp_path / "m.yaml").write_text(MANIFESTS)
    await kubectl("apply", "--server-side", "-f", str(tmp_path / "m.yaml"))

    async with KubeClient(load_kubeconfig(tmp_path / "kubeconfig")) as client:
        # a field kubectl does not own: no conflict, both managers recorded
        await client.apply({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "cfg", "namespace": "demo"},
                            "data": {"b": "2"}})
        # a field kubectl owns, with another value: the server refuses, naming the owner
        change = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "cfg", "namespace": "demo"}, "data": {"a": "changed"}}
        with pytest.raises(PermanentError) as err:
            await client.apply(change)
        assert err.value.reason == "FieldManagerConflict"
        assert 'conflict with "kubectl"' in str(err.value) and ".data.a" in str(err.value)
        forced = await client.apply(change, force=True)
        assert forced["data"] == {"a": "changed"}   # data.b dropped: conveyor stopped applying it

    # kubectl reapplying its old value now conflicts with conveyor, as on a real cluster
    out = await kubectl("apply", "--server-side", "-f", str(tmp_path / "m.yaml"), check=False)
    assert 'conflict with "conveyor"' in out
    cm = yaml.safe_load(await kubectl("get", "cm", "cfg", "-n", "demo", "-o", "yaml",
                                      "--show-managed-fields"))
    assert {m["manager"] for m in cm["metadata"]["managedFields"]} >= {"conveyor", "kubectl"}


async def test_kubectl_crd_then_custom_resource(fake: FakeKubeAPI, tmp_path: Path) -> None:
    kubectl = Kubectl(fake.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)
    (tmp_path / "crd.yaml").write_text(CRD)
    (tmp_path / "cr.yaml").write_text(
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n")
    await kubectl("get", "configmaps")        # warm kubectl's discovery cache before the CRD
    await kubectl("apply", "--server-side", "-f", str(tmp_path / "crd.yaml"))
    out = await kubectl("apply", "--server-side", "-f", str(tmp_path / "cr.yaml"))
    assert "widget.example.com/w1 serverside-applied" in out
    w = yaml.safe_load(await kubectl("get", "widgets", "w1", "-o", "yaml"))
    assert w["spec"] == {"size": 3} and w["metadata"]["namespace"] == "default"


async def test_kubectl_over_tls_with_token_and_with_client_cert(tmp_path: Path) -> None:
    pki = TestPKI()
    token = "kubectl-secret-token"
    async with FakeKubeAPI(ssl_context=pki.server_context(), tokens={token}) as fake:
        kubectl = Kubectl(fake.write_kubeconfig(tmp_path / "token", token=token,
                                                ca_pem=pki.ca_pem), tmp_path)
        (tmp_path / "cm.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: over-tls}\ndata: {k: v}\n")
        await kubectl("apply", "--server-side", "-f", str(tmp_path / "cm.yaml"))
        assert fake.requests_to("PATCH")[-1].user == "bearer"
        out = await kubectl("get", "configmap", "over-tls", "-o", "yaml")
        assert yaml.safe_load(out)["data"] == {"k": "v"}
        # typed kubectl commands send protobuf bodies, which the fake refuses plainly
        out = await kubectl("create", "configmap", "c2", "--from-literal=k=v", check=False)
        assert "unknown format" in out and "protobuf" in out

    alice = pki.issue("alice", organization="system:masters")
    async with FakeKubeAPI(ssl_context=pki.server_context(require_client_cert=True)) as fake:
        path = fake.write_kubeconfig(tmp_path / "mtls", ca_pem=pki.ca_pem,
                                     client_cert_pem=alice.cert_pem,
                                     client_key_pem=alice.key_pem)
        await Kubectl(path, tmp_path)("get", "namespaces", "-o", "name")
        assert {r.user for r in fake.requests} == {"cert:alice"}
        async with KubeClient(load_kubeconfig(path)) as client:
            names = [n["metadata"]["name"] for n in await client.list("v1", "Namespace")]
        assert "kube-system" in names
