"""Drift detection and self-heal against the contract server, with a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.adapters.kube import KubeClient, load_kubeconfig
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.bundle import digest_of, encode_bundle
from orchestrator.domain.events import Event, new_event
from orchestrator.ports import ApplyRequest
from orchestrator.resources import Resources
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from orchestrator.targets.kube.clients import KubePool
from orchestrator.targets.kube.target import kube_target
from services.applier.drift import DriftLoop
from tests.support.kubeapi import FakeKubeAPI
from tests.support.waits import wait_for_events

REV = "b" * 40


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    async with FakeKubeAPI() as server:
        yield server


def drift_loop(bus: EventBus, tmp_path: Path, envs: tuple[str, ...] = ("dev",)) -> DriftLoop:
    """The loop over ``bus``; the kubeconfig lives in ``tmp_path``, the operator's secrets dir."""
    return DriftLoop(Resources.around(bus, Settings(
        nats_url="", data_dir=tmp_path, envs=envs,
        secrets=SecretPolicy(secrets_dirs=(str(tmp_path),)))))


def bundle(value: str = "1") -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
             "data": {"level": value}}]


async def deploy(bus: EventBus, fake: FakeKubeAPI, tmp_path: Path, *, self_heal: bool,
                 objects: list[dict[str, Any]] | None = None, seq: int = 3,
                 interval: str = "3m") -> tuple[str, Event]:
    """Render (the event and the stored bundle) and apply ``objects`` as the applier would."""
    objects = objects or bundle()
    kc = tmp_path / "kubeconfig"
    if not kc.exists():
        fake.write_kubeconfig(kc)
    payload = encode_bundle(objects)
    digest = digest_of(payload)
    await bus.put_bundle(digest, payload)
    env_cfg = {"name": "dev", "path": "dev",
               "target": {"kubernetes": {"kubeconfig": str(kc), "namespace": "shop"}},
               "sync": {"selfHeal": self_heal, "driftInterval": interval,
                        "wait": {"timeout": "5s", "interval": "10ms"}}}
    rendered = new_event(ev.RENDER_SUCCEEDED, env="dev", correlation=REV, key=digest,
                         data={"env": env_cfg, "digest": digest, "revision": REV,
                               "origin_seq": seq})
    await bus.publish(rendered)
    target = kube_target("dev", env_cfg["target"]["kubernetes"], env_cfg["sync"], KubePool())
    await target.apply(ApplyRequest("dev", REV, digest, objects, seq))
    return digest, rendered


async def edit(fake: FakeKubeAPI, tmp_path: Path, value: str) -> None:
    """What `kubectl edit` does: a merge patch by another field manager."""
    async with KubeClient(load_kubeconfig(tmp_path / "kubeconfig")) as client:
        await client.request(
            "PATCH", "/api/v1/namespaces/shop/configmaps/settings",
            params={"fieldManager": "kubectl-edit"},
            content_type="application/merge-patch+json",
            body=json.dumps({"data": {"level": value}}).encode())


def level(fake: FakeKubeAPI) -> str:
    live = fake.get("v1", "ConfigMap", "shop", "settings")
    assert live is not None
    return str(live["data"]["level"])


async def test_no_drift_no_event(bus: EventBus, fake: FakeKubeAPI, tmp_path: Path) -> None:
    await deploy(bus, fake, tmp_path, self_heal=True)
    loop = drift_loop(bus, tmp_path)
    check = await loop.check("dev")
    assert check is not None and not check.drifted and check.events == []
    # dry runs were not even needed: the cheap comparison found nothing
    assert not [r for r in fake.requests_to("PATCH") if "dryRun" in r.query]


async def test_drift_is_detected_once_per_distinct_drift_without_self_heal(
        bus: EventBus, fake: FakeKubeAPI, tmp_path: Path) -> None:
    digest, _ = await deploy(bus, fake, tmp_path, self_heal=False)
    await edit(fake, tmp_path, "99")
    loop = drift_loop(bus, tmp_path)
    check = await loop.check("dev")
    assert check is not None and check.drifted
    [detected] = check.events
    assert detected.type == ev.DRIFT_DETECTED and detected.correlationid == REV
    assert detected.data["digest"] == digest and detected.data["count"] == 1
    assert detected.data["objects"] == [{"kind": "ConfigMap", "namespace": "shop",
                                         "name": "settings", "change": "changed"}]
    assert "~ ConfigMap/shop/settings" in detected.data["summary"]
    assert level(fake) == "99"   # no self-heal: left as it is
    again = await loop.check("dev")
    assert again is not None and again.events[0].id == detected.id   # same drift, same id
    events = await wait_for_events(bus, lambda es: any(e.type == ev.DRIFT_DETECTED for e in es))
    assert sum(e.type == ev.DRIFT_DETECTED for e in events) == 1   # JetStream dropped the copy
    await edit(fake, tmp_path, "100")
    third = await loop.check("dev")
    assert third is not None and third.events[0].id != detected.id   # a new drift


async def test_self_heal_reapplies_and_records_drift_as_the_cause(
        bus: EventBus, fake: FakeKubeAPI, tmp_path: Path) -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"},
             "data": {"k": "v"}}
    digest, _ = await deploy(bus, fake, tmp_path, self_heal=True, objects=[*bundle(), other])
    await edit(fake, tmp_path, "99")
    # an object deleted by hand is drift too
    async with KubeClient(load_kubeconfig(tmp_path / "kubeconfig")) as client:
        await client.delete("v1", "ConfigMap", "shop", "other")
    loop = drift_loop(bus, tmp_path)
    check = await loop.check("dev")
    assert check is not None
    detected, applied, health = check.events
    assert detected.data["count"] == 2
    assert applied.type == ev.APPLY_SUCCEEDED and applied.causationid == detected.id
    assert applied.data["cause"] == "drift" and applied.data["digest"] == digest
    assert applied.data["summary"].startswith("self-heal: ")
    assert health.type == ev.HEALTH_HEALTHY and health.causationid == applied.id
    assert level(fake) == "1" and fake.get("v1", "ConfigMap", "shop", "other") is not None
    after = await loop.check("dev")
    assert after is not None and not after.drifted


async def test_heal_never_overwrites_a_newer_apply(bus: EventBus, fake: FakeKubeAPI,
                                                   tmp_path: Path) -> None:
    await deploy(bus, fake, tmp_path, self_heal=True)
    await edit(fake, tmp_path, "99")
    loop = drift_loop(bus, tmp_path)
    target = await loop.target("dev")
    assert target is not None
    async with target.lock:   # a commit's apply is in progress
        checking = asyncio.create_task(loop.check("dev"))
        await wait_for_events(bus, lambda es: any(e.type == ev.DRIFT_DETECTED for e in es))
        newer = bundle("2")
        payload = encode_bundle(newer)
        await target.sync(ApplyRequest("dev", "c" * 40, digest_of(payload), newer, 9))
    check = await checking
    assert check is not None and [e.type for e in check.events] == [ev.DRIFT_DETECTED]
    assert level(fake) == "2"   # the heal saw a newer bundle under the lock and stood down


async def test_the_loop_checks_every_drift_interval(bus: EventBus, fake: FakeKubeAPI,
                                                    tmp_path: Path) -> None:
    await deploy(bus, fake, tmp_path, self_heal=True, interval="100ms")
    loop = drift_loop(bus, tmp_path)
    await loop.start()
    try:
        await edit(fake, tmp_path, "99")
        events = await wait_for_events(bus, lambda es: any(
            e.type == ev.APPLY_SUCCEEDED and e.data.get("cause") == "drift" for e in es))
    finally:
        await loop.stop()
    assert any(e.type == ev.DRIFT_DETECTED for e in events)
    assert level(fake) == "1"


async def test_environments_come_from_the_loaded_config_when_not_scoped(
        bus: EventBus, tmp_path: Path) -> None:
    loop = drift_loop(bus, tmp_path, envs=())
    assert await loop.environments() == []
    await bus.publish(new_event(ev.CONFIG_LOADED, env=ev.NO_ENV, correlation=REV,
                                data={"environments": ["dev", "prod"]}))
    assert await loop.environments() == ["dev", "prod"]
    assert await loop.check("prod") is None   # never rendered: nothing to compare
