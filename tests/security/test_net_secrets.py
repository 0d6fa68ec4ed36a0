"""Finding 4 and the medium finding on errors: a rendered Secret's values are never returned by
the api (bundles, events, traces, history, streams), a drift event or a diff, nor copied into a
``render.failed`` error; the applier still applies the real values from the object store."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import decode_bundle, encode_bundle
from orchestrator.domain.diff import diff_object
from orchestrator.domain.masking import MASK, mask_bundle, mask_object
from orchestrator.resources import Resources
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.applier.drift import DriftLoop
from services.git_watcher.service import GitWatcher
from tests.security.net_support import OPERATOR, READER, api_url, applied, deploys_next_commit
from tests.support.conveyors import running, settings_for
from tests.support.kubeapi import FakeKubeAPI
from tests.support.repos import Repo
from tests.support.waits import wait_for_events
from tests.test_drift import deploy

PLAIN = "hunter2-plain-Zq81"  # stringData
ENCODED_VALUE = "db-password-Xk42"  # data, base64 below
ENCODED = base64.b64encode(ENCODED_VALUE.encode()).decode()
CONFIG = "environments:\n  dev:\n    path: app\n    render:\n      validate: {schema: true}\n"


def secret_yaml() -> str:
    return ("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: dev\n"
            f"type: Opaque\ndata:\n  password: {ENCODED}\nstringData:\n  token: {PLAIN}\n")


def files(n: int) -> dict[str, str]:
    return {"conveyor.yaml": CONFIG, "app/secret.yaml": secret_yaml(),
            "app/cm.yaml": ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n"
                            f"  namespace: dev\ndata:\n  n: '{n}'\n")}


def leaks(text: str) -> list[str]:
    return [v for v in (PLAIN, ENCODED_VALUE, ENCODED,
                        base64.b64encode(PLAIN.encode()).decode()) if v in text]


async def get_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as resp:
        assert resp.status == 200, (url, resp.status)
        return await resp.text()


async def stream_text(http: aiohttp.ClientSession, url: str, until: str) -> str:
    """Read a Server-Sent Events stream until ``until`` has been seen."""
    seen = ""
    async with http.get(url) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_any():
            seen += chunk.decode()
            if until in seen:
                return seen
    return seen


async def test_no_api_view_returns_a_secret_value_and_the_target_gets_the_real_one(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(files(1), "a Secret")
    settings = settings_for(repo, nats_server, tmp_path / "data", api_token=OPERATOR,
                            read_token=READER)
    async with running(settings) as conveyor:
        events = await wait_for_events(bus, applied(first, frozenset({"dev"})))
        rendered = next(e for e in events if e.type == ev.RENDER_SUCCEEDED)
        digest = rendered.data["digest"]
        url = api_url(conveyor)
        for token in (READER, OPERATOR):  # not even the operator reads a value
            async with aiohttp.ClientSession(
                    headers={"Authorization": f"Bearer {token}"}) as http:
                bundle_text = await get_text(http, f"{url}/api/v1/bundles/{digest}")
                views = [bundle_text] + [await get_text(http, url + path) for path in (
                    "/api/v1/events", f"/api/v1/trace/{first}", "/api/v1/environments",
                    "/api/v1/environments/dev/history")]
                views.append(await stream_text(http, f"{url}/api/v1/dashboard/stream?last=100",
                                               until=ev.APPLY_SUCCEEDED))
                views.append(await stream_text(http, f"{url}/api/v1/events/stream?after=0",
                                               until=ev.APPLY_SUCCEEDED))
                for view in views:
                    assert leaks(view) == []
                served = json.loads(bundle_text)["objects"]
                secret = next(o for o in served if o["kind"] == "Secret")
                assert secret["data"] == {"password": MASK, "token": MASK}  # keys kept
                assert "stringData" not in secret
        # the applier used the real bundle: the target branch holds the real values
        committed = "".join(repo.read("deploy/dev", f) or "" for f in repo.files("deploy/dev"))
        assert ENCODED in committed and (PLAIN in committed or base64.b64encode(
            PLAIN.encode()).decode() in committed)
        await deploys_next_commit(conveyor, repo, bus, files(2), frozenset({"dev"}))


async def test_a_malformed_secret_value_is_not_copied_into_render_failed(
        repo: Repo, nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    first = repo.commit(files(1), "good")
    async with running(settings_for(repo, nats_server, tmp_path / "data")) as conveyor:
        await wait_for_events(bus, applied(first, frozenset({"dev"})))
        bad = repo.commit({"app/secret.yaml": secret_yaml().replace(
            f"password: {ENCODED}", "password: 918273645")}, "a Secret value that is no string")
        watcher = conveyor.service("git-watcher")
        assert isinstance(watcher, GitWatcher)
        await watcher.poll()
        events = await wait_for_events(bus, lambda es: any(
            e.type == ev.RENDER_FAILED and e.correlationid == bad for e in es))
        failed = next(e for e in events if e.type == ev.RENDER_FAILED)
        text = failed.to_json().decode()
        assert "data.password" in text and "Secret" in text  # still says where and why
        assert "918273645" not in text
        await deploys_next_commit(conveyor, repo, bus, files(3), frozenset({"dev"}))


def k8s_secret(**data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


async def test_drift_of_a_secret_is_reported_without_its_values_and_healed(
        bus: EventBus, tmp_path: Path) -> None:
    from orchestrator.adapters.kube import KubeClient, load_kubeconfig

    async with FakeKubeAPI() as fake:
        # the kubeconfig lives in the operator's secrets directory (trust-repo's rule)
        resources = Resources.around(bus, Settings(
            nats_url="", data_dir=tmp_path, envs=("dev",),
            secrets=SecretPolicy(secrets_dirs=(str(tmp_path),))))
        try:
            ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
            await deploy(bus, fake, tmp_path, self_heal=True,
                         objects=[ns, k8s_secret(password=ENCODED_VALUE)])
            tampered = base64.b64encode(b"attacker-value-Vb77").decode()
            async with KubeClient(load_kubeconfig(tmp_path / "kubeconfig")) as client:
                await client.request(
                    "PATCH", "/api/v1/namespaces/shop/secrets/db",
                    params={"fieldManager": "kubectl-edit"},
                    content_type="application/merge-patch+json",
                    body=json.dumps({"data": {"password": tampered}}).encode())
            loop = DriftLoop(resources)
            check = await loop.check("dev")
            assert check is not None and check.drifted
            detected = check.events[0]
            assert detected.type == ev.DRIFT_DETECTED and detected.data["count"] == 1
            for event in check.events:
                text = event.to_json().decode()
                assert leaks(text) == [] and tampered not in text and "Vb77" not in text
            assert "<redacted" in check.diffs[0].unified_text
            assert ENCODED not in check.diffs[0].unified_text
            assert tampered not in check.diffs[0].unified_text
            live = fake.get("v1", "Secret", "shop", "db")
            assert live is not None and live["data"]["password"] == ENCODED  # healed
        finally:
            await resources.close()


def test_a_masked_bundle_keeps_keys_and_diff_api_compares_masked_secrets_by_key() -> None:
    real = k8s_secret(password=ENCODED_VALUE, user="app")
    real["stringData"] = {"token": PLAIN}
    real["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(real), "team": "db"}
    masked = mask_object(real)
    assert masked["data"] == {"password": MASK, "token": MASK, "user": MASK}
    assert masked["metadata"]["annotations"] == {"team": "db"}
    assert leaks(json.dumps(masked)) == []
    assert real["stringData"] == {"token": PLAIN}  # the input is left alone
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}
    served = decode_bundle(mask_bundle(encode_bundle([real, cm])))
    assert cm in served and leaks(json.dumps(served)) == []
    # conveyor diff --api: the masked desired Secret against the live one, by keys
    live = k8s_secret(password="whatever-live-value", user="app", token=PLAIN)
    live["metadata"]["annotations"] = {"team": "db"}
    assert diff_object(masked, live) is None
    fewer = k8s_secret(password="whatever-live-value")
    changed = diff_object(masked, fewer)
    assert changed is not None and leaks(changed.unified_text) == []
    assert "whatever-live-value" not in changed.unified_text
    # and without the mask, values are still compared (the --nats path)
    assert diff_object(k8s_secret(password="a"), k8s_secret(password="b")) is not None
