"""Discovery: kinds map to resources, are cached, and a CRD created later is found."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.adapters.kube import KubeClient, KubeConfig
from orchestrator.errors import PermanentError
from tests.support.kubeapi import FakeKubeAPI

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.example.com"},
    "spec": {"group": "example.com", "scope": "Cluster",
             "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
             "versions": [{"name": "v1", "served": True, "storage": True},
                          {"name": "v1beta1", "served": False, "storage": False}]}}
GADGET = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g1"},
          "spec": {"size": 1}}


def established(crd: dict[str, Any] | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


async def test_kinds_resolve_to_plural_and_scope_and_are_cached() -> None:
    async with FakeKubeAPI() as fake, KubeClient(KubeConfig(server=fake.url)) as client:
        hpa = await client.resource("autoscaling/v2", "HorizontalPodAutoscaler")
        assert (hpa.plural, hpa.namespaced) == ("horizontalpodautoscalers", True)
        pv = await client.resource("v1", "PersistentVolume")
        assert (pv.plural, pv.namespaced) == ("persistentvolumes", False)
        for _ in range(3):
            await client.get("v1", "ConfigMap", "default", "x")
        assert len(fake.requests_to("GET", "^/api/v1$")) == 1
        versions = await client.discovery.api_versions()
        assert {"v1", "apps/v1", "batch/v1", "policy/v1", "networking.k8s.io/v1",
                "rbac.authorization.k8s.io/v1", "apiextensions.k8s.io/v1"} <= set(versions)


async def test_a_crd_kind_is_found_once_established() -> None:
    async with FakeKubeAPI(crd_establish=None) as fake, \
            KubeClient(KubeConfig(server=fake.url)) as client:
        created = await client.apply(CRD)
        assert not established(created)
        with pytest.raises(PermanentError) as err:            # not served yet
            await client.apply(GADGET)
        assert err.value.reason == "NoKindMatch"

        fake.establish("gadgets.example.com")
        crd = await client.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None,
                               "gadgets.example.com")
        assert established(crd)
        out = await client.apply(GADGET)                       # the miss refreshed discovery
        assert out["spec"] == {"size": 1} and "namespace" not in out["metadata"]
        assert fake.requests_to("PATCH")[-1].path == "/apis/example.com/v1/gadgets/g1"
        with pytest.raises(PermanentError):                    # unserved version: not there
            await client.resource("example.com/v1beta1", "Gadget")

        await client.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", None,
                            "gadgets.example.com")
        client.discovery.refresh()
        with pytest.raises(PermanentError):
            await client.get("example.com/v1", "Gadget", None, "g1")


async def test_waiting_for_established_after_a_delay() -> None:
    async with FakeKubeAPI(crd_establish=0.05) as fake, \
            KubeClient(KubeConfig(server=fake.url)) as client:
        await client.apply(CRD)

        async def until_established() -> None:
            # the applier's way: poll the CRD (there is no watch), here every 10 ms
            while not established(await client.get(
                    "apiextensions.k8s.io/v1", "CustomResourceDefinition", None,
                    "gadgets.example.com")):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(until_established(), timeout=5)
        await client.apply(GADGET)
