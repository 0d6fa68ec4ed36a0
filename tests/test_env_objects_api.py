"""An environment's objects with their health, and the object diff of its last change."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.diff import diff_revisions
from orchestrator.domain.events import new_event
from services.api.app import ApiService
from services.api.routes_objects import with_health
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_dashboard import CHROMIUM, WAIT_MS, async_api, dashboard
from tests.test_spine import finished, running, settings_for, trigger

CM = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  namespace: apps\n"
      "data:\n  color: {color}\n")
SECRET = ("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: apps\n"
          "stringData:\n  password: {password}\n")
DEPLOY = ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: apps\n"
          "spec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata:\n"
          "      labels: {app: web}\n    spec:\n      containers: [{name: web, image: nginx}]\n")


def test_a_verdict_names_the_objects_that_are_not_ready() -> None:
    objs = [{"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "web", "namespace": "apps"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web",
                                                                 "namespace": "apps"}}]
    verdict = new_event(ev.HEALTH_PROGRESSING, env="dev", key="x", data={
        "status": "Progressing", "unhealthy": 1, "objects": [
            {"kind": "Deployment", "namespace": "apps", "name": "web", "status": "Progressing",
             "message": "1 of 3 updated"}]})
    got = {o["kind"]: (o["health"], o["message"]) for o in with_health(objs, verdict)}
    assert got == {"Deployment": ("Progressing", "1 of 3 updated"), "Service": ("Healthy", "")}
    assert [o["children"] for o in with_health(objs, verdict)] == [[], []]  # an older verdict
    pods = [{"kind": "Pod", "name": "web-1-a", "status": "Healthy", "message": ""}]
    owned = new_event(ev.HEALTH_HEALTHY, env="dev", key="z", data={
        "status": "Healthy", "unhealthy": 0, "children": [
            {"kind": "Deployment", "namespace": "apps", "name": "web", "children": [
                {"kind": "ReplicaSet", "name": "web-1", "status": "Healthy", "message": "",
                 "children": pods}]}]})
    trees = {o["kind"]: o["children"] for o in with_health(objs, owned)}
    assert trees["Service"] == [] and trees["Deployment"][0]["children"] == pods
    cut = new_event(ev.HEALTH_DEGRADED, env="dev", key="y", data={
        "status": "Degraded", "unhealthy": 5, "objects": []})
    assert {o["health"] for o in with_health(objs, cut)} == {"Unknown"}
    assert {o["health"] for o in with_health(objs, None)} == {"Unknown"}


def test_a_removed_field_is_a_change_between_two_revisions() -> None:
    old = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"},
            "data": {"x": "1", "y": "2"}}]
    new = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"},
            "data": {"x": "1"}}]
    [change] = diff_revisions(new, old)
    assert change.change == "changed" and "-  y: '2'" in change.unified_text
    assert diff_revisions(new, new) == []


async def test_objects_and_last_change_of_an_environment(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    config = {"conveyor.yaml": "environments:\n  dev:\n    path: dev\n"}
    first = repo.commit({**config, "dev/cm.yaml": CM.format(color="blue"),
                         "dev/secret.yaml": SECRET.format(password="hunter2-old")}, "one")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, finished(first, {"dev"}))
        second = repo.commit({"dev/cm.yaml": CM.format(color="green"), "dev/deploy.yaml": DEPLOY,
                              "dev/secret.yaml": SECRET.format(password="hunter2-new")}, "two")
        await trigger(conveyor)
        events = await wait_for_events(bus, finished(second, {"dev"}))
        api = conveyor.service("api")
        assert isinstance(api, ApiService)
        end = await bus.last_seq()
        assert events
        async with asyncio.timeout(30), api.projector.changed:  # the api has folded it all
            await api.projector.changed.wait_for(lambda: api.projector.position >= end)
        async with aiohttp.ClientSession() as http:
            async def get(path: str) -> tuple[int, Any, str]:
                async with http.get(api.url + path) as resp:
                    text = await resp.text()
                    return resp.status, await resp.json(), text

            status, body, text = await get("/api/v1/environments/dev/objects")
            assert status == 200 and body["revision"] == second
            assert [(o["kind"], o["name"]) for o in body["objects"]] == [
                ("ConfigMap", "web"), ("Deployment", "web"), ("Secret", "db")]
            assert {o["health"] for o in body["objects"]} == {"Unknown"}  # a git target
            assert [o["children"] for o in body["objects"]] == [[], [], []]  # no live state
            assert "hunter2" not in text

            status, body, text = await get("/api/v1/environments/dev/changes")
            assert status == 200
            assert (body["from"]["revision"], body["to"]["revision"]) == (first, second)
            changes = {(o["kind"], o["change"]) for o in body["objects"]}
            assert changes == {("ConfigMap", "changed"), ("Deployment", "added"),
                               ("Secret", "changed")}
            cm = next(o for o in body["objects"] if o["kind"] == "ConfigMap")
            assert "-  color: blue" in cm["diff"] and "+  color: green" in cm["diff"]
            assert "hunter2" not in text and "aHVudGVy" not in text  # nor its base64
            assert body["summary"].startswith("3 objects differ")

            assert (await get("/api/v1/environments/nope/objects"))[0] == 404
            assert (await get("/api/v1/environments/nope/changes"))[0] == 404


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium (CI installs it)")
async def test_the_environment_page_shows_objects_and_the_last_change(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    config = {"conveyor.yaml": "environments:\n  dev:\n    path: dev\n"}
    first = repo.commit({**config, "dev/cm.yaml": CM.format(color="blue")}, "one")
    async with dashboard(repo, nats_server, bus, tmp_path / "data") as dash:
        await wait_for_events(bus, finished(first, {"dev"}))
        second = repo.commit({"dev/cm.yaml": CM.format(color="green"), "dev/deploy.yaml": DEPLOY,
                              "dev/secret.yaml": SECRET.format(password="hunter2")}, "two")
        await dash.refresh()
        await wait_for_events(bus, finished(second, {"dev"}))
        await dash.open("#/env/dev")
        rows = dash.page.locator("#env-objects tbody tr")
        await async_api.expect(rows).to_have_count(3, timeout=WAIT_MS)
        await async_api.expect(dash.page.locator("#env-changes li")).to_have_count(
            3, timeout=WAIT_MS)
        text = await dash.page.text_content("#env-changes") or ""
        assert "added Deployment/apps/web" in text and "changed ConfigMap/apps/web" in text
        assert "hunter2" not in (await dash.page.content())
        # a kube applier's verdict with live children (as test_applier_kube_pipeline records
        # one): the page nests them under their owner, indented
        await bus.publish(new_event(ev.HEALTH_HEALTHY, env="dev", correlation=second, key="t",
                                    data={"status": "Healthy", "revision": second, "children": [
            {"kind": "Deployment", "namespace": "apps", "name": "web", "children": [
                {"kind": "ReplicaSet", "name": "web-1", "status": "Healthy", "message": "",
                 "children": [{"kind": "Pod", "name": "web-1-a", "status": "Progressing",
                               "message": "pod is pending"}]}]}]}))
        await dash.open("#/")
        await dash.open("#/env/dev")
        await async_api.expect(rows).to_have_count(5, timeout=WAIT_MS)
        texts = [" ".join((await rows.nth(i).inner_text()).split()) for i in range(5)]
        web = next(i for i, t in enumerate(texts) if t.startswith("Deployment"))
        assert "ReplicaSet" in texts[web + 1] and "web-1" in texts[web + 1]
        assert "Pod" in texts[web + 2] and "Progressing" in texts[web + 2]
        assert await rows.nth(web + 2).get_attribute("class") == "child depth-2"
        assert dash.errors == []
