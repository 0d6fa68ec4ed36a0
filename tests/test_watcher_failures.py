"""Fetch failures through the running git-watcher, against real servers: wrong credentials
(HTTP basic), an unknown SSH host key (OpenSSH sshd), an unreachable server (git daemon
stopped). Each outage is one ``fetch_failed`` with a clear reason, backs the source off, and
ends with ``recovered``; no environment hears of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.adapters.embedded_nats import EmbeddedNats
from orchestrator.adapters.nats_bus import EventBus
from orchestrator.domain import events as ev
from orchestrator.domain.events import Event
from orchestrator.resources import Resources
from orchestrator.secrets import SecretPolicy
from orchestrator.settings import Settings
from services.git_watcher.service import GitWatcher
from tests.support import gitservers
from tests.support.gitservers import (
    GitDaemon,
    GitHttpServer,
    SshServer,
    Upstream,
    closed_port_url,
    ssh_keygen,
    sshd_available,
)
from tests.support.repos import Repo
from tests.support.waits import wait_for_events

PASSWORD = "right-Pa55word-of-infra"
CM = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: net\ndata:\n  v: '{v}'\n"


def conveyor_yaml(url: str, credentials: str = "") -> str:
    return (f"sources:\n  infra:\n    url: {url}\n    branch: main\n{credentials}"
            "environments:\n  cfg: {path: cfg}\n  net: {path: net, source: infra}\n")


def of_type(events: list[Event], kind: str, source: str = "infra") -> list[Event]:
    return [e for e in events if e.type == kind and e.data.get("source") == source]


def detected(events: list[Event], sha: str) -> set[str]:
    return {e.subject for e in events if e.type == ev.COMMIT_DETECTED and e.correlationid == sha}


@contextlib.asynccontextmanager
async def watching(bus: EventBus, nats: EmbeddedNats, repo: str,
                   data: Path) -> AsyncIterator[GitWatcher]:
    watcher = GitWatcher(Resources.around(bus, Settings(
        nats_url=nats.url, data_dir=data, repo=repo, branch="main", interval=3600.0,
        # key files a test's conveyor.yaml names live in its tmp dir: the operator's --secrets-dir
        secrets=SecretPolicy(env_allow=("INFRA_*",), secrets_dirs=(str(data.parent),)))))
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


def failures_metric(watcher: GitWatcher, reason: str) -> float:
    value = watcher.resources.metrics.registry.get_sample_value("conveyor_fetch_failures_total",
                                      {"source": "infra", "reason": reason})
    return value or 0.0


@pytest.fixture
def infra(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path / "srv", "infra")
    up.push({"net/cm.yaml": CM.format(v=1)}, "first")
    return up


async def test_wrong_credentials_then_fixed(infra: Upstream, nats_server: EmbeddedNats,
                                            bus: EventBus, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFRA_PASSWORD", "a-wrong-Password")
    async with GitHttpServer(infra.root, users={"deploy": PASSWORD}) as http:
        primary = Repo(tmp_path / "config")
        primary.commit({"conveyor.yaml": conveyor_yaml(
            http.url("infra.git"),
            "    credentials:\n      username: deploy\n      password: ${INFRA_PASSWORD}\n"),
            "cfg/cm.yaml": CM.format(v=0)})
        async with watching(bus, nats_server, str(primary.path), tmp_path / "data") as w:
            events = await wait_for_events(
                bus, lambda evs: bool(of_type(evs, ev.SOURCE_FETCH_FAILED)))
            await w.poll("infra")
            await w.poll("infra")  # the outage goes on: no second event
            poller = w.pollers["infra"]
            assert poller.failures >= 3
            # backoff: exponential from interval/16, capped at the interval, jittered
            assert 3600 / 16 / 2 <= poller.next_delay <= 3600
            assert failures_metric(w, "AuthenticationFailed") >= 3  # this watcher's registry

            monkeypatch.setenv("INFRA_PASSWORD", PASSWORD)  # the secret is rotated
            newer = infra.push({"net/cm.yaml": CM.format(v=2)}, "while failing")
            await w.poll("infra")
            events = await wait_for_events(
                bus, lambda evs: bool(of_type(evs, ev.SOURCE_RECOVERED)) and bool(
                    detected(evs, newer)))
            assert w.pollers["infra"].failures == 0
    failed = of_type(events, ev.SOURCE_FETCH_FAILED)
    assert len(failed) == 1
    assert failed[0].data["reason"] == "AuthenticationFailed"
    assert "refused the password for user 'deploy'" in failed[0].data["error"]
    assert failed[0].data["transient"] is False
    assert all(b"a-wrong-Password" not in e.to_json() and PASSWORD.encode() not in e.to_json()
               for e in events)
    between = events[events.index(failed[0]):events.index(of_type(events,
                                                                  ev.SOURCE_RECOVERED)[0])]
    assert [e for e in between if e.subject != ev.NO_ENV] == []  # no environment was touched
    assert detected(events, newer) == {"net"}


@pytest.mark.skipif(sshd_available() is not None, reason=sshd_available() or "")
async def test_unknown_host_key_then_trusted(infra: Upstream, nats_server: EmbeddedNats,
                                             bus: EventBus, tmp_path: Path) -> None:
    key = ssh_keygen(tmp_path / "id_deploy")
    impostor = ssh_keygen(tmp_path / "impostor_host_key")
    known = tmp_path / "known_hosts"
    async with SshServer([key.with_suffix(".pub").read_text()],
                         workdir=tmp_path / "sshd") as sshd:
        # a known_hosts that names the server's address with another key
        other = " ".join(impostor.with_suffix(".pub").read_text().split()[:2])
        known.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
        primary = Repo(tmp_path / "config")
        primary.commit({"conveyor.yaml": conveyor_yaml(
            sshd.url(infra.bare),
            f"    credentials:\n      sshKeyFile: {key}\n      knownHostsFile: {known}\n")})
        async with watching(bus, nats_server, str(primary.path), tmp_path / "data") as w:
            events = await wait_for_events(
                bus, lambda evs: bool(of_type(evs, ev.SOURCE_FETCH_FAILED)))
            failed = of_type(events, ev.SOURCE_FETCH_FAILED)[0]
            assert failed.data["reason"] == "HostKeyUnknown", failed.data
            assert "known" in failed.data["error"].lower()
            known.write_text(sshd.known_hosts_line + "\n")  # the operator trusts the server
            await w.poll("infra")
            head = gitservers.git(infra.bare, "rev-parse", "main")
            events = await wait_for_events(
                bus, lambda evs: bool(of_type(evs, ev.SOURCE_RECOVERED))
                and detected(evs, head) == {"net"})
    assert len(of_type(events, ev.SOURCE_FETCH_FAILED)) == 1


async def test_unreachable_server_then_back(infra: Upstream, nats_server: EmbeddedNats,
                                            bus: EventBus, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = GitDaemon(infra.root)
    await daemon.start()
    port = daemon.port
    primary = Repo(tmp_path / "config")
    primary.commit({"conveyor.yaml": conveyor_yaml(daemon.url("infra.git"))})
    try:
        async with watching(bus, nats_server, str(primary.path), tmp_path / "data") as w:
            first = await wait_for_events(bus, lambda evs: "net" in {
                e.subject for e in evs if e.type == ev.COMMIT_DETECTED})
            await daemon.stop()
            newer = infra.push({"net/cm.yaml": CM.format(v=2)}, "while down")
            assert await w.poll("infra") == 1
            assert await w.poll("infra") == 0  # still down: nothing more said
            monkeypatch.setattr(gitservers, "free_port", lambda: port)  # same URL again
            await daemon.start()
            await w.poll("infra")
            events = await wait_for_events(bus, lambda evs: bool(detected(evs, newer)))
    finally:
        await daemon.stop()
    failed = of_type(events, ev.SOURCE_FETCH_FAILED)
    assert [f.data["reason"] for f in failed] == ["Unreachable"]
    assert failed[0].data["transient"] is True
    assert "cannot reach the server" in failed[0].data["error"]
    assert len(of_type(events, ev.SOURCE_RECOVERED)) == 1
    assert [e for e in events[len(first):] if e.subject != ev.NO_ENV
            and e.correlationid != newer] == []


async def test_an_unreachable_primary_does_not_stop_the_watcher(
        nats_server: EmbeddedNats, bus: EventBus, tmp_path: Path) -> None:
    """A remote primary down at start-up: the watcher starts and reports it."""
    url = closed_port_url("git")
    watcher = GitWatcher(Resources.around(bus, Settings(
        nats_url=nats_server.url, data_dir=tmp_path / "d", repo=url, interval=3600.0)))
    await watcher.start()
    try:
        events = await wait_for_events(bus, lambda evs: bool(
            of_type(evs, ev.SOURCE_FETCH_FAILED, "default")))
    finally:
        await watcher.stop()
    failed = of_type(events, ev.SOURCE_FETCH_FAILED, "default")[0]
    assert failed.data["reason"] == "Unreachable"
