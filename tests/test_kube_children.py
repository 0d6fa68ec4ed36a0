"""The live children of applied workloads, against the kube contract server (which runs no
controllers: the test creates what a controller would, with ownerReferences)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.adapters.kube import KubeClient, load_kubeconfig
from orchestrator.targets.kube import health as kh
from tests.support.kubeapi import FakeKubeAPI


def owned(owner: dict[str, Any], api_version: str, kind: str, name: str) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": api_version, "kind": kind, "metadata": {
        "name": name, "namespace": meta["namespace"], "ownerReferences": [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"],
            "uid": meta["uid"]}]}}


async def test_children_are_bounded_listed_once_per_kind_and_a_forbidden_list_is_none(
        tmp_path: Path) -> None:
    async with FakeKubeAPI() as fake, KubeClient(load_kubeconfig(str(
            fake.write_kubeconfig(tmp_path / "kubeconfig")))) as client:
        await client.apply({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": "shop"}})
        cron = await client.apply({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {
            "name": "nightly", "namespace": "shop"}, "spec": {"schedule": "0 0 * * *"}})
        jobs = [await client.apply(owned(cron, "batch/v1", "Job", f"nightly-{i:02}"))
                for i in range(3)]
        for job in jobs:
            for j in range(20):
                await client.apply(owned(job, "v1", "Pod", f"{job['metadata']['name']}-{j:02}"))
        healths = kh.initial([cron])
        assert healths[0].uid == cron["metadata"]["uid"]
        before = len(fake.requests_to("GET"))
        [tree] = await kh.children(client, healths)
        assert len(fake.requests_to("GET")) - before == 2  # jobs once, pods once
        kids = tree["children"]
        # newest first (same second: by name), and 3 jobs + their 60 pods are cut to 50
        assert [k["name"] for k in kids] == ["nightly-02", "nightly-01", "nightly-00"]
        assert [len(k["children"]) for k in kids] == [20, 20, kh.CHILDREN - 3 - 40]
        assert kids[0]["children"][0]["name"] == "nightly-02-19"
        assert all(p["kind"] == "Pod" and p["status"] for p in kids[0]["children"])

        fake.inject_failure(r"/pods$", 403, method="GET")
        [tree] = await kh.children(client, healths)  # jobs still listed, their pods not
        assert [k["name"] for k in tree["children"]] == ["nightly-02", "nightly-01", "nightly-00"]
        assert all("children" not in k for k in tree["children"])
        assert await kh.children(client, kh.initial([{**cron, "kind": "ConfigMap"}])) == ()
