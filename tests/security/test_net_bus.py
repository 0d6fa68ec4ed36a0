"""Medium finding: the embedded nats-server had no auth, and a local process published a forged
``render.succeeded`` that the applier deployed. Now the server requires generated credentials
(0600 in the data dir, never on a command line) and every in-process client uses them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from conveyor.demo import demo_files
from orchestrator import subjects
from orchestrator.adapters import nats_auth
from orchestrator.domain import events as ev
from orchestrator.domain.events import new_event
from tests.security.net_support import applied, deploys_next_commit
from tests.support.conveyors import running, settings_for
from tests.support.repos import Repo
from tests.support.waits import wait_for_events


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_local_process_without_the_credentials_cannot_forge_a_render(
        repo: Repo, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, _no_server(), tmp_path / "data", nats_url="")
    async with running(settings) as conveyor:
        embedded = conveyor.resources.embedded if conveyor.resources else None
        assert embedded is not None and embedded.process is not None
        bus = conveyor.bus
        assert bus is not None
        await wait_for_events(bus, applied(first))
        rendered = await bus.last_event("dev", ev.RENDER_SUCCEEDED)
        assert rendered is not None
        forged = new_event(ev.RENDER_SUCCEEDED, env="dev", cause=rendered.event,
                           source="attacker", key="forged",
                           data={**rendered.event.data, "digest": "sha256:" + "f" * 64})
        subject = subjects.event_subject("dev", ev.RENDER_SUCCEEDED)
        # the attack: connect to the loopback port as any local process can, and publish
        for url in (embedded.public_url,  # no credentials at all
                    nats_auth.with_credentials(embedded.public_url, "conveyor", "guess")):
            with pytest.raises(Exception) as refused:
                nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0,
                                        connect_timeout=3)
                try:
                    await nc.jetstream().publish(subject, forged.to_json())
                finally:
                    await nc.close()
            assert "Authorization Violation" in str(refused.value) or \
                "no servers" in str(refused.value).lower()
        events = await wait_for_events(bus, applied(first))
        assert not any(e.id == forged.id for e in events)
        # what a local process can see: the credentials are 0600 in a 0700 directory, and
        # neither the server's command line nor the log line holds the password
        store = tmp_path / "data" / "nats"
        creds = json.loads((store / nats_auth.CREDENTIALS_FILE).read_text())
        assert mode(store) == 0o700
        assert mode(store / nats_auth.CREDENTIALS_FILE) == 0o600
        assert mode(store / nats_auth.SERVER_CONFIG_FILE) == 0o600
        cmdline = Path(f"/proc/{embedded.process.pid}/cmdline").read_bytes()
        assert creds["password"].encode() not in cmdline
        assert creds["password"] not in embedded.public_url
        # the control: with the credentials the same connection works (the test can fail)
        nc = await nats.connect(embedded.url, allow_reconnect=False, connect_timeout=3)
        assert nc.is_connected
        await nc.close()
        await deploys_next_commit(conveyor, repo, bus)


def _no_server():  # type: ignore[no-untyped-def]
    """settings_for wants a server; this test has Conveyor start its own embedded one."""
    class NoServer:
        url = ""

    return NoServer()


async def test_the_credentials_survive_a_restart_and_a_widened_file_is_narrowed(
        repo: Repo, tmp_path: Path) -> None:
    first = repo.commit(demo_files(), "initial")
    settings = settings_for(repo, _no_server(), tmp_path / "data", nats_url="")
    async with running(settings) as conveyor:
        assert conveyor.bus is not None
        await wait_for_events(conveyor.bus, applied(first))
        assert conveyor.resources is not None and conveyor.resources.embedded is not None
        url = conveyor.resources.embedded.url
    creds_file = tmp_path / "data" / "nats" / nats_auth.CREDENTIALS_FILE
    creds_file.chmod(0o644)
    async with running(settings) as conveyor:
        assert conveyor.resources is not None and conveyor.resources.embedded is not None
        assert conveyor.resources.embedded.url.split("@")[0] == \
            url.split("@")[0]  # the same user and password
        assert mode(creds_file) == 0o600
        assert conveyor.bus is not None
        await deploys_next_commit(conveyor, repo, conveyor.bus)


def test_messages_never_show_the_password() -> None:
    url = nats_auth.with_credentials("nats://127.0.0.1:4222", "conveyor", "p@ss/w:rd")
    assert url == "nats://conveyor:p%40ss%2Fw%3Ard@127.0.0.1:4222"
    assert nats_auth.redacted(url) == "nats://***@127.0.0.1:4222"
    assert nats_auth.redacted("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert "p@ss" not in repr(nats_auth.BusCredentials("conveyor", "p@ss"))


# -- k8s/base: the same attack against the cluster's NATS config --------------------------------

@contextlib.asynccontextmanager
async def k8s_nats(tmp_path: Path) -> AsyncIterator[tuple[str, ssl.SSLContext]]:
    """k8s/base's nats.conf on a real nats-server (standalone), with a throwaway certificate."""
    from orchestrator.adapters.embedded_nats import free_port, nats_server_binary
    from tests.test_k8s_manifests import runnable_nats_config

    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    conf, env = runnable_nats_config(tmp_path, port=port)
    proc = await asyncio.create_subprocess_exec(
        nats_server_binary(), "-c", str(conf), env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while b"Server is ready" not in (line := await proc.stderr.readline()):
                assert line, "nats-server exited"
        yield f"nats://127.0.0.1:{port}", ssl.create_default_context(
            cafile=str(tmp_path / "tls" / "ca.crt"))
    finally:
        proc.terminate()
        await proc.wait()


async def refused_publish(url: str, tls: ssl.SSLContext, user: str, subject: str) -> bool:
    """Publish as ``user``; True when the server answered with a permissions violation."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(nats_auth.with_credentials(url, user, f"pw-{user}"), tls=tls,
                            allow_reconnect=False, connect_timeout=5, error_cb=on_error)
    try:
        await nc.publish(subject, b"{}")
        await nc.flush()  # the server's -ERR for the PUB arrives before the PONG of this flush
        # nats-py hands -ERR to error_cb in a task of its own: a second round trip lets it run
        await nc.flush()
    finally:
        await nc.close()
    return any("permissions violation" in e.lower() for e in errors)


async def test_k8s_nats_users_may_publish_only_their_own_stage(tmp_path: Path) -> None:
    async with k8s_nats(tmp_path) as (url, tls):
        cases = [  # (user, subject, refused)
            ("renderer", "conveyor.events.dev.apply.succeeded", True),  # the forged apply
            ("renderer", "conveyor.events.dev.render.succeeded", False),
            ("git-watcher", "conveyor.events._.refresh.requested", True),
            ("applier", "conveyor.events._.refresh.requested", True),
            ("notifier", "conveyor.events.dev.render.succeeded", True),
            ("applier", "conveyor.events.dev.apply.succeeded", False),
            ("git-watcher", "conveyor.events.dev.commit.detected", False),
            ("git-watcher", "conveyor.events.prod.promotion.committed", False),
            ("renderer", "conveyor.events.prod.promotion.committed", True),
            ("applier", "conveyor.events.dev.log.reset", False),
            ("api", "conveyor.events._.refresh.requested", False),  # control: only the api
            ("api", "$JS.API.STREAM.DELETE.CONVEYOR", True),  # nobody deletes the log
            ("renderer", "$JS.API.STREAM.PURGE.CONVEYOR", True),
        ]
        for user, subject, refused in cases:
            assert await refused_publish(url, tls, user, subject) is refused, (user, subject)
        # no user, a wrong password, or no TLS: no connection at all
        for attempt in ({"servers": url, "tls": tls},
                        {"servers": nats_auth.with_credentials(url, "api", "guess"), "tls": tls},
                        {"servers": nats_auth.with_credentials(url, "api", "pw-api")}):
            with pytest.raises(Exception):  # noqa: B017 (auth or TLS: either refuses)
                nc = await nats.connect(**attempt, allow_reconnect=False,
                                        max_reconnect_attempts=0, connect_timeout=3)
                await nc.close()


def test_run_takes_its_bus_credentials_from_the_environment_not_the_command_line() -> None:
    from conveyor.options import nats_url

    env = {"CONVEYOR_NATS_USER": "renderer", "CONVEYOR_NATS_PASSWORD": "s3cr3t\n"}
    assert nats_url("nats://nats:4222", env) == "nats://renderer:s3cr3t@nats:4222"
    assert nats_url("nats://a:4222,nats://b:4222", env) == \
        "nats://renderer:s3cr3t@a:4222,nats://renderer:s3cr3t@b:4222"
    assert nats_url("nats://u:p@nats:4222", env) == "nats://u:p@nats:4222"  # its own wins
    assert nats_url("nats://nats:4222", {"CONVEYOR_NATS_USER": "renderer",
                                         "CONVEYOR_NATS_PASSWORD": "  "}) == "nats://nats:4222"


async def test_the_services_work_as_their_k8s_users_over_tls(repo: Repo, tmp_path: Path) -> None:
    """Each service a Conveyor of its own, connected as its own user of k8s/base's NATS
    config: the permissions are enough for the whole pipeline, and a refresh through the api
    (the control path) deploys the next commit."""
    import aiohttp

    from conveyor.app import Conveyor
    from services.api.app import ApiService

    first = repo.commit(demo_files(), "initial")
    async with k8s_nats(tmp_path / "nats") as (url, _):
        ca = str(tmp_path / "nats" / "tls" / "ca.crt")
        started: list[Conveyor] = []
        try:
            for name in ("api", "notifier", "applier", "renderer", "git-watcher"):
                settings = settings_for(repo, _no_server(), tmp_path / name, nats_url=
                                        nats_auth.with_credentials(url, name, f"pw-{name}"),
                                        nats_ca=ca)
                conveyor = Conveyor(settings, names=(name,))
                await conveyor.start()
                started.append(conveyor)
            api_bus = started[0].bus
            assert api_bus is not None
            await wait_for_events(api_bus, applied(first), timeout=60)
            second = repo.commit(demo_files(tag="1.99"), "the next good commit")
            api = started[0].service("api")
            assert isinstance(api, ApiService)
            async with aiohttp.ClientSession() as http, \
                    http.post(f"{api.url}/api/v1/refresh") as resp:
                assert resp.status == 202
            await wait_for_events(api_bus, applied(second), timeout=60)
        finally:
            for conveyor in reversed(started):
                await conveyor.stop()
